"""The task interface: every task family builds a `TaskData` from its own small config.

A task module registers `(ConfigClass, build_fn)` under its name in `TASKS`; `build_task(cfg)`
looks it up by `cfg.name`. Data are numpy arrays held in memory; the training loop streams
samples from `train` and evaluation walks `test` in order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from ponder.registry import Registry

# augment(inputs (k, n), labels (k, n), rng) -> (inputs, labels): one random transform per row
Augment = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


@dataclass
class Split:
    """One split of a task.

    Attributes:
        inputs: (N, n) int64 tokens.
        labels: (N, n) int64 targets (IGNORE = -100 where unsupervised).
        difficulty: (N,) float32 task-defined hardness, larger = harder.
    """

    inputs: np.ndarray
    labels: np.ndarray
    difficulty: np.ndarray

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def subset(self, idx: np.ndarray) -> "Split":
        return Split(self.inputs[idx], self.labels[idx], self.difficulty[idx])


@dataclass
class TaskData:
    """A built task: held-out split, training split, vocabulary and optional augmentation.

    Attributes:
        name: task family name (registry key).
        vocab_size: number of token ids (PAD = 0 included).
        seq_len: n, tokens per sample.
        grid_shape: (rows, cols) with rows * cols == seq_len, for display.
        train, test: disjoint splits (no test puzzle equals a train puzzle up to augmentation).
        augment: training-time augmentation, or None.
        difficulty_name: what `difficulty` measures, for reports ("blanks", "path length", ...).
    """

    name: str
    vocab_size: int
    seq_len: int
    grid_shape: tuple[int, int]
    train: Split
    test: Split
    augment: Optional[Augment] = None
    difficulty_name: str = "difficulty"


# name -> (config dataclass, build(cfg) -> TaskData)
TASKS: Registry[tuple[type, Callable[[Any], TaskData]]] = Registry("task")


def build_task(cfg: Any) -> TaskData:
    """Build (or load from cache) the task described by a task config with a `name` field."""
    _, build = TASKS.get(cfg.name)
    return build(cfg)
