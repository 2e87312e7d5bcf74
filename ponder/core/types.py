"""Core records shared by every part of ponder: what a task yields and what one step returns.

The model only knows one ACT step (`RecursiveReasoner.step`); the training loop, the evaluator
and the gradient estimators own the loop over steps. These records are how they talk.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable, Optional

import torch
from torch import Tensor

IGNORE = -100  # label value for unsupervised positions (cross-entropy ignore_index)


@dataclass
class Batch:
    """What every task yields.

    Attributes:
        inputs: (b, n) int64 tokens.
        labels: (b, n) int64 targets, IGNORE where unsupervised.
        difficulty: (b,) float32 task-defined hardness (blanks, solver work, path length, ...).
        puzzle_id: (b,) int64 identifier of the puzzle (or augmented puzzle) each sample belongs
            to, for a learned per-puzzle embedding; None when the task has none.
        context: (b, c) int64 context tokens (e.g. a task's demonstration pairs), read by the
            model as per-sample conditioning; None when the task has none.
    """

    inputs: Tensor
    labels: Tensor
    difficulty: Tensor
    puzzle_id: Optional[Tensor] = None
    context: Optional[Tensor] = None

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def _map(self, fn) -> "Batch":
        return Batch(*(None if (v := getattr(self, f.name)) is None else fn(v) for f in fields(self)))

    def to(self, device: torch.device | str) -> "Batch":
        return self._map(lambda t: t.to(device))

    def index(self, idx: Tensor) -> "Batch":
        """Rows selected by a (b,) bool mask or an index tensor."""
        return self._map(lambda t: t[idx])


@dataclass(frozen=True)
class Knob:
    """A runtime setting a component exposes to the stability controller (e.g. the halting
    loss weight): read with `get()`, changed with `set(value)`. `loss_weight` marks the weight of
    an auxiliary loss term (the controller's cap on the auxiliary share scales those)."""

    name: str
    get: Callable[[], float]
    set: Callable[[float], None]
    loss_weight: bool = False


@dataclass
class State:
    """Latent carry of a recursive reasoner between ACT steps.

    Attributes:
        y: (b, n, d) answer state (TRM) / high-level state z_H (HRM).
        z: (b, n, d) latent reasoning state (TRM) / low-level state z_L (HRM).
    """

    y: Tensor
    z: Tensor

    def index(self, idx: Tensor) -> "State":
        return State(self.y[idx], self.z[idx])

    def detach(self) -> "State":
        return State(self.y.detach(), self.z.detach())

    def where(self, mask: Tensor, other: "State") -> "State":
        """Rows of `other` where mask (b,) is True, rows of self elsewhere."""
        m = mask.reshape(-1, 1, 1).clone()  # a copy: autograd may save it, and callers mutate masks
        return State(torch.where(m, other.y, self.y), torch.where(m, other.z, self.z))


@dataclass
class StepOutput:
    """What one ACT step returns besides the new state.

    Attributes:
        logits: (b, n, v) token logits read out from the answer state.
        halt_logits: (b,) halting logits (meaning set by the halting head; > 0 leans to halt).
        aux: further per-sample head outputs, batch-first (e.g. HRM's q_continue logits).
    """

    logits: Tensor
    halt_logits: Tensor
    aux: dict[str, Tensor] = field(default_factory=dict)
