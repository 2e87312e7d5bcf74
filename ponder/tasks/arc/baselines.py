"""Baselines scored beside every ARC result, on the same split under both rules.

- all zeros: a grid of 0s of the test input's shape (both attempts);
- copy input: the test input itself (both attempts);
- most common output colour: the test input's shape filled with the colour most common over the
  task's demonstration outputs (attempt 2: the second most common, when there is one);
- program search: programs `colour map . resize . dihedral` fitted on each task's demonstrations --
  one of the 8 dihedral transforms; then the identity, scaling up (each cell becomes an a x b block),
  tiling (a x b copies) or scaling down (every a-th row and b-th column), with (a, b) read off the
  first demonstration's shapes; then the identity colour map or one fitted to the demonstrations
  (input colour -> output colour, many-to-one allowed, colours unseen in the demonstrations kept).
  Programs are tried in that order (dihedral 0..7, resize, identity map before a fitted one); the
  predictions of the first two programs consistent with every demonstration whose predictions on
  the test input differ are the two attempts.
- local rule: for tasks whose outputs have their inputs' shapes, a lookup table from each input
  cell's 3x3 neighbourhood (outside the grid counts as its own value) to the output cell's colour,
  fitted on the demonstrations; it answers only when no neighbourhood of the demonstrations asks
  for two colours, and a neighbourhood never seen keeps the input cell's colour. Attempt 2 is the
  same with a 1x1 neighbourhood (the cell's own colour). It stands for what a model that learns
  local rules from a task's demonstrations could solve without any knowledge of other tasks.
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np

from ponder.tasks.arc.augment import N_DIHEDRAL, dihedral
from ponder.tasks.arc.data import MAX_SIDE, ArcTask
from ponder.tasks.arc.scoring import ScoreReport, first_attempt_cells, score_attempts

__all__ = ["BASELINES", "all_zeros", "copy_input", "most_common_colour", "program_search", "local_rule",
           "run_baseline", "score_baselines", "Program", "consistent_programs"]

Attempts = dict[str, list[list[np.ndarray]]]


def all_zeros(task: ArcTask) -> list[list[np.ndarray]]:
    return [[np.zeros_like(i)] * 2 for i, _ in task.test]


def copy_input(task: ArcTask) -> list[list[np.ndarray]]:
    return [[np.array(i)] * 2 for i, _ in task.test]


def most_common_colour(task: ArcTask) -> list[list[np.ndarray]]:
    counts = sum(np.bincount(o.ravel(), minlength=10) for _, o in task.train)
    ranked = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0] or [0]
    first, second = ranked[0], ranked[1] if len(ranked) > 1 else ranked[0]
    return [[np.full(i.shape, first, np.uint8), np.full(i.shape, second, np.uint8)] for i, _ in task.test]


# ----------------------------------------------------------------------------- program search


class Program:
    """colour map . resize . dihedral k; resize is ("same",), ("scale", a, b), ("tile", a, b) or ("down", a, b)."""

    def __init__(self, k: int, resize: tuple, cmap: np.ndarray | None):
        self.k, self.resize, self.cmap = k, resize, cmap

    def geometry(self, x: np.ndarray) -> np.ndarray | None:
        y = dihedral(x, self.k)
        kind = self.resize[0]
        if kind == "same":
            return y
        a, b = self.resize[1:]
        if kind == "scale":
            y = np.repeat(np.repeat(y, a, 0), b, 1)
        elif kind == "tile":
            y = np.tile(y, (a, b))
        else:  # down
            if y.shape[0] % a or y.shape[1] % b:
                return None
            y = y[::a, ::b]
        return y if max(y.shape) <= MAX_SIDE else None

    def __call__(self, x: np.ndarray) -> np.ndarray | None:
        y = self.geometry(x)
        if y is None:
            return None
        return np.ascontiguousarray(y if self.cmap is None else self.cmap[y])

    def __repr__(self) -> str:
        cm = "id" if self.cmap is None else "".join(map(str, self.cmap.tolist()))
        return f"Program(dihedral={self.k}, resize={self.resize}, colours={cm})"


def _resizes(shape_in: tuple[int, int], shape_out: tuple[int, int]) -> list[tuple]:
    """Resize steps turning a grid of shape_in into one of shape_out."""
    (h, w), (hh, ww) = shape_in, shape_out
    if (h, w) == (hh, ww):
        return [("same",)]
    out = []
    if hh % h == 0 and ww % w == 0:
        out += [("scale", hh // h, ww // w), ("tile", hh // h, ww // w)]
    if h % hh == 0 and w % ww == 0:
        out.append(("down", h // hh, w // ww))
    return out


def _fit_colours(pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray | None:
    """The colour map m with m[a] == b for every cell of every (a, b) pair, colours never seen kept,
    or None when some colour must go to two colours."""
    codes = np.unique(np.concatenate([(a.astype(np.int64) * 10 + b).ravel() for a, b in pairs]))
    src, dst = codes // 10, codes % 10
    if np.unique(src).size != src.size:
        return None
    cmap = np.arange(10, dtype=np.uint8)
    cmap[src] = dst
    return cmap


def consistent_programs(task: ArcTask) -> Iterator[Program]:
    """Every program of the search space that maps each demonstration input to its output, in order."""
    x0, y0 = task.train[0]
    for k in range(N_DIHEDRAL):
        for resize in _resizes(dihedral(x0, k).shape, y0.shape):
            base = Program(k, resize, None)
            mids = [base.geometry(x) for x, _ in task.train]
            if any(m is None or m.shape != y.shape for m, (_, y) in zip(mids, task.train)):
                continue
            if all(np.array_equal(m, y) for m, (_, y) in zip(mids, task.train)):
                yield base
                continue
            cmap = _fit_colours([(m, y) for m, (_, y) in zip(mids, task.train)])
            if cmap is not None:
                yield Program(k, resize, cmap)


def program_search(task: ArcTask, attempts: int = 2) -> list[list[np.ndarray]]:
    """Two attempts per test input from the first consistent programs with distinct predictions
    (no consistent program: no attempts)."""
    programs = list(consistent_programs(task))
    out = []
    for x, _ in task.test:
        preds: list[np.ndarray] = []
        for p in programs:
            y = p(x)
            if y is not None and not any(q.shape == y.shape and np.array_equal(q, y) for q in preds):
                preds.append(y)
                if len(preds) == attempts:
                    break
        out.append(preds)
    return out


# ----------------------------------------------------------------------------- local rule

_OUTSIDE = 10  # the value of cells beyond the grid's edge in a neighbourhood


def _neighbourhoods(x: np.ndarray, radius: int) -> list[bytes]:
    """One key per cell (row-major): the colours of its (2 radius + 1)^2 neighbourhood."""
    side = 2 * radius + 1
    padded = np.pad(x.astype(np.uint8), radius, constant_values=_OUTSIDE)
    h, w = x.shape
    stack = np.stack([padded[i:i + h, j:j + w] for i in range(side) for j in range(side)], axis=-1)
    return [row.tobytes() for row in stack.reshape(h * w, side * side)]


def _fit_local(pairs: Sequence[tuple[np.ndarray, np.ndarray]], radius: int) -> dict[bytes, int] | None:
    """The neighbourhood -> colour table of the pairs, or None (a shape changes, or a conflict)."""
    table: dict[bytes, int] = {}
    for x, y in pairs:
        if x.shape != y.shape:
            return None
        for key, colour in zip(_neighbourhoods(x, radius), y.ravel().tolist()):
            if table.setdefault(key, colour) != colour:
                return None
    return table


def local_rule(task: ArcTask) -> list[list[np.ndarray]]:
    """Attempt 1 from the 3x3 table, attempt 2 from the 1x1 table (when they fit and differ)."""
    fitted = [(r, table) for r in (1, 0) if (table := _fit_local(task.train, r)) is not None]
    out = []
    for x, _ in task.test:
        preds: list[np.ndarray] = []
        for r, table in fitted:
            flat = [table.get(key, int(c)) for key, c in zip(_neighbourhoods(x, r), x.ravel().tolist())]
            y = np.array(flat, dtype=np.uint8).reshape(x.shape)
            if not any(np.array_equal(q, y) for q in preds):
                preds.append(y)
        out.append(preds)
    return out


BASELINES: dict[str, Callable[[ArcTask], list[list[np.ndarray]]]] = {
    "all zeros": all_zeros,
    "copy input": copy_input,
    "most common output colour": most_common_colour,
    "program search (dihedral x colour map x tiling/scaling)": program_search,
    "local rule (3x3 neighbourhood lookup)": local_rule,
}


def run_baseline(name: str, tasks: Sequence[ArcTask]) -> Attempts:
    fn = BASELINES[name]
    return {t.id: fn(t) for t in tasks}


def score_baselines(tasks: Sequence[ArcTask], split: str = "") -> tuple[dict[str, ScoreReport], dict[str, float]]:
    """Every baseline on `tasks`: its ARC scores and the share of target cells its first attempts get
    right (ponder.tasks.arc.scoring.first_attempt_cells)."""
    attempts = {name: run_baseline(name, tasks) for name in BASELINES}
    return ({name: score_attempts(tasks, a, split=split) for name, a in attempts.items()},
            {name: first_attempt_cells(tasks, a) for name, a in attempts.items()})
