"""Bitmask Sudoku solver for any box shape: solving, solution counting and a hardness rating.

Grids are (N, N) integer arrays (or anything `np.asarray` accepts) with 0 = blank and digits
1..N, where N = box_rows * box_cols and a box spans `box_rows` rows and `box_cols` columns.

Internally a grid state is a flat Python list of candidate bitmasks (bit d-1 set = digit d still
possible). Pure Python on small ints beats numpy here: the search touches a handful of cells per
step and numpy's per-call overhead would dominate.
"""
from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import Optional

import numpy as np

MAX_SIDE = 16  # candidate masks use a popcount table of size 2**N
HIDDEN_WEIGHT = 1.0  # hardness cost of one hidden-single placement (on top of its round)
GUESS_WEIGHT = 10.0  # hardness cost of one trial assignment in the backtracking search


class Geometry:
    """Cell/unit structure of an N x N Sudoku with box_rows x box_cols boxes (cached per shape).

    Attributes:
        n: grid side N; nn: number of cells N*N; full: mask with all N digit bits set.
        units: rows, then columns, then boxes, each a tuple of flat cell indices.
        peers: per cell, the cells sharing a unit with it (itself excluded).
        rcb: per cell, its (row, column, box) indices.
        pc: popcount table indexed by mask.
    """

    def __init__(self, box_rows: int, box_cols: int):
        self.box_rows, self.box_cols = box_rows, box_cols
        n = self.n = box_rows * box_cols
        self.nn = n * n
        self.full = (1 << n) - 1
        self.rcb = tuple(
            (r, c, (r // box_rows) * box_rows + c // box_cols) for r in range(n) for c in range(n)
        )
        rows = [tuple(r * n + c for c in range(n)) for r in range(n)]
        cols = [tuple(r * n + c for r in range(n)) for c in range(n)]
        boxes: list[list[int]] = [[] for _ in range(n)]
        for i, (_, _, b) in enumerate(self.rcb):
            boxes[b].append(i)
        self.units = tuple(rows + cols + [tuple(b) for b in boxes])
        self.peers = tuple(
            tuple(sorted({j for u in self.units if i in u for j in u} - {i})) for i in range(self.nn)
        )
        self.pc = [bin(m).count("1") for m in range(1 << n)]


@lru_cache(maxsize=None)
def geometry(box_rows: int, box_cols: int) -> Geometry:
    """The (cached) `Geometry` of a box shape."""
    return Geometry(box_rows, box_cols)


def _geometry_for(grid: np.ndarray, box_rows: Optional[int], box_cols: Optional[int]) -> Geometry:
    """Box shape given explicitly, or inferred for square boxes (4x4, 9x9, 16x16)."""
    n = grid.shape[0]
    if box_rows is None or box_cols is None:
        r = int(round(n**0.5))
        if r * r != n:
            raise ValueError(f"cannot infer the box shape of a {n}x{n} grid: pass box_rows/box_cols")
        box_rows, box_cols = r, r
    if n > MAX_SIDE:
        raise ValueError(f"grid side {n} is larger than the supported {MAX_SIDE}")
    if box_rows * box_cols != n or grid.shape != (n, n):
        raise ValueError(f"grid of shape {grid.shape} does not match boxes {box_rows}x{box_cols}")
    if grid.size and (grid.min() < 0 or grid.max() > n):
        raise ValueError(f"grid values must be 0 (blank) or digits 1..{n}")
    return geometry(box_rows, box_cols)


def _line_perms(n_groups: int, size: int) -> list[list[int]]:
    """All permutations of lines that permute groups (bands/stacks) and lines within each group."""
    out = []
    for groups in itertools.permutations(range(n_groups)):
        for within in itertools.product(itertools.permutations(range(size)), repeat=n_groups):
            out.append([groups[b] * size + within[b][j] for b in range(n_groups) for j in range(size)])
    return out


def geometric_group_size(box_rows: int, box_cols: int) -> int:
    """Number of geometric transforms (without digit relabelling) of a box shape."""
    f = math.factorial
    n = box_rows * box_cols
    rows = f(n // box_rows) * f(box_rows) ** (n // box_rows)
    cols = f(n // box_cols) * f(box_cols) ** (n // box_cols)
    return rows * cols * (2 if box_rows == box_cols else 1)


@lru_cache(maxsize=None)
def geometric_index(box_rows: int, box_cols: int) -> np.ndarray:
    """(T, N*N) gather indices of every validity-preserving geometric transform.

    Band and row-in-band permutations times stack and column-in-stack permutations, and the
    transposes of all of them when boxes are square; `grid.ravel()[idx[t]]` is transform t.
    Meant for small groups only (see `geometric_group_size`: 9x9 already has 3.4M transforms).
    """
    n = box_rows * box_cols
    rows = np.array(_line_perms(n // box_rows, box_rows))
    cols = np.array(_line_perms(n // box_cols, box_cols))
    idx = (rows[:, None, :, None] * n + cols[None, :, None, :]).reshape(-1, n * n)
    if box_rows == box_cols:  # out[r, c] = in[C[c], R[r]]: transpose, then permute
        tr = (cols[None, :, None, :] * n + rows[:, None, :, None]).reshape(-1, n * n)
        idx = np.concatenate([idx, tr])
    return idx


def initial_state(g: Geometry, flat: list[int]) -> Optional[list[int]]:
    """Candidate masks of a flat grid before propagation, or None if it is plainly unsolvable.

    A blank's mask already excludes the digits given in its units, so only blanks that are
    left with a single candidate (`blank_singles`) need propagating.
    """
    n = g.n
    rows, cols, boxes = [0] * n, [0] * n, [0] * n
    for i, v in enumerate(flat):
        if v:
            b = 1 << (v - 1)
            r, c, x = g.rcb[i]
            if (rows[r] | cols[c] | boxes[x]) & b:
                return None
            rows[r] |= b
            cols[c] |= b
            boxes[x] |= b
    full = g.full
    cand = [0] * g.nn
    for i, v in enumerate(flat):
        if v:
            cand[i] = 1 << (v - 1)
        else:
            r, c, x = g.rcb[i]
            m = full & ~(rows[r] | cols[c] | boxes[x])
            if not m:
                return None  # a blank that no digit fits
            cand[i] = m
    return cand


def propagate(g: Geometry, cand: list[int], queue: list[int], hidden: bool = True) -> bool:
    """Naked singles (and hidden singles when `hidden`) to a fixpoint, in place.

    Args:
        cand: (N*N,) candidate masks, modified in place.
        queue: cells whose single candidate must still be removed from their peers.
    Returns:
        False on a contradiction (a cell or a unit without any possible digit).
    """
    peers, full = g.peers, g.full
    while True:
        while queue:
            i = queue.pop()
            b = cand[i]
            for p in peers[i]:
                m = cand[p]
                if m & b:
                    m ^= b
                    if not m:
                        return False
                    cand[p] = m
                    if not m & (m - 1):
                        queue.append(p)
        if not hidden:
            return True
        for unit in g.units:
            once = twice = 0
            for c in unit:
                m = cand[c]
                twice |= once & m
                once |= m
            if once != full:
                return False  # some digit has no place left in this unit
            only = once & ~twice
            if not only:
                continue
            for c in unit:
                m = cand[c]
                h = m & only
                if h and m != h:
                    if h & (h - 1):
                        return False  # two digits that both must go in this one cell
                    cand[c] = h
                    queue.append(c)
        if not queue:
            return True


def _pick_cell(g: Geometry, cand: list[int]) -> int:
    """Most constrained unsolved cell (fewest candidates, lowest index), or -1 when solved."""
    pc = g.pc
    best, best_count = -1, 1 << 30
    for i, m in enumerate(cand):
        k = pc[m]
        if 1 < k < best_count:
            best, best_count = i, k
            if k == 2:
                break
    return best


def search(
    g: Geometry,
    cand: list[int],
    limit: int,
    found: list[list[int]],
    order: Optional[list[list[int]]] = None,
) -> int:
    """Depth-first count of the completions of a propagated state, stopping at `limit`.

    Args:
        cand: propagated candidate masks (not modified).
        found: completed states are appended here.
        order: optional per-cell digit order (0-based digits) for randomised search.
    Returns:
        number of solutions found (at most `limit`).
    """
    cell = _pick_cell(g, cand)
    if cell < 0:
        found.append(cand)
        return 1
    m = cand[cell]
    bits = [1 << d for d in order[cell] if m >> d & 1] if order is not None else _bits(m)
    total = 0
    for b in bits:
        child = cand.copy()
        child[cell] = b
        if propagate(g, child, [cell]):
            total += search(g, child, limit - total, found, order)
            if total >= limit:
                break
    return total


def _bits(m: int) -> list[int]:
    out = []
    while m:
        b = m & -m
        out.append(b)
        m ^= b
    return out


def blank_singles(cand: list[int], flat: list[int]) -> list[int]:
    """Blank cells of `flat` whose mask in `cand` is a single digit (the propagation queue)."""
    return [i for i, m in enumerate(cand) if not flat[i] and not m & (m - 1)]


def state_to_flat(cand: list[int]) -> list[int]:
    """Digits of a solved state (each mask a single bit)."""
    return [m.bit_length() for m in cand]


def count_flat(g: Geometry, flat: list[int], limit: int = 2) -> tuple[int, list[list[int]]]:
    """(number of solutions up to `limit`, solved states found) of a flat grid."""
    cand = initial_state(g, flat)
    if cand is None:
        return 0, []
    if not propagate(g, cand, blank_singles(cand, flat)):
        return 0, []
    found: list[list[int]] = []
    return search(g, cand, limit, found), found


def count_solutions(
    grid: np.ndarray, limit: int = 2, box_rows: Optional[int] = None, box_cols: Optional[int] = None
) -> int:
    """Number of solutions of `grid` (N, N), counting up to `limit`.

    Box shape defaults to square boxes; pass box_rows/box_cols for e.g. 6x6 (2x3 boxes).
    """
    grid = np.asarray(grid)
    g = _geometry_for(grid, box_rows, box_cols)
    return count_flat(g, [int(v) for v in grid.ravel()], limit)[0]


def solve(
    grid: np.ndarray, box_rows: Optional[int] = None, box_cols: Optional[int] = None
) -> Optional[np.ndarray]:
    """A solution (N, N) of `grid` (the first found if several), or None if it has none."""
    grid = np.asarray(grid)
    g = _geometry_for(grid, box_rows, box_cols)
    n, found = count_flat(g, [int(v) for v in grid.ravel()], limit=1)
    if not n:
        return None
    return np.array(state_to_flat(found[0]), dtype=np.int64).reshape(grid.shape)


def is_valid_solution(grid: np.ndarray, box_rows: int, box_cols: int) -> bool:
    """True iff `grid` (N, N) is completely filled and every row, column and box holds 1..N once."""
    grid = np.asarray(grid)
    n = box_rows * box_cols
    if grid.shape != (n, n):
        return False
    want = np.arange(1, n + 1)
    boxes = grid.reshape(n // box_rows, box_rows, n // box_cols, box_cols).transpose(0, 2, 1, 3)
    return all(
        bool((np.sort(a.reshape(n, n), axis=1) == want).all())
        for a in (grid, grid.T, boxes.reshape(n, n))
    )


def hardness(grid: np.ndarray, box_rows: Optional[int] = None, box_cols: Optional[int] = None) -> float:
    """Solver-based hardness of a puzzle (N, N): larger = harder.

    A rating solver works in synchronous rounds, like a recursive model refining all cells at
    once: a round places every naked single currently available; only when there is none does
    a round place every hidden single; only when there is neither does it guess, branching on
    the most constrained cell and exploring the whole search tree (up to 2 solutions, so for a
    unique puzzle the counts do not depend on which branch holds the solution). Then

        hardness = blanks + rounds + HIDDEN_WEIGHT * hidden_singles + GUESS_WEIGHT * guesses

    with rounds, hidden singles and guesses (trial assignments) summed over the search tree.
    More blanks, longer chains of deductions, harder techniques and guessing all raise it; on
    4x4, where naked singles always suffice, it still varies through blanks and rounds.
    """
    grid = np.asarray(grid)
    g = _geometry_for(grid, box_rows, box_cols)
    flat = [int(v) for v in grid.ravel()]
    stats = [0, 0, 0]  # rounds, hidden singles, guesses
    cand = initial_state(g, flat)
    if cand is not None:
        _rate(g, cand, [v != 0 for v in flat], stats, [0])
    blanks = sum(1 for v in flat if v == 0)
    return float(blanks + stats[0] + HIDDEN_WEIGHT * stats[1] + GUESS_WEIGHT * stats[2])


def _rate(g: Geometry, cand: list[int], done: list[bool], stats: list[int], sols: list[int]) -> None:
    """Rating search of `hardness` (modifies its arguments); stops after 2 solutions.

    `done[i]` says cell i's digit has already been removed from its peers.
    """
    peers, nn = g.peers, g.nn
    while True:
        singles = [i for i in range(nn) if not done[i] and not cand[i] & (cand[i] - 1)]
        if singles:
            stats[0] += 1
            for i in singles:
                b = cand[i]
                done[i] = True
                for p in peers[i]:
                    if cand[p] & b:
                        cand[p] ^= b
                        if not cand[p]:
                            return  # contradiction (also catches two equal singles in a unit)
            continue
        if all(done):
            sols[0] += 1
            return
        hidden = _hidden_singles(g, cand)
        if hidden is None:
            return
        if not hidden:
            break
        stats[0] += 1
        stats[1] += len(hidden)
        for i, b in hidden.items():
            cand[i] = b
    cell = _pick_cell(g, cand)
    for b in _bits(cand[cell]):
        if sols[0] >= 2:
            return
        stats[2] += 1
        child = cand.copy()
        child[cell] = b
        _rate(g, child, done.copy(), stats, sols)


def _hidden_singles(g: Geometry, cand: list[int]) -> Optional[dict[int, int]]:
    """All hidden singles {cell: bit} of unsolved cells, or None on a contradiction."""
    out: dict[int, int] = {}
    for unit in g.units:
        once = twice = 0
        for c in unit:
            m = cand[c]
            twice |= once & m
            once |= m
        if once != g.full:
            return None  # a digit with no place left in this unit
        only = once & ~twice
        if not only:
            continue
        for c in unit:
            m = cand[c]
            h = m & only
            if h and m != h:
                if h & (h - 1) or out.get(c, h) != h:
                    return None  # one cell that must hold two digits
                out[c] = h
    return out


# ----------------------------------------------------------------------------- generation helpers


def random_solution(g: Geometry, rng: np.random.Generator) -> list[int]:
    """A random full grid (flat digits): search of the empty grid with random digit orders."""
    order = rng.permuted(np.tile(np.arange(g.n), (g.nn, 1)), axis=1).tolist()
    found: list[list[int]] = []
    search(g, [g.full] * g.nn, 1, found, order)
    return state_to_flat(found[0])


def has_other_solution(g: Geometry, flat: list[int], cell: int, digit: int) -> bool:
    """Does `flat` (which has `cell` blank) have a solution with `digit` NOT in `cell`?

    Asking for a solution that differs at the removed cell is cheaper than counting to 2.
    """
    cand = initial_state(g, flat)
    if cand is None:
        return False
    m = cand[cell] & ~(1 << (digit - 1))
    if not m:
        return False
    cand[cell] = m
    if not propagate(g, cand, blank_singles(cand, flat)):
        return False
    return search(g, cand, 1, []) > 0
