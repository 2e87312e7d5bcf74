"""Maze-Hard's published CSV format (HRM's `sapientinc/maze-30x30-hard-1k`, used by TRM): the
characters of each field and the rules every row must keep (a shortest path from S to G), for the
readers of ponder.tasks.common.published."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ponder.core.errors import PonderError
from ponder.tasks.common.published import Format
from ponder.tasks.mazes.paths import bfs_levels, components_touching

WALL, OPEN, START, GOAL, PATH = 1, 2, 3, 4, 5  # ponder's maze tokens: "# SGo" -> 1..5


def _check_maze(path: Path, lines: np.ndarray, q: np.ndarray, a: np.ndarray, side: int) -> np.ndarray:
    """One S and one G; the answer only adds path marks on open cells; the marked cells join S to
    G and are exactly as many as the cells between them on a shortest path. Difficulty = the
    shortest path's length in steps."""
    def fault(i: int, what: str) -> PonderError:
        return PonderError(f"{path} line {lines[i]}: {what}")

    for tok, ch in ((START, "S"), (GOAL, "G")):
        n = (q == tok).sum(1)
        for i in np.flatnonzero(n != 1)[:1]:
            raise fault(i, f"question has {n[i]} {ch} cells, needs exactly 1")
    changed = (q != a) & ~((q == OPEN) & (a == PATH))
    for i in np.flatnonzero(changed.any(1))[:1]:
        j = int(np.flatnonzero(changed[i])[0])
        raise fault(i, f"answer changes row {j // side + 1} column {j % side + 1} from "
                       f"{'# SGo'[q[i, j] - 1]!r} to {'# SGo'[a[i, j] - 1]!r}")
    k = len(q)
    start, goal = np.argmax(q == START, axis=1), np.argmax(q == GOAL, axis=1)
    dist, _ = bfs_levels((q != WALL).reshape(k, side, side), start)
    d = dist.reshape(k, -1)[np.arange(k), goal]
    for i in np.flatnonzero(d < 0)[:1]:
        raise fault(i, "G cannot be reached from S")
    marked = (a == PATH).reshape(k, side, side)
    on = marked | (a == START).reshape(k, side, side) | (a == GOAL).reshape(k, side, side)
    reached = components_touching(on, (a == START).reshape(k, side, side))
    joined = reached.reshape(k, -1)[np.arange(k), goal]
    for i in np.flatnonzero(~joined)[:1]:
        raise fault(i, "the answer's path does not join S to G")
    n_marked = marked.reshape(k, -1).sum(1)
    for i in np.flatnonzero(n_marked != d - 1)[:1]:
        raise fault(i, f"the answer marks {n_marked[i]} path cells, but a shortest path from S to G has "
                       f"{d[i] - 1} ({d[i]} steps)")
    return d


def maze_format(side: int = 30) -> Format:
    """Maze-Hard's CSV format for `side` x `side` grids (the published set is 30x30)."""
    q = {"#": WALL, " ": OPEN, "S": START, "G": GOAL}
    return Format(name=f"Maze-Hard ({side}x{side})", repo=f"sapientinc/maze-{side}x{side}-hard-1k", side=side,
                  question=q, answer={**q, "o": PATH},
                  check=lambda path, lines, qq, aa: _check_maze(path, lines, qq, aa, side),
                  hint="; set --task.size to the files' grid side",
                  offline=(f"--task.source=none --task.size={side - 1} --task.canvas={side} --task.min_path_len=111 "
                           f"--task.loop_fraction=0.05 --task.n_test=1000" if side % 2 == 0 else ""))
