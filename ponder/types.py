"""Core records shared by every part of ponder: what a task yields and what one step returns.

The model only knows one ACT step (`RecursiveReasoner.step`); the training loop, the evaluator
and (later) the gradient estimators own the loop over steps. These records are how they talk.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

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
    """

    inputs: Tensor
    labels: Tensor
    difficulty: Tensor

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(*(getattr(self, f.name).to(device) for f in fields(self)))

    def index(self, idx: Tensor) -> "Batch":
        """Rows selected by a (b,) bool mask or an index tensor."""
        return Batch(*(getattr(self, f.name)[idx] for f in fields(self)))


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
