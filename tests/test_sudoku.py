"""Sudoku generator tests, checked with brute-force helpers that share no code with the module."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import ponder.tasks.sudoku.task as sudoku
from ponder.core.errors import PonderError
from ponder.core.task import TASKS
from ponder.tasks.sudoku.task import (SudokuConfig, augment, build_sudoku, count_solutions, hardness, is_valid_solution,
                                      puzzle_key, solve)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PONDER_CACHE_DIR", str(tmp_path))
    return tmp_path


# ----------------------------------------------------------------------------- naive checkers


def naive_valid(grid, br: int, bc: int) -> bool:
    """Every row, column and box holds 1..N exactly once (plain loops)."""
    n = br * bc
    want = set(range(1, n + 1))
    g = [[int(v) for v in row] for row in np.asarray(grid).reshape(n, n)]
    for i in range(n):
        if set(g[i]) != want or {g[r][i] for r in range(n)} != want:
            return False
    for r0 in range(0, n, br):
        for c0 in range(0, n, bc):
            if {g[r][c] for r in range(r0, r0 + br) for c in range(c0, c0 + bc)} != want:
                return False
    return True


def naive_count(grid, br: int, bc: int, limit: int = 2) -> int:
    """Solutions of a puzzle by plain backtracking on the first blank, up to `limit`."""
    n = br * bc
    g = [[int(v) for v in row] for row in np.asarray(grid).reshape(n, n)]

    def fits(r: int, c: int, d: int) -> bool:
        for k in range(n):
            if (k != c and g[r][k] == d) or (k != r and g[k][c] == d):
                return False
        r0, c0 = r - r % br, c - c % bc
        return not any(g[i][j] == d for i in range(r0, r0 + br) for j in range(c0, c0 + bc) if (i, j) != (r, c))

    for r in range(n):  # the givens themselves must not clash
        for c in range(n):
            if g[r][c] and not fits(r, c, g[r][c]):
                return 0

    def rec() -> int:
        for r in range(n):
            for c in range(n):
                if g[r][c] == 0:
                    total = 0
                    for d in range(1, n + 1):
                        if fits(r, c, d):
                            g[r][c] = d
                            total += rec()
                            g[r][c] = 0
                            if total >= limit:
                                return total
                    return total
        return 1

    return rec()


def relabel(puzzle) -> bytes:
    """Digits renamed 1, 2, ... in order of first appearance (row-major)."""
    names: dict[int, int] = {}
    out = [names.setdefault(int(v), len(names) + 1) if v else 0 for v in np.asarray(puzzle).ravel()]
    return bytes(out)


def orbit(puzzle, br: int, bc: int) -> set[bytes]:
    """`relabel` of every geometric image of `puzzle` (independent brute force): q is equivalent
    to `puzzle` under the Sudoku symmetries iff relabel(q) is in this set."""
    n = br * bc
    p = np.asarray(puzzle).reshape(n, n)

    def line_perms(size: int) -> list[list[int]]:
        groups = n // size
        return [
            [gp[b] * size + w[b][j] for b in range(groups) for j in range(size)]
            for gp in itertools.permutations(range(groups))
            for w in itertools.product(itertools.permutations(range(size)), repeat=groups)
        ]

    shapes = [p, p.T] if br == bc else [p]
    return {relabel(q[np.ix_(rows, cols)]) for q in shapes for rows in line_perms(br) for cols in line_perms(bc)}


def decode(task_split):
    """(puzzles, solutions) as digit grids (k, N*N) from tokens."""
    return task_split.inputs - 1, task_split.labels - 1


# ----------------------------------------------------------------------------- data


def small(**kw) -> SudokuConfig:
    base = dict(n_train=60, n_test=20)
    base.update(kw)
    return SudokuConfig(**base)


def test_registered_and_tokens():
    cfg_cls, build = TASKS.get("sudoku").config, TASKS.get("sudoku").build
    assert cfg_cls is SudokuConfig and build is build_sudoku
    data = build_sudoku(small())
    assert (data.vocab_size, data.seq_len, data.grid_shape) == (6, 16, (4, 4))
    for split, n in ((data.train, 60), (data.test, 20)):
        assert split.inputs.shape == split.labels.shape == (n, 16)
        assert split.inputs.dtype == split.labels.dtype == np.int64
        assert split.difficulty.shape == (n,) and split.difficulty.dtype == np.float32
        assert set(np.unique(split.inputs)) <= {1, 2, 3, 4, 5}  # no PAD, blank = 1
        assert set(np.unique(split.labels)) == {2, 3, 4, 5}  # every cell supervised with a digit
        given = split.inputs != 1
        assert (split.inputs[given] == split.labels[given]).all()
    assert "hardness" in data.difficulty_name
    assert data.augment is not None and build_sudoku(small(augment=False)).augment is None


@pytest.mark.parametrize("br,bc,lo,hi", [(2, 2, 4, 10), (2, 3, 10, 18)])
def test_unique_valid_and_givens_in_range(br, bc, lo, hi):
    data = build_sudoku(small(box_rows=br, box_cols=bc, min_givens=lo, max_givens=hi, n_train=40, n_test=10))
    for split in (data.train, data.test):
        puzzles, solutions = decode(split)
        for p, s in zip(puzzles, solutions):
            assert naive_valid(s, br, bc)
            assert ((p == 0) | (p == s)).all()
            assert lo <= (p > 0).sum() <= hi
            assert naive_count(p, br, bc) == 1


def test_9x9_unique_with_many_givens_and_solver_agrees():
    data = build_sudoku(SudokuConfig(box_rows=3, box_cols=3, min_givens=40, max_givens=45, n_train=4, n_test=2))
    assert (data.vocab_size, data.seq_len, data.grid_shape) == (11, 81, (9, 9))
    for split in (data.train, data.test):
        for p, s in zip(*decode(split)):
            assert naive_count(p, 3, 3) == 1 and naive_valid(s, 3, 3)
            assert (solve(p.reshape(9, 9)).ravel() == s).all()
    # the target range of the brief: uniqueness checked by the module's solver (the naive one is slow)
    hard = build_sudoku(SudokuConfig(box_rows=3, box_cols=3, min_givens=25, max_givens=35, n_train=3, n_test=2))
    for p, s in zip(*decode(hard.train)):
        assert 25 <= (p > 0).sum() <= 35 and naive_valid(s, 3, 3) and ((p == 0) | (p == s)).all()
        assert count_solutions(p.reshape(9, 9), limit=3) == 1


def test_solver_helpers():
    # 4x4 has exactly 288 solution grids
    assert count_solutions(np.zeros((4, 4), int), limit=1000) == 288
    assert count_solutions(np.zeros((4, 4), int)) == 2
    clash = np.zeros((4, 4), int)
    clash[0, 0] = clash[0, 3] = 1
    assert count_solutions(clash) == 0 and solve(clash) is None
    puzzle = np.array([
        [5, 3, 0, 0, 7, 0, 0, 0, 0], [6, 0, 0, 1, 9, 5, 0, 0, 0], [0, 9, 8, 0, 0, 0, 0, 6, 0],
        [8, 0, 0, 0, 6, 0, 0, 0, 3], [4, 0, 0, 8, 0, 3, 0, 0, 1], [7, 0, 0, 0, 2, 0, 0, 0, 6],
        [0, 6, 0, 0, 0, 0, 2, 8, 0], [0, 0, 0, 4, 1, 9, 0, 0, 5], [0, 0, 0, 0, 8, 0, 0, 7, 9],
    ])
    sol = solve(puzzle)
    assert naive_valid(sol, 3, 3) and ((puzzle == 0) | (puzzle == sol)).all()
    assert is_valid_solution(sol, 3, 3) and count_solutions(puzzle) == 1
    bad = sol.copy()
    bad[0, 0], bad[0, 1] = bad[0, 1], bad[0, 0]
    assert not is_valid_solution(bad, 3, 3) and not is_valid_solution(puzzle, 3, 3)
    # 6x6 needs its box shape; a 6x6 grid with 3x2 boxes is not valid for 2x3 boxes in general
    six = build_sudoku(small(box_rows=2, box_cols=3, min_givens=12, max_givens=18, n_train=3, n_test=1))
    s6 = (six.train.labels[0] - 1).reshape(6, 6)
    assert is_valid_solution(s6, 2, 3)
    assert count_solutions((six.train.inputs[0] - 1).reshape(6, 6), box_rows=2, box_cols=3) == 1
    assert hardness(sol) == 0.0  # nothing to do
    assert hardness(puzzle) >= (puzzle == 0).sum()


def test_difficulty_varies_and_correlates_with_blanks():
    for kw in (dict(), dict(box_rows=2, box_cols=3, min_givens=10, max_givens=18)):
        data = build_sudoku(small(**kw))
        blanks = (data.train.inputs == 1).sum(1)
        d = data.train.difficulty
        assert len(np.unique(d)) >= 4
        assert (d >= blanks).all()
        assert np.corrcoef(blanks, d)[0, 1] > 0.4


def test_min_hardness_filter():
    data = build_sudoku(small(min_hardness=14.0, n_train=20, n_test=5))
    assert (data.train.difficulty >= 14).all() and (data.test.difficulty >= 14).all()


# ----------------------------------------------------------------------------- augmentation and keys


@pytest.mark.parametrize("br,bc,lo,hi", [(2, 2, 4, 10), (2, 3, 10, 18), (3, 3, 30, 35)])
def test_augment_keeps_validity_and_key(br, bc, lo, hi):
    n = br * bc
    data = build_sudoku(small(box_rows=br, box_cols=bc, min_givens=lo, max_givens=hi, n_train=8, n_test=2))
    rng = np.random.default_rng(0)
    x = np.repeat(data.train.inputs, 25, axis=0)
    y = np.repeat(data.train.labels, 25, axis=0)
    ax, ay = augment(x, y, rng, box_rows=br, box_cols=bc)
    assert ax.shape == x.shape and ax.dtype == x.dtype and ax is not x
    assert len({r.tobytes() for r in ax}) > len(data.train) * 10  # transforms really vary
    for i in range(len(x)):
        p, s = ax[i] - 1, ay[i] - 1
        assert naive_valid(s, br, bc)
        assert ((p == 0) | (p == s)).all()  # givens still agree with the solution
        assert (p > 0).sum() == (x[i] > 1).sum()
        # per-digit given counts are permuted, not changed
        assert sorted(np.bincount(p, minlength=n + 1)[1:]) == sorted(np.bincount(x[i] - 1, minlength=n + 1)[1:])
        assert puzzle_key(p, br, bc) == puzzle_key(x[i] - 1, br, bc)
        if n <= 4 and i % 5 == 0:
            assert naive_count(p, br, bc) == 1
    # the same transform on inputs and labels: augmenting (labels, labels) keeps them equal
    lx, ly = augment(y, y.copy(), np.random.default_rng(1), box_rows=br, box_cols=bc)
    assert (lx == ly).all()


def test_augment_keeps_pad_and_ignore():
    rng = np.random.default_rng(0)
    x = np.array([[0] * 8 + [1] * 8, [2, 3, 4, 5] + [1] * 12])
    y = np.array([[-100] * 16, [2, 3, 4, 5] * 4])
    ax, ay = augment(x, y, rng)
    assert (np.sort(ax[0]) == np.sort(x[0])).all() and (ay[0] == -100).all()
    assert sorted(ax[1][ax[1] > 1]) == [2, 3, 4, 5]


def test_key_equals_iff_equivalent_4x4():
    data = build_sudoku(small(n_train=20, n_test=5))
    puzzles = list(data.train.inputs - 1) + list(data.test.inputs - 1)
    rng = np.random.default_rng(3)
    x = np.stack(puzzles[:5]) + 1
    extra = augment(x, x.copy(), rng)[0] - 1  # equivalent copies
    puzzles += list(extra)
    orbits = [orbit(p, 2, 2) for p in puzzles]
    keys = [puzzle_key(p, 2, 2) for p in puzzles]
    for i, j in itertools.combinations(range(len(puzzles)), 2):
        equivalent = relabel(puzzles[j]) in orbits[i]
        assert equivalent == (keys[i] == keys[j])


def test_key_differs_for_different_puzzles():
    for br, bc, lo, hi in ((2, 3, 12, 18), (3, 3, 28, 35)):
        data = build_sudoku(small(box_rows=br, box_cols=bc, min_givens=lo, max_givens=hi, n_train=6, n_test=2))
        p = data.train.inputs[0] - 1
        fewer = p.copy()
        fewer[np.flatnonzero(fewer)[0]] = 0
        other = p.copy()  # same givens pattern, two digits' roles mixed up in one cell
        k = np.flatnonzero(other)[0]
        other[k] = other[k] % (br * bc) + 1
        keys = {puzzle_key(q, br, bc) for q in (p, fewer, other)}
        assert len(keys) == 3
        assert len({puzzle_key(q - 1, br, bc) for q in data.train.inputs}) == len(data.train)


@pytest.mark.parametrize("br,bc,lo,hi", [(2, 2, 4, 10), (2, 3, 10, 18)])
def test_train_test_disjoint_up_to_augmentation(br, bc, lo, hi):
    data = build_sudoku(small(box_rows=br, box_cols=bc, min_givens=lo, max_givens=hi, n_train=60, n_test=6))
    train = {relabel(p) for p in data.train.inputs - 1}
    for p in data.test.inputs - 1:
        assert not (orbit(p, br, bc) & train)
    keys_train = {puzzle_key(p, br, bc) for p in data.train.inputs - 1}
    assert not keys_train & {puzzle_key(p, br, bc) for p in data.test.inputs - 1}


# ----------------------------------------------------------------------------- determinism, cache, errors


def test_determinism(cache_dir, monkeypatch):
    a = build_sudoku(small(seed=5))
    monkeypatch.setenv("PONDER_CACHE_DIR", str(cache_dir / "other"))
    b = build_sudoku(small(seed=5))
    c = build_sudoku(small(seed=6))
    for s in ("train", "test"):
        for f in ("inputs", "labels", "difficulty"):
            assert np.array_equal(getattr(getattr(a, s), f), getattr(getattr(b, s), f))
    assert not np.array_equal(a.train.inputs, c.train.inputs)


def test_cache_hit(cache_dir, monkeypatch):
    a = build_sudoku(small(seed=2))
    assert len(list(cache_dir.glob("sudoku-*.npz"))) == 1

    def boom(cfg):
        raise AssertionError("generated again instead of loading the cache")

    monkeypatch.setattr(sudoku, "_generate", boom)
    b = build_sudoku(small(seed=2, augment=False))  # augment does not change the data
    assert np.array_equal(a.train.inputs, b.train.inputs) and np.array_equal(a.test.labels, b.test.labels)
    assert np.array_equal(a.train.difficulty, b.train.difficulty)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(min_givens=3), "at least 4"),
        (dict(box_rows=2, box_cols=3, min_givens=7, max_givens=12), "at least 8"),
        (dict(box_rows=3, box_cols=3, min_givens=16, max_givens=30), "at least 17"),
        (dict(max_givens=16), "no blank"),
        (dict(min_givens=8, max_givens=6), "max_givens"),
        (dict(box_rows=0), "box_rows"),
        (dict(box_cols=-1), "box_cols"),
        (dict(n_test=0), "n_test"),
        (dict(min_givens=4, max_givens=4, n_train=50, n_test=5), "distinct"),
        (dict(min_hardness=1000.0, n_train=5, n_test=1), "distinct"),
    ],
)
def test_impossible_requests(kw, match):
    with pytest.raises(PonderError, match=match) as err:
        build_sudoku(SudokuConfig(**kw))
    assert "\n" not in str(err.value)
