"""The work a complete backtracking search spends on one Sudoku (`search_stats`): the difficulty
measure of the hard-puzzle generator (ponder.tasks.sudoku.hard) and of the hard-data benchmark."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ponder.tasks.sudoku.solver import (Geometry, _bits, _geometry_for, _pick_cell, blank_singles, initial_state,
                                        propagate)


@dataclass(frozen=True)
class SearchStats:
    """The work of a complete backtracking search of one puzzle (`search_stats`).

    Attributes:
        guesses: trial assignments (a digit tried in a branching cell).
        backtracks: trial assignments undone because no solution lies below them.
        solutions: solutions found (the search stops after 2).
    """

    guesses: int
    backtracks: int
    solutions: int


def search_stats(grid: np.ndarray, box_rows: Optional[int] = None, box_cols: Optional[int] = None) -> SearchStats:
    """Guesses and backtracks of a complete depth-first search of `grid` (N, N), 0 = blank.

    The search propagates naked and hidden singles (`propagate`), then branches on the most
    constrained cell (fewest candidates, lowest index) and tries its digits in turn; it explores
    the whole tree (stopping only at a second solution), so for a unique puzzle the counts do not
    depend on the order in which digits are tried or on relabelling the digits. A backtrack is a
    trial assignment below which no solution lies: for a unique puzzle, backtracks = guesses minus
    the guesses on the way to the solution. Zero means singles alone solve the puzzle.

    Sudoku-Extreme's `rating` counts the backtracks of tdoku, a solver with stronger propagation,
    so its figures are lower than these for the same puzzle (compare distributions, not values).
    """
    grid = np.asarray(grid)
    g = _geometry_for(grid, box_rows, box_cols)
    flat = [int(v) for v in grid.ravel()]
    counts = [0, 0]  # guesses, backtracks
    cand = initial_state(g, flat)
    if cand is None or not propagate(g, cand, blank_singles(cand, flat)):
        return SearchStats(0, 0, 0)
    solutions = _count_work(g, cand, 2, counts)
    return SearchStats(counts[0], counts[1], solutions)


def _count_work(g: Geometry, cand: list[int], limit: int, counts: list[int]) -> int:
    """Solutions below a propagated state (up to `limit`), adding guesses and backtracks to `counts`."""
    cell = _pick_cell(g, cand)
    if cell < 0:
        return 1
    total = 0
    for b in _bits(cand[cell]):
        counts[0] += 1
        child = cand.copy()
        child[cell] = b
        below = _count_work(g, child, limit - total, counts) if propagate(g, child, [cell]) else 0
        if not below:
            counts[1] += 1
        total += below
        if total >= limit:
            break
    return total
