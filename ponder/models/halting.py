"""Halting heads: decide, per sample, when a recursive reasoner stops.

Implemented here: Q-halt (TRM, arXiv 2510.04871; HRM, arXiv 2506.21734). A linear probe on the
answer state predicts whether the whole answer is currently exactly right; it is trained with
binary cross-entropy against that event and the sample halts once the logit is positive. Its
bias starts at -5 ("deep start": halting is rare until the probe has learned something), its
weight at zero. The same `should_halt` rule runs at training and at inference.

Every head implements the `HaltingHead` protocol; later heads (ACT, PonderNet) plug in through
the `HALTING` registry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ponder.errors import PonderError
from ponder.registry import Registry
from ponder.types import StepOutput


@dataclass(kw_only=True)
class HaltConfig:
    """Halting configuration.

    Attributes:
        kind: registered head name ("q_halt").
        max_steps: M, the most ACT steps a sample may take.
        explore_prob: training only: with this probability a sample gets a random minimum step
            count drawn from U{2..M} before it may halt (TRM's exploration).
        loss_weight: weight of the halting loss beside the task loss.
        bias_init: initial bias of the halt logit.
        pool: how the answer state (b, n, d) is reduced for the probe: "first" position or "mean".
    """

    kind: str = "q_halt"
    max_steps: int = 8
    explore_prob: float = 0.1
    loss_weight: float = 0.5
    bias_init: float = -5.0
    pool: str = "mean"

    def validate(self) -> None:
        if self.max_steps < 1:
            raise PonderError(f"halt.max_steps must be >= 1, got {self.max_steps}")
        if not 0.0 <= self.explore_prob <= 1.0:
            raise PonderError(f"halt.explore_prob must be in [0, 1], got {self.explore_prob}")
        if self.pool not in ("first", "mean"):
            raise PonderError(f"halt.pool must be 'first' or 'mean', got {self.pool!r}")


class HaltingHead(Protocol):
    """What the training loop and the evaluator need from a halting head."""

    def logits(self, y: Tensor) -> Tensor:
        """(b, n, d) answer state -> (b,) halt logits."""

    def loss(self, out: StepOutput, correct: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Halting loss of one step given (b,) bool "answer exactly right now"."""

    def should_halt(self, out: StepOutput, steps: Tensor) -> Tensor:
        """(b,) bool: stop after this step, given (b,) steps taken so far (including it)."""


HALTING: Registry[type] = Registry("halting head")


@HALTING.register("q_halt")
class QHaltHead(nn.Module):
    """TRM's Q-halt: BCE(q, exact-correct), halt when q > 0 or at max_steps."""

    def __init__(self, cfg: HaltConfig, d_model: int):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.probe = nn.Linear(d_model, 1)
        nn.init.zeros_(self.probe.weight)
        nn.init.constant_(self.probe.bias, cfg.bias_init)

    def logits(self, y: Tensor) -> Tensor:
        pooled = y[:, 0] if self.cfg.pool == "first" else y.mean(dim=1)  # (b, d)
        return self.probe(pooled).squeeze(-1)  # (b,)

    def loss(self, out: StepOutput, correct: Tensor) -> tuple[Tensor, dict[str, float]]:
        target = correct.to(out.halt_logits.dtype)  # (b,)
        bce = F.binary_cross_entropy_with_logits(out.halt_logits, target)
        with torch.no_grad():
            acc = ((out.halt_logits > 0) == correct).float().mean().item()
        return self.cfg.loss_weight * bce, {"halt_loss": bce.item(), "q_halt_acc": acc}

    def should_halt(self, out: StepOutput, steps: Tensor) -> Tensor:
        return (out.halt_logits > 0) | (steps >= self.cfg.max_steps)


def build_halting(cfg: HaltConfig, d_model: int) -> nn.Module:
    """Construct the registered head named by `cfg.kind`."""
    return HALTING.get(cfg.kind)(cfg, d_model)
