"""Hard Sudoku puzzles made offline: minimal puzzles kept when a complete search needs many backtracks.

A minimal puzzle has a unique solution, and removing any one of its givens would lose that
uniqueness. It is made by digging a random full grid: every cell is tried once, in random order,
and its given is removed unless the grid would then have a second solution. One pass suffices:
a given kept at some point is needed then, and removing later givens only adds solutions, so it
is still needed at the end.

Difficulty is the work of a complete backtracking search (`sudoku_solver.search_stats`):
naked- and hidden-single propagation, branching on the most constrained cell, counting the
trial assignments below which no solution lies (backtracks). Random minimal 9x9 puzzles mostly
need few (singles alone solve about 40%); the generator keeps those with at least
`min_backtracks`, so the rate falls as the target rises (benchmarks/bench_hard_data.py).
Sudoku-Extreme reports 22 backtracks on average for tdoku, whose propagation is stronger than
singles, so the same puzzle scores lower there than here.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ponder.tasks.sudoku.search import search_stats
from ponder.tasks.sudoku.solver import geometry, has_other_solution, random_solution


def minimal_puzzle(box_rows: int, box_cols: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One random minimal unique-solution puzzle.

    Returns:
        (puzzle, solution), each (N, N) int64 with 0 = blank.
    """
    g = geometry(box_rows, box_cols)
    solution = random_solution(g, rng)
    flat = solution.copy()
    for cell in rng.permutation(g.nn).tolist():
        digit = flat[cell]
        flat[cell] = 0
        if has_other_solution(g, flat, cell, digit):
            flat[cell] = digit  # needed for uniqueness
    shape = (g.n, g.n)
    return np.array(flat, dtype=np.int64).reshape(shape), np.array(solution, dtype=np.int64).reshape(shape)


def generate_hard(box_rows: int, box_cols: int, rng: np.random.Generator, min_backtracks: int
                  ) -> Optional[tuple[np.ndarray, np.ndarray, int]]:
    """One minimal puzzle with at least `min_backtracks` backtracks, or None if this try was easier.

    Returns:
        (puzzle, solution, backtracks): puzzle and solution (N, N) int64, 0 = blank.
    """
    puzzle, solution = minimal_puzzle(box_rows, box_cols, rng)
    work = search_stats(puzzle, box_rows, box_cols)
    if work.backtracks < min_backtracks:
        return None
    return puzzle, solution, work.backtracks
