"""Hard puzzles made offline: minimal Sudoku puzzles filtered by backtracks, and 30x30 mazes whose
shortest paths are longer than 110 steps; checked with solvers written here, independent of ponder's."""
from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from ponder.core.errors import PonderError
from ponder.tasks.mazes.task import MazeConfig, build_maze
from ponder.tasks.sudoku.hard import minimal_puzzle
from ponder.tasks.sudoku.search import search_stats
from ponder.tasks.sudoku.task import SudokuConfig, build_sudoku
from tests.test_mazes import open_graph
from tests.test_sudoku import naive_valid

WALL, OPEN, START, GOAL, PATH = 1, 2, 3, 4, 5


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PONDER_CACHE_DIR", str(tmp_path))
    return tmp_path


# ----------------------------------------------------------------------------- an independent solver


def units(br: int, bc: int) -> list[list[int]]:
    n = br * bc
    rows = [[r * n + c for c in range(n)] for r in range(n)]
    cols = [[r * n + c for r in range(n)] for c in range(n)]
    boxes = [[(r0 + i) * n + c0 + j for i in range(br) for j in range(bc)]
             for r0 in range(0, n, br) for c0 in range(0, n, bc)]
    return rows + cols + boxes


def options(grid: list[int], br: int, bc: int) -> list[set[int]] | None:
    """Digits each blank can take given its row, column and box (None if some blank has none)."""
    n = br * bc
    out = []
    for i, v in enumerate(grid):
        if v:
            out.append({v})
            continue
        r, c = divmod(i, n)
        r0, c0 = r - r % br, c - c % bc
        seen = {grid[r * n + k] for k in range(n)} | {grid[k * n + c] for k in range(n)}
        seen |= {grid[(r0 + a) * n + c0 + b] for a in range(br) for b in range(bc)}
        out.append(set(range(1, n + 1)) - seen)
        if not out[-1]:
            return None
    return out


def count(grid: list[int], br: int, bc: int, limit: int = 2) -> int:
    """Solutions (up to `limit`) by plain backtracking on the blank with fewest options, with the
    digits used per row, column and box kept as bit sets (no propagation)."""
    n = br * bc
    rows, cols, boxes = [0] * n, [0] * n, [0] * n
    where = [(i // n, i % n, (i // n) // br * (n // bc) + (i % n) // bc) for i in range(n * n)]
    for i, v in enumerate(grid):
        if v:
            r, c, b = where[i]
            bit = 1 << v
            if (rows[r] | cols[c] | boxes[b]) & bit:
                return 0
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
    blanks = [i for i, v in enumerate(grid) if not v]
    full = sum(1 << d for d in range(1, n + 1))

    def rec(todo: list[int], limit: int) -> int:
        if not todo:
            return 1
        best, best_free = -1, None
        for k, i in enumerate(todo):
            r, c, b = where[i]
            free = full & ~(rows[r] | cols[c] | boxes[b])
            if best_free is None or bin(free).count("1") < bin(best_free).count("1"):
                best, best_free = k, free
                if not free:
                    return 0
        i = todo[best]
        rest = todo[:best] + todo[best + 1:]
        r, c, b = where[i]
        total = 0
        for d in range(1, n + 1):
            bit = 1 << d
            if best_free & bit:
                rows[r] |= bit
                cols[c] |= bit
                boxes[b] |= bit
                total += rec(rest, limit - total)
                rows[r] ^= bit
                cols[c] ^= bit
                boxes[b] ^= bit
                if total >= limit:
                    break
        return total

    return rec(blanks, limit)


def singles_solve(grid: list[int], br: int, bc: int) -> bool:
    """Do naked and hidden singles alone fill the grid?"""
    grid = list(grid)
    us = units(br, bc)
    while 0 in grid:
        opts = options(grid, br, bc)
        if opts is None:
            return False
        placed = {i: next(iter(o)) for i, o in enumerate(opts) if not grid[i] and len(o) == 1}
        for u in us:
            for d in range(1, br * bc + 1):
                spots = [i for i in u if not grid[i] and d in opts[i]]
                if len(spots) == 1 and d not in (grid[i] for i in u):
                    placed.setdefault(spots[0], d)
        if not placed:
            return False
        for i, d in placed.items():
            grid[i] = d
    return True


def assert_minimal_unique(puzzle: np.ndarray, solution: np.ndarray, br: int, bc: int) -> None:
    flat = [int(v) for v in puzzle.ravel()]
    assert naive_valid(solution, br, bc)
    assert all(v in (0, s) for v, s in zip(flat, solution.ravel()))
    assert count(flat, br, bc) == 1
    for i, v in enumerate(flat):  # every given is needed
        if v:
            flat[i] = 0
            assert count(flat, br, bc) == 2, f"given {i} can be removed"
            flat[i] = v


# ----------------------------------------------------------------------------- Sudoku


@pytest.mark.parametrize("br,bc", [(2, 2), (2, 3), (3, 3)])
def test_minimal_puzzles_are_unique_and_minimal(br, bc):
    rng = np.random.default_rng(0)
    for _ in range(2 if br * bc == 9 else 4):
        puzzle, solution = minimal_puzzle(br, bc, rng)
        assert_minimal_unique(puzzle, solution, br, bc)


def test_task_of_hard_minimal_puzzles():
    cfg = SudokuConfig(box_rows=3, box_cols=3, generator="minimal", min_backtracks=3, n_train=3, n_test=1, seed=1)
    task = build_sudoku(cfg)
    assert task.difficulty_name.startswith("backtracks")
    for split in (task.train, task.test):
        for x, y, d in zip(split.inputs, split.labels, split.difficulty):
            puzzle, solution = np.where(x == 1, 0, x - 1).reshape(9, 9), (y - 1).reshape(9, 9)
            assert_minimal_unique(puzzle, solution, 3, 3)
            assert d >= 3 and not singles_solve([int(v) for v in puzzle.ravel()], 3, 3)


def test_backtracks_zero_iff_singles_solve_and_invariant_under_relabelling():
    rng = np.random.default_rng(3)
    zero = positive = 0
    for _ in range(12):
        puzzle, _ = minimal_puzzle(3, 3, rng)
        work = search_stats(puzzle)
        assert work.solutions == 1 and work.guesses >= work.backtracks >= 0
        assert (work.backtracks == 0) == singles_solve([int(v) for v in puzzle.ravel()], 3, 3)
        relabel = np.concatenate([[0], rng.permutation(9) + 1])
        assert search_stats(relabel[puzzle]) == work
        zero += work.backtracks == 0
        positive += work.backtracks > 0
    assert zero and positive  # both kinds were seen


def test_search_stats_counts_two_solutions():
    grid = np.array([[1, 2, 3, 4], [3, 4, 1, 2], [2, 1, 4, 3], [4, 3, 2, 1]])
    grid[0, 0] = grid[0, 1] = grid[2, 0] = grid[2, 1] = 0  # 1 and 2 can swap across two boxes
    work = search_stats(grid)
    assert work.solutions == count([int(v) for v in grid.ravel()], 2, 2) == 2


def test_minimal_generation_is_deterministic_by_seed(tmp_path, monkeypatch):
    cfg = dict(box_rows=2, box_cols=3, generator="minimal", n_train=6, n_test=2)
    a = build_sudoku(SudokuConfig(seed=5, **cfg))
    monkeypatch.setenv("PONDER_CACHE_DIR", str(tmp_path / "other"))
    b = build_sudoku(SudokuConfig(seed=5, **cfg))
    c = build_sudoku(SudokuConfig(seed=6, **cfg))
    assert np.array_equal(a.train.inputs, b.train.inputs) and np.array_equal(a.test.labels, b.test.labels)
    assert not np.array_equal(a.train.inputs, c.train.inputs)


def test_minimal_settings_refused_when_unused():
    with pytest.raises(PonderError, match="task.min_givens=20 would do nothing: minimal puzzles"):
        build_sudoku(SudokuConfig(box_rows=3, box_cols=3, generator="minimal", min_givens=20))
    with pytest.raises(PonderError, match="task.min_backtracks=5 would do nothing"):
        build_sudoku(SudokuConfig(min_backtracks=5))
    with pytest.raises(PonderError, match="could only generate 0 distinct minimal 4x4 sudoku puzzles with >= 1"):
        build_sudoku(SudokuConfig(generator="minimal", min_backtracks=1, n_train=1, n_test=1))


# ----------------------------------------------------------------------------- mazes


def test_hard_mazes_are_30x30_with_long_unique_shortest_paths():
    cfg = MazeConfig(size=29, canvas=30, min_path_len=111, loop_fraction=0.05, n_train=6, n_test=2, seed=0)
    task = build_maze(cfg)
    assert (task.seq_len, task.grid_shape) == (900, (30, 30))
    for split in (task.train, task.test):
        for x, y, d in zip(split.inputs, split.labels, split.difficulty):
            x, y = x.reshape(30, 30), y.reshape(30, 30)
            assert (x[-1] == WALL).all() and (x[:, -1] == WALL).all()
            s, t = (tuple(np.argwhere(x == v)[0]) for v in (START, GOAL))
            paths = list(nx.all_shortest_paths(open_graph(x), s, t))
            assert len(paths) == 1 and len(paths[0]) - 1 == d > 110
            assert {tuple(p) for p in np.argwhere(y == PATH)} == set(paths[0][1:-1])


def test_hard_mazes_are_deterministic_by_seed(tmp_path, monkeypatch):
    cfg = dict(size=29, canvas=30, min_path_len=111, n_train=3, n_test=1)
    a = build_maze(MazeConfig(seed=1, **cfg))
    monkeypatch.setenv("PONDER_CACHE_DIR", str(tmp_path / "other"))
    b = build_maze(MazeConfig(seed=1, **cfg))
    c = build_maze(MazeConfig(seed=2, **cfg))
    assert np.array_equal(a.train.inputs, b.train.inputs) and np.array_equal(a.test.labels, b.test.labels)
    assert not np.array_equal(a.train.inputs, c.train.inputs)


def test_canvas_smaller_than_maze_is_refused():
    with pytest.raises(PonderError, match="maze canvas=20 is smaller than size=29"):
        build_maze(MazeConfig(size=29, canvas=20))
