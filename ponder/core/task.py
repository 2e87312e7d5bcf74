"""The task protocol: what a task family provides, from its own small config.

A task module registers `(ConfigClass, build_fn)` under its name in `TASKS`; `build_task(cfg)`
looks it up by `cfg.name` and returns a `TaskData`, which is everything the rest of ponder asks
of a task:

- data: a training and a held-out split (numpy arrays in memory; the training loop streams
  samples from `train`, evaluation walks `test` in order), an optional augmentation;
- per-sample conditioning: a puzzle identifier per sample (`num_puzzle_ids` > 0) and/or context
  tokens (`context_len` > 0, e.g. a task's demonstration pairs), carried by every split and batch;
- `metric`: how predictions are scored (ponder.core.metrics; exact match for puzzles);
- `baselines(split, train)`: trivial baselines printed beside every score;
- `render(inputs, labels, preds)`: one sample drawn as a picture (an SVG string).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Optional

import numpy as np
import torch

from ponder.core.metrics import ExactMatch, Metric, exact_and_cells
from ponder.core.registry import Registry
from ponder.core.types import IGNORE


@dataclass
class Split:
    """One split of a task.

    Attributes:
        inputs: (N, n) int64 tokens.
        labels: (N, n) int64 targets (IGNORE = -100 where unsupervised).
        difficulty: (N,) float32 task-defined hardness, larger = harder.
        puzzle_id: (N,) int64 puzzle identifiers, or None.
        context: (N, c) int64 context tokens, or None.
    """

    inputs: np.ndarray
    labels: np.ndarray
    difficulty: np.ndarray
    puzzle_id: Optional[np.ndarray] = None
    context: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def subset(self, idx: np.ndarray) -> "Split":
        return Split(*(None if (v := getattr(self, f.name)) is None else v[idx] for f in fields(self)))

    def slice(self, lo: int, hi: int) -> "Split":
        return self.subset(np.arange(lo, min(hi, len(self))))


# augment(samples, rng) -> samples: one random transform per row (it may change conditioning too)
Augment = Callable[[Split, np.random.Generator], Split]


def token_augment(fn: Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]
                  ) -> Augment:
    """An `Augment` from a transform of (inputs, labels) that leaves the rest of each sample alone."""
    def augment(samples: Split, rng: np.random.Generator) -> Split:
        inputs, labels = fn(samples.inputs, samples.labels, rng)
        return Split(inputs, labels, samples.difficulty, samples.puzzle_id, samples.context)

    return augment


def grid_baselines(split: Split, train: Split) -> dict[str, dict[str, float]]:
    """Trivial baselines of token-grid tasks on `split`: copy the input; the training split's most
    frequent label at each position."""
    labels = torch.as_tensor(split.labels, device="cpu")
    out = {}
    copy_ex, copy_c, tot = exact_and_cells(torch.as_tensor(split.inputs, device="cpu"), labels)
    out["copy input"] = {"exact": copy_ex.float().mean().item(), "cell": (copy_c.sum() / tot.sum()).item()}
    out["most frequent label"] = most_frequent_label(split, train)
    return out


def most_frequent_label(split: Split, train: Split) -> dict[str, float]:
    """Exact and cell accuracy on `split` of predicting, at each position, the training split's
    most frequent label there."""
    labels = torch.as_tensor(split.labels, device="cpu")
    train_labels = np.where(train.labels == IGNORE, 0, train.labels)
    vocab = int(max(train_labels.max(), split.labels.max())) + 1
    counts = np.stack([np.bincount(col, minlength=vocab) for col in train_labels.T])  # (n, v)
    counts[:, 0] = np.where(counts[:, 1:].sum(1) > 0, 0, counts[:, 0])  # never prefer PAD/IGNORE
    modal = torch.as_tensor(counts.argmax(1), device="cpu").expand_as(labels)
    ex, c, tot = exact_and_cells(modal, labels)
    return {"exact": ex.float().mean().item(), "cell": (c.sum() / tot.sum()).item()}


@dataclass
class TaskData:
    """A built task (see the module docstring).

    Attributes:
        name: task family name (registry key).
        vocab_size: number of token ids (PAD = 0 included).
        seq_len: n, tokens per sample.
        grid_shape: (rows, cols) with rows * cols == seq_len, for display.
        train, test: disjoint splits (no test puzzle equals a train puzzle up to augmentation).
        augment: training-time augmentation, or None.
        difficulty_name: what `difficulty` measures, for reports ("blanks", "path length", ...).
        metric: scores predictions (ponder.core.metrics.Metric).
        baselines: (split, train) -> {baseline name: metric summary} on `split`.
        render: (inputs (n,), labels (n,), preds (n,)) of one sample -> an SVG picture, or None.
        sample_figures: the task's own pictures of a trained model on samples, (model, split, k,
            device) -> HTML figures (None: each sample drawn by `render` with the model's
            adaptive-halting answer, ponder.runs.report.sample_figures).
        num_puzzle_ids: puzzle identifiers in use (0: the task has none).
        context_len: context tokens per sample (0: the task has none).
        curriculum: the order in which training samples are drawn by difficulty, or None (all
            at once).
    """

    name: str
    vocab_size: int
    seq_len: int
    grid_shape: tuple[int, int]
    train: Split
    test: Split
    augment: Optional[Augment] = None
    difficulty_name: str = "difficulty"
    metric: Metric = field(default_factory=ExactMatch)
    baselines: Callable[[Split, Split], dict[str, dict[str, float]]] = grid_baselines
    render: Optional[Callable[[np.ndarray, np.ndarray, np.ndarray], str]] = None
    sample_figures: Optional[Callable[..., list[str]]] = None
    num_puzzle_ids: int = 0
    context_len: int = 0
    curriculum: Optional[Curriculum] = None


@dataclass(frozen=True)
class Curriculum:
    """Train on the easy samples first: only samples of difficulty <= a limit are drawn, and the
    limit rises when the logged training figure `figure` reaches `threshold`
    (ponder.training.curriculum applies it; the limit is part of the sample stream's state).

    Attributes:
        start: the first limit.
        top: the last limit (the hardest training samples).
        factor: each rise multiplies the limit by this (and adds at least 1), up to `top`.
        threshold: the training figure that earns a rise.
        figure: the logged training figure judged (the deployed answer's exact match on the
            logged step's batch).
    """

    start: float
    top: float
    factor: float
    threshold: float
    figure: str = "step_exact"

    def raised(self, limit: float) -> float:
        return float(min(self.top, max(limit + 1, math.ceil(limit * self.factor))))


@dataclass(frozen=True)
class TaskEntry:
    """What the registry knows of a task family without building its data.

    Attributes:
        config: the task's config dataclass (the `task` section).
        build: config -> TaskData.
        metric: the metric class or instance (its `columns`, `formats` and `lower_is_better` say how
            the task's figures read, ponder.core.metrics.figure_text).
        evaluate_run: the task's own full evaluation of a trained run, (model, task, cfg, run_dir,
            **options) -> report dict, written into `out` (None: the per-sample puzzle evaluation of
            ponder.runs.report). Options: device, split, quiet, shard, out, about (what was evaluated).
        page_sections: (run directory, its evaluation report dict) -> [(title, HTML)]: the task's own
            sections of the report page (None: the puzzle sections only).
    """

    config: type
    build: Callable[[Any], TaskData]
    metric: Any = ExactMatch
    evaluate_run: Optional[Callable[..., dict]] = None
    page_sections: Optional[Callable[[Any, dict], list[tuple[str, str]]]] = None


TASKS: Registry[TaskEntry] = Registry("task")


def build_task(cfg: Any) -> TaskData:
    """Build (or load from cache) the task described by a task config with a `name` field."""
    return TASKS.get(cfg.name).build(cfg)
