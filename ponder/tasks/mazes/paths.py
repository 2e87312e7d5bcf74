"""Shortest paths on many grids at once (numpy): breadth-first search by level sets.

Used to check mazes read from files (is the marked path a shortest one?) and to generate large
hard mazes, where a per-maze Python BFS would dominate. Moves are the 4 orthogonal steps; cells
outside the grid count as walls, so no border wall is needed.
"""
from __future__ import annotations

import numpy as np

_SHIFTS = ((-1, 0), (1, 0), (0, -1), (0, 1))


def _neighbour_sum(x: np.ndarray) -> np.ndarray:
    """(N, H, W) sum over the 4 orthogonal neighbours of each cell (zero outside the grid)."""
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    return p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:]


def bfs_levels(is_open: np.ndarray, start: np.ndarray, max_count: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Distances and shortest-path counts from one start cell per grid.

    Args:
        is_open: (N, H, W) bool, True where a cell can be entered.
        start: (N,) flat start indices (row * W + col); the start cell counts as open.
        max_count: counts are capped at this value.
    Returns:
        dist: (N, H, W) int32 steps from the start, -1 where unreachable;
        count: (N, H, W) int32 number of shortest paths from the start, capped at `max_count`.
    """
    n, h, w = is_open.shape
    dist = np.full((n, h, w), -1, dtype=np.int32)
    count = np.zeros((n, h, w), dtype=np.int32)
    rows, cols = np.divmod(np.asarray(start, dtype=np.int64), w)
    dist[np.arange(n), rows, cols] = 0
    count[np.arange(n), rows, cols] = 1
    frontier = count.copy()  # counts of the cells at the current level, 0 elsewhere
    level = 0
    while frontier.any():
        level += 1
        reach = _neighbour_sum(frontier)  # (N, H, W) shortest paths arriving in one more step
        new = (reach > 0) & is_open & (dist < 0)
        dist[new] = level
        frontier = np.where(new, np.minimum(reach, max_count), 0).astype(np.int32)
        count[new] = frontier[new]
    return dist, count


def components_touching(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """(N, H, W) bool: the cells of `mask` 4-connected to the `seed` cells inside `mask`."""
    reached = mask & seed
    while True:
        grown = mask & (reached | (_neighbour_sum(reached.astype(np.int8)) > 0))
        if (grown == reached).all():
            return reached
        reached = grown
