"""Augmentations of ARC tasks with exact inverses, and de-duplication by hash.

A `Transform` is one of the 8 dihedral transforms (`k & 3` quarter turns counter-clockwise, then
a transpose when `k >= 4`) followed by a permutation of the colours 1-9 (0, the background, stays
0). Both act on the last two axes / on values, so a whole stack of equal-shaped grids is
transformed in one call. `Transform.invert` undoes `Transform.apply` exactly. Translation (a
training-time offset on the canvas) is the canvas's business (ponder.tasks.arc.canvas.encode / decode).

`task_views(task, n, rng)` gives n transforms whose transformed tasks are pairwise distinct (the
identity first), de-duplicated by a hash of the transformed task's content: a symmetric task or one
using few colours has fewer distinct views than transforms.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ponder.tasks.arc.data import ArcTask

__all__ = ["Transform", "IDENTITY", "dihedral", "inverse_dihedral", "task_views", "task_hash", "grid_hash",
           "random_transform", "N_DIHEDRAL"]

N_DIHEDRAL = 8


def dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """Dihedral transform k (0..7) of the last two axes: k & 3 quarter turns, then a transpose if k >= 4."""
    x = np.asarray(x)
    t = np.swapaxes(x, -1, -2)
    q = k & 3  # quarter turns counter-clockwise, as np.rot90 (views: slicing is much cheaper)
    y = x if q == 0 else t[..., ::-1, :] if q == 1 else x[..., ::-1, ::-1] if q == 2 else t[..., :, ::-1]
    return np.swapaxes(y, -1, -2) if k >= 4 else y


def _compose_table() -> list[int]:
    probe = np.arange(6).reshape(2, 3)
    views = [dihedral(probe, k) for k in range(N_DIHEDRAL)]
    inv = []
    for k in range(N_DIHEDRAL):
        inv.append(next(j for j in range(N_DIHEDRAL)
                        if dihedral(views[k], j).shape == probe.shape and (dihedral(views[k], j) == probe).all()))
    return inv


_INVERSE = _compose_table()


def inverse_dihedral(k: int) -> int:
    """j such that dihedral(dihedral(x, k), j) == x."""
    return _INVERSE[k]


@dataclass(frozen=True)
class Transform:
    """Dihedral transform `k` (0..7), then colour c -> perm[c] (perm[0] == 0, a permutation of 0..9)."""

    k: int = 0
    perm: tuple[int, ...] = tuple(range(10))

    def __post_init__(self):
        if not 0 <= self.k < N_DIHEDRAL:
            raise ValueError(f"dihedral index must be 0..7, got {self.k}")
        if len(self.perm) != 10 or sorted(self.perm) != list(range(10)) or self.perm[0] != 0:
            raise ValueError(f"perm must permute 0..9 keeping 0, got {self.perm}")

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(..., h, w) colours -> transformed (..., h', w') (a new array)."""
        return np.asarray(self.perm, dtype=np.uint8)[dihedral(np.asarray(x), self.k)]

    def invert(self, x: np.ndarray) -> np.ndarray:
        """The exact inverse of `apply`."""
        inv = np.argsort(self.perm).astype(np.uint8)
        return np.ascontiguousarray(dihedral(inv[np.asarray(x)], inverse_dihedral(self.k)))

    def apply_task(self, task: ArcTask) -> ArcTask:
        return ArcTask(task.id, tuple((self.apply(i), self.apply(o)) for i, o in task.train),
                       tuple((self.apply(i), self.apply(o)) for i, o in task.test))


IDENTITY = Transform()


def random_transform(rng: np.random.Generator) -> Transform:
    return Transform(int(rng.integers(N_DIHEDRAL)), (0, *(int(c) for c in rng.permutation(9) + 1)))


def grid_hash(grid: np.ndarray) -> bytes:
    """Content hash of one grid (shape included)."""
    g = np.ascontiguousarray(grid, dtype=np.uint8)
    return hashlib.blake2b(np.array(g.shape, dtype=np.int64).tobytes() + g.tobytes(), digest_size=16).digest()


def task_hash(task: ArcTask, with_test_outputs: bool = True) -> bytes:
    """Content hash of a task (every grid in order; test outputs optional)."""
    h = hashlib.blake2b(digest_size=16)
    for part in (task.train, task.test):
        h.update(b"|")
        for i, o in part:
            h.update(grid_hash(i))
            if with_test_outputs or part is task.train:
                h.update(grid_hash(o))
    return h.digest()


def task_views(task: ArcTask, n: int, rng: np.random.Generator, max_tries: int | None = None) -> list[Transform]:
    """Up to n transforms (the identity first, then random ones) whose transformed tasks are pairwise
    distinct, de-duplicated by `task_hash`; stops after `max_tries` draws (default 20 n + 100)."""
    views, seen = [IDENTITY], {task_hash(task)}
    tries = 0
    limit = 20 * n + 100 if max_tries is None else max_tries
    while len(views) < n and tries < limit:
        tries += 1
        t = random_transform(rng)
        key = task_hash(t.apply_task(task))
        if key not in seen:
            seen.add(key)
            views.append(t)
    return views
