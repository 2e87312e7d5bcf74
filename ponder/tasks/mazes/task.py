"""Maze task: seeded grid mazes with a unique shortest path from S to G, TRM tokens.

A perfect maze is carved by a randomised depth-first search on the cells at odd coordinates;
then a fraction `loop_fraction` of the remaining internal walls is knocked out to create
alternative routes. S and G are placed on distinct open cells such that the shortest S-G path
is unique (BFS with shortest-path counting) and at least `min_path_len` steps long.
We do not use `mazelib` from PyPI: it needs a Cython build, draws from Python's global `random`
rather than a seeded numpy Generator, and does not control shortest-path uniqueness.

Tokens (TRM charset "# SGo"): PAD=0, wall=1, open=2, start=3, goal=4, path=5. Inputs are the
maze with S and G; labels mark the interior cells of the shortest path with 'o'. Difficulty is
the shortest path length in steps (edges). Train and test are disjoint up to the 8 symmetries
of the square (the augmentation).

Hard mazes in Maze-Hard's format: `size=29, canvas=30, min_path_len=111` puts a carved 29x29
maze in the corner of a 30x30 grid of walls and keeps only shortest paths longer than 110 steps
(Maze-Hard's rule; its own mazes are laid out differently). `source=FOLDER` (or `hf`) reads
Maze-Hard's `train.csv` / `test.csv` instead (`ponder.tasks.common.published`): `size` is then the files'
grid side (30), `min_path_len` filters their rows, and a maze may have several shortest paths,
of which the file marks one.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache, partial
from typing import Optional

import numpy as np
from tqdm import tqdm

from ponder.core.cache import cached_arrays
from ponder.core.errors import PonderError
from ponder.core.render import NEUTRAL, UNKNOWN, cells_caption, grid_body, panels_svg, sample_arrays, wrong_cells
from ponder.core.settings import check, setting
from ponder.core.task import Split, TaskData, token_augment
from ponder.core.types import IGNORE
from ponder.tasks.common.published import read_splits
from ponder.tasks.mazes.published import maze_format

__all__ = ["MazeConfig", "build_maze", "augment", "maze_key", "generate_maze", "shortest_paths", "render_maze", "CHARSET"]

VERSION = 1
PAD, WALL, OPEN, START, GOAL, PATH = range(6)
CHARSET = "# SGo"  # token t >= 1 is drawn as CHARSET[t - 1]
_STEPS = ((-1, 0), (1, 0), (0, -1), (0, 1))


@dataclass(kw_only=True)
class MazeConfig:
    """Maze data set of `size` x `size` grids (outer wall included; odd, >= 5), placed in a
    `canvas` x `canvas` grid of walls when canvas > 0; or the mazes of `source` files."""

    name: str = setting("maze", choices=("maze",))
    size: int = setting(9, ge=5)
    n_train: int = setting(2000, ge=0)
    n_test: int = setting(500, ge=0)  # 0: all of a source's test file (generated mazes need >= 1)
    loop_fraction: float = setting(0.0, ge=0, le=1)  # fraction of the perfect maze's internal walls knocked out
    min_path_len: int = setting(0, ge=0)  # minimum shortest-path length (steps) from S to G
    seed: int = setting(0, ge=0)
    augment: bool = True
    canvas: int = setting(0, ge=0)  # side of the sample grid (0 = size): the maze sits in its top-left corner
    source: str | None = None  # a folder with Maze-Hard's train.csv/test.csv, or "hf" (Hugging Face cache)

    def validate(self) -> None:
        _validate(self)

    def inactive(self) -> dict[str, str]:
        if self.source is None:
            return {}
        why = "task.source reads its mazes from files instead of generating them"
        return dict.fromkeys(("loop_fraction", "canvas"), why)


def max_path_len(size: int) -> int:
    """Upper bound on the shortest-path length (steps) in a maze of this size.

    Open cells alternate between cell nodes (odd, odd) and passages, so a simple path visits at
    most m*m cell nodes and m*m + 1 passages, m = (size - 1) // 2.
    """
    m = (size - 1) // 2
    return 2 * m * m


def _validate(cfg: MazeConfig) -> None:
    check(cfg, "task")
    if cfg.source is not None:
        if not cfg.source:
            raise PonderError("task.source is empty: name a folder with train.csv and test.csv, or 'hf'")
        return  # size is the files' grid side; every other check is on the rows read
    if cfg.n_test < 1:
        raise PonderError("task.n_test must be >= 1 for generated mazes (0 means a whole test file, with task.source)")
    if cfg.canvas and cfg.canvas < cfg.size:
        raise PonderError(f"maze canvas={cfg.canvas} is smaller than size={cfg.size} (0 = no canvas)")
    if cfg.size % 2 == 0:
        raise PonderError(f"maze size must be odd and >= 5 (got {cfg.size})")
    bound = max_path_len(cfg.size)
    if cfg.min_path_len > bound:
        raise PonderError(
            f"maze min_path_len={cfg.min_path_len} is impossible for size {cfg.size}: "
            f"a shortest path there has at most {bound} steps"
        )


# ----------------------------------------------------------------------------- generation


def _carve(size: int, loop_fraction: float, rng: np.random.Generator) -> list[bool]:
    """Flat (size*size,) open mask: randomised-DFS perfect maze plus knocked-out walls."""
    m = (size - 1) // 2
    is_open = [False] * (size * size)
    visited = [False] * (m * m)
    first = int(rng.integers(m * m))
    draws = rng.random(m * m).tolist()  # one draw per carved passage
    k = 0
    visited[first] = True
    is_open[(2 * (first // m) + 1) * size + 2 * (first % m) + 1] = True
    stack = [first]
    while stack:
        i, j = divmod(stack[-1], m)
        nbrs = [
            (i + di, j + dj)
            for di, dj in _STEPS
            if 0 <= i + di < m and 0 <= j + dj < m and not visited[(i + di) * m + j + dj]
        ]
        if not nbrs:
            stack.pop()
            continue
        ni, nj = nbrs[int(draws[k] * len(nbrs))]
        k += 1
        visited[ni * m + nj] = True
        is_open[(i + ni + 1) * size + (j + nj + 1)] = True  # the wall between the two cells
        is_open[(2 * ni + 1) * size + 2 * nj + 1] = True
        stack.append(ni * m + nj)
    if loop_fraction > 0:
        walls = [
            r * size + c
            for r in range(1, size - 1)
            for c in range(1, size - 1)
            if (r % 2) != (c % 2) and not is_open[r * size + c]
        ]
        n_knock = int(round(loop_fraction * len(walls)))
        for w in rng.choice(len(walls), size=n_knock, replace=False).tolist():
            is_open[walls[w]] = True
    return is_open


def shortest_paths(is_open: list[bool], size: int, src: int) -> tuple[list[int], list[int]]:
    """BFS from `src` over open cells (the border must be wall).

    Returns:
        dist: (size*size,) steps from src, -1 if unreachable;
        count: (size*size,) number of shortest paths from src, capped at 2.
    """
    dist = [-1] * (size * size)
    count = [0] * (size * size)
    dist[src], count[src] = 0, 1
    queue = [src]
    for v in queue:  # the list grows while we walk it: a FIFO queue without popping
        d = dist[v] + 1
        for u in (v - size, v + size, v - 1, v + 1):
            if not is_open[u]:
                continue
            if dist[u] < 0:
                dist[u], count[u] = d, count[v]
                queue.append(u)
            elif dist[u] == d:
                count[u] = min(2, count[u] + count[v])
    return dist, count


def generate_maze(size: int, loop_fraction: float, min_path_len: int, rng: np.random.Generator) -> Optional[tuple[np.ndarray, np.ndarray, int]]:
    """One maze with a unique shortest S-G path of >= min_path_len steps, or None if this try failed.

    Returns:
        (inputs, labels, path_len): inputs and labels (size, size) uint8 tokens.
    """
    is_open = _carve(size, loop_fraction, rng)
    cells = [i for i, o in enumerate(is_open) if o]
    for _ in range(8):  # a few starts per maze before carving a new one
        start = cells[int(rng.integers(len(cells)))]
        dist, count = shortest_paths(is_open, size, start)
        goals = [v for v in cells if dist[v] >= max(1, min_path_len) and count[v] == 1]
        if goals:
            break
    else:
        return None
    goal = goals[int(rng.integers(len(goals)))]
    grid = np.where(np.array(is_open), OPEN, WALL).astype(np.uint8)
    labels = grid.copy()
    v = goal
    while dist[v] > 1:  # walk back along the unique predecessor chain
        v = next(u for u in (v - size, v + size, v - 1, v + 1) if is_open[u] and dist[u] == dist[v] - 1)
        labels[v] = PATH
    for arr in (grid, labels):
        arr[start], arr[goal] = START, GOAL
    return grid.reshape(size, size), labels.reshape(size, size), dist[goal]


def _generate(cfg: MazeConfig) -> dict[str, np.ndarray]:
    """All mazes of both splits (see `build_maze`)."""
    rng = np.random.default_rng(cfg.seed)
    need = cfg.n_train + cfg.n_test
    max_attempts, max_stall = 10 * need + 1000, 2000 + need
    seen: set[bytes] = set()
    inputs, labels, lengths = [], [], []
    attempts = stall = 0
    with tqdm(total=need, desc=f"maze {cfg.size}x{cfg.size}", unit="maze", leave=False, disable=need <= 200) as bar:
        while len(inputs) < need and attempts < max_attempts and stall < max_stall:
            attempts += 1
            stall += 1
            made = generate_maze(cfg.size, cfg.loop_fraction, cfg.min_path_len, rng)
            if made is None:
                continue
            key = maze_key(made[0])
            if key in seen:
                continue
            seen.add(key)
            inputs.append(made[0].ravel())
            labels.append(made[1].ravel())
            lengths.append(made[2])
            stall = 0
            bar.update(1)
    if len(inputs) < need:
        raise PonderError(
            f"could only generate {len(inputs)} distinct {cfg.size}x{cfg.size} mazes (up to rotation/reflection) "
            f"with loop_fraction={cfg.loop_fraction} and min_path_len={cfg.min_path_len} in {attempts} attempts, "
            f"but n_train + n_test = {need}; lower n_train/n_test or min_path_len, or use a larger size"
        )
    x, y, d = np.stack(inputs), np.stack(labels), np.array(lengths, dtype=np.float32)
    if cfg.canvas > cfg.size:  # walls around the maze up to the canvas side
        pad = ((0, 0), (0, cfg.canvas - cfg.size), (0, cfg.canvas - cfg.size))
        x, y = (np.pad(a.reshape(-1, cfg.size, cfg.size), pad, constant_values=WALL).reshape(len(a), -1) for a in (x, y))
    t = cfg.n_test  # mazes are i.i.d. with distinct keys: the first n_test are the test split
    return {
        "test_inputs": x[:t], "test_labels": y[:t], "test_difficulty": d[:t],
        "train_inputs": x[t:], "train_labels": y[t:], "train_difficulty": d[t:],
    }


def build_maze(cfg: MazeConfig) -> TaskData:
    """Build (or load from the cache) the maze task of `cfg`.

    Returns:
        TaskData with inputs/labels (n_*, size*size) int64 tokens, difficulty (n_*,) float32
        shortest-path length in steps.
    """
    _validate(cfg)
    if cfg.source is not None:
        arrays = read_splits("maze-hard", VERSION, cfg.source, maze_format(cfg.size), n_train=cfg.n_train,
                             n_test=cfg.n_test, seed=cfg.seed, min_difficulty=cfg.min_path_len, difficulty="check")
    else:
        # settings added later enter the key only when set, so earlier cache entries stay valid
        params = {k: v for k, v in asdict(cfg).items() if k not in ("name", "augment", "source") and (
            k != "canvas" or v != 0)}
        arrays = cached_arrays("maze", VERSION, params, lambda: _generate(cfg))
    side = cfg.canvas or cfg.size

    def split(prefix: str) -> Split:
        return Split(
            arrays[f"{prefix}_inputs"].astype(np.int64),
            arrays[f"{prefix}_labels"].astype(np.int64),
            arrays[f"{prefix}_difficulty"].astype(np.float32),
        )

    return TaskData(
        name="maze",
        vocab_size=6,
        seq_len=side * side,
        grid_shape=(side, side),
        train=split("train"),
        test=split("test"),
        augment=token_augment(augment) if cfg.augment else None,
        difficulty_name="path length",
        render=partial(render_maze, size=side),
    )




# ----------------------------------------------------------------------------- symmetries


@lru_cache(maxsize=None)
def dihedral_index(size: int) -> np.ndarray:
    """(8, size*size) gather indices of the 8 rotations/reflections of a size x size grid."""
    a = np.arange(size * size).reshape(size, size)
    return np.stack([np.rot90(b, k).ravel() for b in (a, a.T) for k in range(4)])


def maze_key(grid: np.ndarray) -> bytes:
    """Canonical key of a maze's inputs (size, size): smallest bytes over the 8 symmetries."""
    flat = np.asarray(grid, dtype=np.uint8).ravel()
    size = int(round(flat.size**0.5))
    return min(flat[idx].tobytes() for idx in dihedral_index(size))


def augment(inputs: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One random rotation/reflection of the square per row, the same for inputs and labels.

    Args:
        inputs, labels: (k, size*size) tokens.
    Returns:
        new (k, size*size) arrays.
    """
    size = int(round(inputs.shape[1] ** 0.5))
    idx = dihedral_index(size)[rng.integers(8, size=inputs.shape[0])]
    return np.take_along_axis(inputs, idx, axis=1), np.take_along_axis(labels, idx, axis=1)


# ----------------------------------------------------------------------------- picture

FILL = {PAD: "#f4f4f4", WALL: "#333333", OPEN: "#ffffff", START: "#2ca02c", GOAL: "#9467bd", PATH: "#ffd54f"}


def render_maze(inputs, labels, preds, *, size: int, title: str | None = None, cell_px: int = 16) -> str:
    """Input / target / prediction of one maze as one SVG (ponder.core.render).

    Inputs hold walls, open cells, S and G; labels are the same grid with the interior cells of
    the shortest path set to PATH (IGNORE drawn grey). Walls are dark, S green, G purple, path
    amber; S and G are also lettered. Each panel is coloured by its own tokens, so a prediction
    that misplaces S/G shows it.
    """
    x, y, p = sample_arrays(inputs, labels, preds, size * size)
    sup, wrong = wrong_cells(y, p)
    geo = dict(rows=size, cols=size, cell_px=cell_px, text={START: "S", GOAL: "G"}, ink=lambda _: "#ffffff")
    panels = [
        grid_body(x, title="input", fill=lambda t: FILL.get(t, UNKNOWN), **geo),
        grid_body(y, title="target", fill=lambda t: NEUTRAL if t == IGNORE else FILL.get(t, UNKNOWN), **geo),
        grid_body(p, title="prediction", fill=lambda t: FILL.get(t, UNKNOWN), marks=wrong, **geo),
    ]
    return panels_svg(panels, cells_caption(sup, wrong), title)
