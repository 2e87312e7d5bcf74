"""Sudoku task: seeded generator of unique-solution puzzles for any box shape, TRM tokens.

A puzzle is made by filling an empty grid with a randomised solver, then removing givens in a
random order while the solution stays unique, down to a number of givens drawn uniformly in
[min_givens, max_givens] (if the puzzle becomes minimal earlier it is kept when it still has at
most max_givens givens). We checked PyPI first: py-sudoku handles m x n boxes but blanks cells
at random without checking uniqueness (and its solver only finds one solution), so we use our
own bitmask solver (`ponder.tasks.sudoku.solver`).

Tokens (TRM convention): PAD=0, blank=1, digit d -> d+1, vocab_size = N+2. Inputs are the
puzzle, labels the solution at every cell (givens included). Difficulty is the solver hardness
of `hardness`. Train and test are disjoint up to augmentation: every puzzle is keyed by
`puzzle_key`, duplicates are dropped, and each key lands in exactly one split.

Two other sources of 9x9 puzzles: `generator="minimal"` makes minimal puzzles kept when a
complete search needs at least `min_backtracks` backtracks (`ponder.tasks.sudoku.hard`; their
difficulty is that backtrack count), and `source=FOLDER` (or `hf`) reads Sudoku-Extreme's
`train.csv` / `test.csv` (`ponder.tasks.common.published`; difficulty = the file's rating), sampling
`n_train` training puzzles as TRM and HRM do (1000) and `n_test` test puzzles (0 = all).
Published train and test files are taken as they are: their disjointness is not re-checked.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import asdict, dataclass
from functools import lru_cache, partial

import numpy as np
from tqdm import tqdm

from ponder.core.cache import cached_arrays
from ponder.core.errors import PonderError
from ponder.core.render import (GIVEN_FILL, INK, NEUTRAL, SOLVED_INK, WRONG, cells_caption, grid_body, panels_svg,
                                sample_arrays, wrong_cells)
from ponder.core.settings import check, setting
from ponder.core.task import Split, TaskData, token_augment
from ponder.tasks.common.published import read_splits
from ponder.tasks.sudoku.hard import generate_hard
from ponder.tasks.sudoku.published import SUDOKU_EXTREME
from ponder.tasks.sudoku.solver import (MAX_SIDE, count_solutions, geometric_group_size, geometric_index, geometry,
                                        hardness, has_other_solution, is_valid_solution, random_solution, solve)

__all__ = [
    "SudokuConfig", "build_sudoku", "augment", "puzzle_key", "generate_puzzle", "render_sudoku",
    "solve", "count_solutions", "is_valid_solution", "hardness", "min_givens_bound",
]

VERSION = 1
PAD, BLANK = 0, 1  # digit d is token d + 1
EXACT_KEY_MAX_GROUP = 5000  # brute-force canonical form when the geometric group is this small
_KNOWN_MIN_GIVENS = {(2, 2): 4, (2, 3): 8, (3, 3): 17}  # proven minima of unique puzzles


@dataclass(kw_only=True)
class SudokuConfig:
    """Sudoku data set. Grid side N = box_rows * box_cols (4x4: 2x2 boxes, 6x6: 2x3, 9x9: 3x3).

    The default givens range suits 4x4, which has only about 440 puzzle classes (up to
    augmentation) with 4-6 givens but about 3800 with 4-10, enough for 2000 + 500. For 9x9
    use e.g. 25..35, for 6x6 e.g. 12..18.
    """

    name: str = setting("sudoku", choices=("sudoku",))
    box_rows: int = setting(2, ge=1)
    box_cols: int = setting(2, ge=1)
    n_train: int = setting(2000, ge=0)
    n_test: int = setting(500, ge=0)  # 0: all of a source's test file (a generator needs >= 1)
    min_givens: int = setting(4, ge=1)
    max_givens: int = setting(10, ge=1)
    min_hardness: float = setting(0.0, ge=0)  # keep only puzzles with hardness >= this
    seed: int = setting(0, ge=0)
    augment: bool = True
    generator: str = setting("random", choices=("random", "minimal"))  # givens in a range, or minimal puzzles
    min_backtracks: int = setting(0, ge=0)  # minimal puzzles: keep those needing at least this many backtracks
    source: str | None = None  # a folder with Sudoku-Extreme's train.csv/test.csv, or "hf" (Hugging Face cache)
    min_rating: float = setting(0.0, ge=0)  # source: keep rows whose rating is at least this (0 = all)

    def validate(self) -> None:
        _validate(self)

    def inactive(self) -> dict[str, str]:
        out = {}
        if self.source is not None:
            why = "task.source reads its puzzles from files instead of generating them"
            out.update(dict.fromkeys(("min_givens", "max_givens", "min_hardness", "generator", "min_backtracks"), why))
        else:
            out["min_rating"] = "it filters the rows of task.source files, and none is set"
            if self.generator == "minimal":
                out.update(dict.fromkeys(("min_givens", "max_givens"), "minimal puzzles have as many givens as "
                                         "uniqueness needs (task.generator=minimal)"))
            else:
                out["min_backtracks"] = "it filters minimal puzzles (task.generator=minimal)"
        return out


def min_givens_bound(box_rows: int, box_cols: int) -> int:
    """Fewest givens a unique puzzle can have: the proven minimum for 4x4, 6x6 and 9x9, else
    N - 1 (with two digits absent, swapping them gives a second solution)."""
    key = (min(box_rows, box_cols), max(box_rows, box_cols))
    return _KNOWN_MIN_GIVENS.get(key, box_rows * box_cols - 1)


def _validate(cfg: SudokuConfig) -> None:
    check(cfg, "task")
    br, bc = cfg.box_rows, cfg.box_cols
    if br * bc < 2:
        raise PonderError(f"sudoku box_rows and box_cols must be >= 1 with a grid side of at least 2 (got {br}x{bc})")
    n = br * bc
    if n > MAX_SIDE:
        raise PonderError(f"sudoku grid side box_rows*box_cols must be at most {MAX_SIDE} (got {n})")
    if cfg.source is not None and (br, bc) != (3, 3):
        raise PonderError(f"task.source holds 9x9 Sudoku-Extreme puzzles: set --task.box_rows=3 --task.box_cols=3 "
                          f"(got {br}x{bc})")
    if cfg.source is not None and not cfg.source:
        raise PonderError("task.source is empty: name a folder with train.csv and test.csv, or 'hf'")
    if cfg.source is None and cfg.n_test < 1:
        raise PonderError("task.n_test must be >= 1 for generated puzzles (0 means a whole test file, with task.source)")
    if cfg.source is not None or cfg.generator == "minimal":
        return  # the givens range is not used
    lo, hi = min_givens_bound(br, bc), n * n - 1
    allowed = f"allowed: {lo} <= min_givens <= max_givens <= {hi} for {n}x{n}"
    if cfg.min_givens < lo:
        raise PonderError(f"sudoku min_givens={cfg.min_givens} is impossible: a unique {n}x{n} puzzle needs at least {lo} givens ({allowed})")
    if cfg.max_givens > hi:
        raise PonderError(f"sudoku max_givens={cfg.max_givens} leaves no blank cell ({allowed})")
    if cfg.min_givens > cfg.max_givens:
        raise PonderError(f"sudoku min_givens={cfg.min_givens} > max_givens={cfg.max_givens} ({allowed})")


# ----------------------------------------------------------------------------- generation


def generate_puzzle(
    box_rows: int, box_cols: int, rng: np.random.Generator, min_givens: int, max_givens: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """One random unique-solution puzzle, or None if digging stopped above max_givens.

    Returns:
        (puzzle, solution), each (N, N) int64 with 0 = blank.
    """
    g = geometry(box_rows, box_cols)
    solution = random_solution(g, rng)
    target = int(rng.integers(min_givens, max_givens + 1))
    flat = solution.copy()
    givens = g.nn
    for cell in rng.permutation(g.nn).tolist():
        if givens <= target:
            break
        digit = flat[cell]
        flat[cell] = 0
        if has_other_solution(g, flat, cell, digit):
            flat[cell] = digit  # needed for uniqueness: keep it
        else:
            givens -= 1
    if givens > max_givens:
        return None
    shape = (g.n, g.n)
    return np.array(flat, dtype=np.int64).reshape(shape), np.array(solution, dtype=np.int64).reshape(shape)


def _generate(cfg: SudokuConfig) -> dict[str, np.ndarray]:
    """All puzzles of both splits as uint8 arrays (see `build_sudoku`)."""
    br, bc = cfg.box_rows, cfg.box_cols
    g = geometry(br, bc)
    rng = np.random.default_rng(cfg.seed)
    need = cfg.n_train + cfg.n_test
    minimal = cfg.generator == "minimal"
    # a hard minimal puzzle can be rare (about 2% of random 9x9 ones need >= 22 backtracks)
    max_attempts, max_stall = (500 if minimal else 10) * need + 1000, 2000 + need
    seen: set[bytes] = set()
    puzzles, solutions, hard = [], [], []
    attempts = stall = 0
    with tqdm(total=need, desc=f"sudoku {g.n}x{g.n}", unit="puzzle", leave=False, disable=need <= 200) as bar:
        while len(puzzles) < need and attempts < max_attempts and stall < max_stall:
            attempts += 1
            stall += 1
            if minimal:
                made = generate_hard(br, bc, rng, cfg.min_backtracks)
            else:
                made = generate_puzzle(br, bc, rng, cfg.min_givens, cfg.max_givens)
            if made is None:
                continue
            puzzle, solution = made[:2]
            key = puzzle_key(puzzle, br, bc)
            if key in seen:
                continue
            h = hardness(puzzle, br, bc)
            if h < cfg.min_hardness:
                continue
            seen.add(key)
            puzzles.append(puzzle.ravel())
            solutions.append(solution.ravel())
            hard.append(made[2] if minimal else h)
            stall = 0
            bar.update(1)
    if len(puzzles) < need and minimal:
        raise PonderError(
            f"could only generate {len(puzzles)} distinct minimal {g.n}x{g.n} sudoku puzzles with >= "
            f"{cfg.min_backtracks} backtracks and hardness >= {cfg.min_hardness} in {attempts} attempts, but "
            f"n_train + n_test = {need}; lower n_train/n_test, min_backtracks or min_hardness"
        )
    if len(puzzles) < need:
        raise PonderError(
            f"could only generate {len(puzzles)} distinct {g.n}x{g.n} sudoku puzzles (up to augmentation) with "
            f"{cfg.min_givens}..{cfg.max_givens} givens and hardness >= {cfg.min_hardness} in {attempts} attempts, "
            f"but n_train + n_test = {need}; lower n_train/n_test, widen the givens range or lower min_hardness"
        )
    tok_in = np.stack(puzzles).astype(np.uint8) + 1  # blank 0 -> 1, digit d -> d + 1
    tok_out = np.stack(solutions).astype(np.uint8) + 1
    diff = np.array(hard, dtype=np.float32)
    t = cfg.n_test  # puzzles are i.i.d. with distinct keys: the first n_test are the test split
    return {
        "test_inputs": tok_in[:t], "test_labels": tok_out[:t], "test_difficulty": diff[:t],
        "train_inputs": tok_in[t:], "train_labels": tok_out[t:], "train_difficulty": diff[t:],
    }


def build_sudoku(cfg: SudokuConfig) -> TaskData:
    """Build (or load from the cache) the Sudoku task of `cfg`.

    Returns:
        TaskData with inputs/labels (n_*, N*N) int64 tokens, difficulty (n_*,) float32 hardness.
    """
    _validate(cfg)
    if cfg.source is not None:
        arrays = read_splits("sudoku-extreme", VERSION, cfg.source, SUDOKU_EXTREME, n_train=cfg.n_train,
                             n_test=cfg.n_test, seed=cfg.seed, min_rating=cfg.min_rating)
        difficulty_name = "Sudoku-Extreme rating (the published backtrack count)"
    else:
        # settings added later enter the key only when set, so earlier cache entries stay valid
        params = {k: v for k, v in asdict(cfg).items() if k not in ("name", "augment") and (
            k not in _LATER_DEFAULTS or v != _LATER_DEFAULTS[k])}
        arrays = cached_arrays("sudoku", VERSION, params, lambda: _generate(cfg))
        difficulty_name = ("backtracks of a complete search (naked and hidden singles)" if cfg.generator == "minimal"
                           else "solver hardness (blanks + rounds + hidden singles + 10 x guesses)")
    n = cfg.box_rows * cfg.box_cols

    def split(prefix: str) -> Split:
        return Split(
            arrays[f"{prefix}_inputs"].astype(np.int64),
            arrays[f"{prefix}_labels"].astype(np.int64),
            arrays[f"{prefix}_difficulty"].astype(np.float32),
        )

    return TaskData(
        name="sudoku",
        vocab_size=n + 2,
        seq_len=n * n,
        grid_shape=(n, n),
        train=split("train"),
        test=split("test"),
        augment=token_augment(partial(augment, box_rows=cfg.box_rows, box_cols=cfg.box_cols)) if cfg.augment else None,
        difficulty_name=difficulty_name,
        render=partial(render_sudoku, box_rows=cfg.box_rows, box_cols=cfg.box_cols),
    )


_LATER_DEFAULTS = {"generator": "random", "min_backtracks": 0, "source": None, "min_rating": 0.0}


# ----------------------------------------------------------------------------- augmentation


def augment(
    inputs: np.ndarray, labels: np.ndarray, rng: np.random.Generator, box_rows: int = 2, box_cols: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """TRM's Sudoku augmentation, one independent random transform per row.

    Each transform is a digit permutation (blank and PAD kept), a transpose (square boxes only,
    probability 1/2), a band permutation with row permutations inside each band, and a stack
    permutation with column permutations inside each stack; inputs and labels of a row get the
    same transform, so validity and givens/solution agreement are preserved.

    Args:
        inputs, labels: (k, N*N) tokens (labels may hold IGNORE, which is left alone).
        rng: source of the transforms; box_rows, box_cols: the box shape (N = their product).
    Returns:
        new (k, N*N) arrays.
    """
    k = inputs.shape[0]
    n = box_rows * box_cols
    rows = _random_line_perm(k, n // box_rows, box_rows, rng)  # (k, N)
    cols = _random_line_perm(k, n // box_cols, box_cols, rng)
    idx = rows[:, :, None] * n + cols[:, None, :]
    if box_rows == box_cols:
        flip = rng.random(k) < 0.5
        idx = np.where(flip[:, None, None], cols[:, None, :] * n + rows[:, :, None], idx)
    idx = idx.reshape(k, n * n)
    vocab = n + 2
    tokmap = np.tile(np.arange(vocab), (k, 1))
    tokmap[:, BLANK + 1 :] = rng.permuted(np.tile(np.arange(BLANK + 1, vocab), (k, 1)), axis=1)

    def apply(x: np.ndarray) -> np.ndarray:
        x = np.take_along_axis(x, idx, axis=1)
        ok = (x >= 0) & (x < vocab)
        mapped = np.take_along_axis(tokmap, np.where(ok, x, 0), axis=1).astype(x.dtype)
        return np.where(ok, mapped, x)

    return apply(inputs), apply(labels)


def _random_line_perm(k: int, n_groups: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(k, n_groups*size) random band/stack-respecting line permutations, one per row."""
    groups = rng.permuted(np.tile(np.arange(n_groups), (k, 1)), axis=1)
    within = rng.permuted(np.tile(np.arange(size), (k, n_groups, 1)), axis=2)
    return (groups[:, :, None] * size + within).reshape(k, n_groups * size)


def render_sudoku(inputs, labels, preds, *, box_rows: int, box_cols: int, title: str | None = None,
                  cell_px: int = 24) -> str:
    """Input / target / prediction of one Sudoku as one SVG (ponder.core.render).

    Tokens: PAD, blank, digit d -> d + 1 (1..N, N = box_rows * box_cols), N*N per array, row-major.
    Givens are dark on grey in every panel; filled-in digits are blue; wrong predicted digits are
    red with a red outline. Tokens outside the digit range are shown as "?" (PAD and blank empty).
    """
    n = box_rows * box_cols
    x, y, p = sample_arrays(inputs, labels, preds, n * n)
    sup, wrong = wrong_cells(y, p)
    given = (x >= BLANK + 1) & (x <= n + 1)

    def digit(t: int) -> str:
        return str(t - 1) if BLANK + 1 <= t <= n + 1 else ("" if t in (PAD, BLANK) else "?")

    grey = [GIVEN_FILL if g else None for g in given]
    target_fill = [g if s else NEUTRAL for g, s in zip(grey, sup)]
    target_ink = [INK if g else SOLVED_INK for g in given]
    pred_ink = [WRONG if w else i for w, i in zip(wrong, target_ink)]
    geo = dict(rows=n, cols=n, cell_px=cell_px, borders=(box_rows, box_cols))
    panels = [
        grid_body(x, title="input", fill=grey, text=digit, **geo),
        grid_body(y, title="target", fill=target_fill, text=[digit(t) if s else "" for t, s in zip(y, sup)],
                  ink=target_ink, **geo),
        grid_body(p, title="prediction", fill=grey, text=digit, ink=pred_ink, marks=wrong, **geo),
    ]
    return panels_svg(panels, cells_caption(sup, wrong), title)


# ----------------------------------------------------------------------------- keys


def puzzle_key(puzzle: np.ndarray, box_rows: int, box_cols: int) -> bytes:
    """A key equal for any two puzzles related by an augmentation (digit relabelling + geometry).

    When the geometric group is small (4x4: 128 transforms, 6x6: 3456) the key is the exact
    canonical form: the lexicographically smallest grid over all transforms, with digits
    relabelled in order of first appearance. Otherwise (9x9: 3.4M transforms) it is a
    Weisfeiler-Lehman hash of the cell/line/box/chute incidence structure plus one anonymous
    node per digit joined to the cells that hold it: invariant by construction, and random
    distinct puzzles practically never collide.

    Args:
        puzzle: (N, N) or (N*N,) ints, 0 = blank, digits 1..N.
    """
    flat = np.asarray(puzzle, dtype=np.int64).ravel()
    if geometric_group_size(box_rows, box_cols) <= EXACT_KEY_MAX_GROUP:
        return b"E" + _canonical_form(flat, box_rows, box_cols).tobytes()
    return b"W" + _wl_hash(flat, box_rows, box_cols)


def _canonical_form(flat: np.ndarray, box_rows: int, box_cols: int) -> np.ndarray:
    """Lexicographically smallest relabelled grid over all geometric transforms.

    Scans cells in row-major order over all transforms at once, relabelling digits by first
    appearance on the fly and keeping only the transforms that are minimal so far: most are
    dropped after a few cells, so this is much cheaper than relabelling every transform fully.
    """
    n = box_rows * box_cols
    x = flat[geometric_index(box_rows, box_cols)]  # (T, nn)
    alive = np.arange(x.shape[0])
    label = np.zeros((x.shape[0], n + 1), dtype=np.int64)  # digit -> label given so far (0: none)
    used = np.zeros(x.shape[0], dtype=np.int64)  # labels given so far
    out = np.zeros(x.shape[1], dtype=np.uint8)
    for j in range(x.shape[1]):
        d = x[alive, j]
        lab = label[alive, d]
        fresh = (d > 0) & (lab == 0)
        lab = np.where(fresh, used[alive] + 1, lab)
        label[alive[fresh], d[fresh]] = lab[fresh]
        used[alive] += fresh
        value = np.where(d > 0, lab, 0)
        best = value.min()
        alive = alive[value == best]
        out[j] = best
    return out


@lru_cache(maxsize=None)
def _wl_structure(box_rows: int, box_cols: int) -> tuple[list[list[int]], list[int]]:
    """Adjacency and initial colours of cells, lines, boxes and chutes (bands/stacks)."""
    g = geometry(box_rows, box_cols)
    n, nn = g.n, g.nn
    square = box_rows == box_cols  # rows and columns are interchangeable only then
    n_bands, n_stacks = n // box_rows, n // box_cols
    row0, col0, box0 = nn, nn + n, nn + 2 * n
    band0, stack0 = nn + 3 * n, nn + 3 * n + n_bands
    total = stack0 + n_stacks
    adj: list[list[int]] = [[] for _ in range(total)]

    def link(a: int, b: int) -> None:
        adj[a].append(b)
        adj[b].append(a)

    for i, (r, c, x) in enumerate(g.rcb):
        link(i, row0 + r), link(i, col0 + c), link(i, box0 + x)
    for r in range(n):
        link(row0 + r, band0 + r // box_rows)
    for c in range(n):
        link(col0 + c, stack0 + c // box_cols)
    for x in range(n):
        link(box0 + x, band0 + x // n_stacks), link(box0 + x, stack0 + x % n_stacks)
    colour = [0] * nn + [2] * n + [2 if square else 3] * n + [4] * n
    colour += [5] * n_bands + [5 if square else 6] * n_stacks
    return adj, colour


def _wl_hash(flat: np.ndarray, box_rows: int, box_cols: int, rounds: int = 5) -> bytes:
    base_adj, base_colour = _wl_structure(box_rows, box_cols)
    adj = [list(a) for a in base_adj]
    colour = list(base_colour)
    for i, v in enumerate(flat.tolist()):
        if v:
            colour[i] = 1
    digits = sorted({int(v) for v in flat if v})
    for d in digits:  # one anonymous node per digit: relabelling digits permutes these nodes
        node = len(adj)
        adj.append([i for i, v in enumerate(flat.tolist()) if v == d])
        for i in adj[node]:
            adj[i].append(node)
        colour.append(7)
    h = hashlib.blake2b(f"{box_rows}x{box_cols}".encode(), digest_size=16)
    for _ in range(rounds):
        sigs = [(colour[v], *sorted(colour[u] for u in adj[v])) for v in range(len(adj))]
        # name the new colours by their signatures (canonical), and hash the signature histogram
        names = {s: j for j, s in enumerate(sorted(set(sigs)))}
        h.update(repr(sorted(Counter(sigs).items())).encode())
        colour = [names[s] for s in sigs]
    return h.digest()
