"""How a task scores predictions: the `Metric` protocol and the exact-match metric of puzzles.

A task owns its metric (ponder.core.task.TaskData.metric); the training objectives, the
evaluator and the reports ask it rather than assuming a grid of tokens. A metric scores one
batch per sample (`score`), says which samples count as solved (`correct`: the target of
Q-halting and of "halted on a wrong answer"), and reduces the per-sample scores of a whole split
to named figures (`summarize`), listed in `columns` with the headline first.

`ExactMatch` is the rule of TRM and HRM: a sample is *exact* when every supervised position's
argmax equals its label; *cell* accuracy is correct supervised positions / all supervised
positions (not a per-sample mean).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from ponder.core.types import IGNORE

FRACTION, NUMBER = "fraction", "number"  # how a figure reads: a share shown as a percentage, or a plain number


class Metric(Protocol):
    columns: tuple[str, ...]  # keys of `summarize`, headline first
    # optional: formats (column -> FRACTION | NUMBER; default FRACTION) and lower_is_better (columns
    # where less is better; default none): how the task's figures read on every report and plot

    def score(self, logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """(b, n, v) logits and (b, n) labels -> per-sample scores, each (b,)."""

    def correct(self, scores: dict[str, Tensor]) -> Tensor:
        """(b,) bool: the samples that count as solved."""

    def summarize(self, scores: dict[str, np.ndarray]) -> dict[str, float]:
        """Per-sample scores of a whole split (arrays (N,)) -> the figures named in `columns`."""

    def summarize_batch(self, scores: dict[str, Tensor]) -> dict[str, Tensor]:
        """The same figures of one batch's score tensors, as 0-dim tensors on their device (the
        training objectives log them per step; the loop reads every figure in one host transfer)."""


def figure_formats(metric) -> dict[str, str]:
    """Column -> FRACTION or NUMBER for a metric class or instance (FRACTION unless it says)."""
    own = getattr(metric, "formats", {})
    return {c: own.get(c, FRACTION) for c in metric.columns}


def lower_is_better(metric) -> frozenset[str]:
    return frozenset(getattr(metric, "lower_is_better", ()))


def figure_text(value, kind: str = FRACTION) -> str:
    """A figure as the reports print it: a FRACTION as a percentage (0.992 -> "99.2%"), a NUMBER
    with four significant digits (473.19 -> "473.2"); None or NaN -> "n/a"."""
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    return f"{100 * value:.1f}%" if kind == FRACTION else f"{value:.4g}"


def exact_and_cells(preds: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(b, n) predictions and labels -> (b,) exact, (b,) correct cells, (b,) supervised cells."""
    mask = labels != IGNORE  # (b, n)
    hit = (preds == labels) & mask
    correct = hit.sum(1)
    total = mask.sum(1)
    return correct == total, correct, total


class ExactMatch:
    """Whole-answer exact match and cell accuracy over the supervised positions."""

    columns = ("exact", "cell")
    formats = {"exact": FRACTION, "cell": FRACTION}

    def score(self, logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        exact, correct, total = exact_and_cells(logits.argmax(-1), labels)
        return {"exact": exact, "correct_cells": correct, "cells": total}

    def correct(self, scores: dict[str, Tensor]) -> Tensor:
        return scores["exact"]

    def summarize(self, scores: dict[str, np.ndarray]) -> dict[str, float]:
        exact = np.asarray(scores["exact"], dtype=bool)
        cells = float(np.sum(scores["cells"]))
        return {"exact": float(exact.mean()) if exact.size else float("nan"),
                "cell": float(np.sum(scores["correct_cells"]) / cells) if cells else float("nan")}

    def summarize_batch(self, scores: dict[str, Tensor]) -> dict[str, Tensor]:
        """`summarize` of one batch's tensors, without leaving the device (0-dim tensors)."""
        total = scores["cells"].sum().clamp(min=1)
        return {"exact": scores["exact"].float().mean(), "cell": scores["correct_cells"].sum() / total}


def concat_scores(parts: list[dict[str, Tensor]]) -> dict[str, np.ndarray]:
    """Per-batch score dicts -> one dict of (N,) numpy arrays."""
    if not parts:
        return {}
    return {k: torch.cat([p[k].cpu() for p in parts]).numpy() for k in parts[0]}
