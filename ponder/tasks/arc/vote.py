"""Voting over augmented views: each view's predicted canvas is cropped at EOS, mapped back by its
transform's exact inverse, hashed and counted; candidates are ranked by votes, ties broken by the
mean halting confidence of the views that voted for them (higher first), then by first appearance.
The first k candidates are the k attempts (pass@k; Kaggle takes two).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ponder.tasks.arc.augment import Transform, grid_hash
from ponder.tasks.arc.canvas import decode

__all__ = ["Candidate", "View", "vote", "vote_views", "attempts_from_views", "to_kaggle"]


@dataclass
class Candidate:
    grid: np.ndarray  # in the task's own frame (inverse-transformed)
    votes: int
    confidence: float  # mean halting confidence of its voters

    def __repr__(self) -> str:
        return f"Candidate({self.grid.shape[0]}x{self.grid.shape[1]}, votes={self.votes}, conf={self.confidence:.3f})"


@dataclass(frozen=True)
class View:
    """Which test input a prediction belongs to and how its input was transformed."""

    task: str
    test_index: int
    transform: Transform


def vote(predictions: Iterable[tuple[np.ndarray, Transform, float]]) -> list[Candidate]:
    """Rank the distinct answers of several views of one test input.

    Args:
        predictions: (predicted canvas (side, side) or flat, its view's transform, halting
            confidence in [0, 1]) per view. A canvas holding no valid grid casts no vote.
    Returns:
        candidates, best first.
    """
    tally: dict[bytes, list] = {}
    for order, (canvas, transform, conf) in enumerate(predictions):
        grid = decode(canvas)
        if grid is None:
            continue
        grid = transform.invert(grid)
        key = grid_hash(grid)
        if key not in tally:
            tally[key] = [grid, 0, 0.0, order]
        entry = tally[key]
        entry[1] += 1
        entry[2] += float(conf)
    ranked = sorted(tally.values(), key=lambda e: (-e[1], -e[2] / e[1], e[3]))
    return [Candidate(g, n, s / n) for g, n, s, _ in ranked]


def vote_views(views: Sequence[View], canvases: np.ndarray, confidences: np.ndarray
               ) -> dict[tuple[str, int], list[Candidate]]:
    """Vote every (task, test input) over its views. canvases: (V, side*side) predicted tokens,
    confidences: (V,) halting confidence per view."""
    groups: dict[tuple[str, int], list[int]] = {}
    for i, v in enumerate(views):
        groups.setdefault((v.task, v.test_index), []).append(i)
    return {key: vote((canvases[i], views[i].transform, confidences[i]) for i in idx) for key, idx in groups.items()}


def attempts_from_views(views: Sequence[View], canvases: np.ndarray, confidences: np.ndarray, k: int = 2
                        ) -> dict[str, list[list[np.ndarray]]]:
    """Task id -> per test input (in order) its first k voted candidates: the input of
    `ponder.tasks.arc.scoring.score_attempts`. A test input without a valid candidate gets no attempts."""
    voted = vote_views(views, canvases, confidences)
    out: dict[str, list[list[np.ndarray]]] = {}
    for (task, i), cands in sorted(voted.items()):
        tests = out.setdefault(task, [])
        while len(tests) <= i:
            tests.append([])
        tests[i] = [c.grid for c in cands[:k]]
    return out


def to_kaggle(attempts: dict[str, list[list[np.ndarray]]]) -> dict[str, list[dict[str, list]]]:
    """Attempts -> Kaggle submission JSON (a missing second attempt repeats the first; a test input
    without any attempt gets [[0]] twice)."""
    out = {}
    for task, tests in attempts.items():
        rows = []
        for tries in tests:
            grids = [np.asarray(g).tolist() for g in tries[:2]] or [[[0]]]
            rows.append({"attempt_1": grids[0], "attempt_2": grids[1] if len(grids) > 1 else grids[0]})
        out[task] = rows
    return out
