"""Halting heads: decide, per sample, when a recursive reasoner stops.

Every head is an `nn.Module` owned by the model (its weights are checkpointed with it) and
implements the `HaltingHead` protocol below. Two training modes exist:

- deep supervision (`unrolled = False`; Q-halt, Q-halt + Q-continue): each optimizer step is one
  ACT step of every slot of the carry, with a per-step halting loss (`loss`);
- unrolled (`unrolled = True`; ACT, PonderNet): each optimizer step runs a fresh batch for all M
  steps and the head turns the trajectory into one loss (`trajectory_loss`).

Inference is the same for every head: `start` a per-sample memo, then after each step `decide`
who halts and read each halting sample's `answer`. The training loop uses the same `decide`.
Heads are registered in `HALTING` by name (`halt.kind`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import Tensor, nn

from ponder.errors import PonderError
from ponder.registry import Registry
from ponder.types import StepOutput

Memo = dict[str, Tensor]  # per-sample running halting state; every tensor is batch-first
TaskLoss = Callable[[Tensor, Tensor], Tensor]  # (logits (b, n, v), labels (b, n)) -> (b,) per-sample loss


@dataclass(kw_only=True)
class HaltConfig:
    """Halting configuration shared by all heads (each reads the fields it needs).

    Attributes:
        kind: registered head name: "q_halt", "q_continue", "act", "pondernet".
        max_steps: M, the most ACT steps a sample may take.
        min_steps: no halting before this many steps (a stabiliser; 1 = off).
        explore_prob: deep supervision only: with this probability a sample must run at least
            U{2..M} steps before it may halt (TRM's exploration).
        loss_weight: weight of the halting term (Q losses; ACT's ponder cost uses act_tau).
        bias_init: initial bias of the halt logit (negative = "deep start": rare early halts).
        pool: how the answer state (b, n, d) is reduced for the probe: "first" position or "mean".
        act_tau: ACT ponder-cost weight tau.
        act_epsilon: ACT halts once the cumulative halting probability reaches 1 - epsilon.
        prior_lambda: PonderNet's geometric prior parameter lambda_p.
        kl_weight: PonderNet's beta, weight of KL(p || prior).
        eval_rule: PonderNet at inference: "threshold" (cumulative halt mass >= threshold) or "sample".
        threshold: PonderNet: see eval_rule; Q-halt: halt when sigmoid(q_halt) > threshold.
        l1_weight: L1 penalty on the halt logit (stabiliser; 0 = off).
        logit_bound: bound the halt logit to +-logit_bound with a scaled tanh (0 = off).
        lr_scale: the halting head's learning rate as a multiple of the base LR (own param group).
        step_gate: learned per-step gate and cycle-index embedding on the halt logit, times the
            cycle-aware factor (c+1)/C (stabiliser).
        penalty_warmup_steps: ramp the halting penalty (ponder cost / KL / Q weight) linearly
            from 0 over this many optimizer steps (0 = off).
    """

    kind: str = "q_halt"
    max_steps: int = 8
    min_steps: int = 1
    explore_prob: float = 0.1
    loss_weight: float = 0.5
    bias_init: float = -5.0
    pool: str = "mean"
    act_tau: float = 0.01
    act_epsilon: float = 0.01
    prior_lambda: float = 0.2
    kl_weight: float = 0.01
    eval_rule: str = "threshold"
    threshold: float = 0.5
    l1_weight: float = 0.0
    logit_bound: float = 0.0
    lr_scale: float = 1.0
    step_gate: bool = False
    penalty_warmup_steps: int = 0

    def validate(self) -> None:
        if self.kind not in HALTING:
            raise PonderError(f"unknown halting head {self.kind!r}; valid: {', '.join(HALTING.names())}")
        if self.max_steps < 1:
            raise PonderError(f"halt.max_steps must be >= 1, got {self.max_steps}")
        if not 1 <= self.min_steps <= self.max_steps:
            raise PonderError(f"halt.min_steps must be in 1..max_steps={self.max_steps}, got {self.min_steps}")
        for name in ("explore_prob", "act_epsilon", "threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise PonderError(f"halt.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.prior_lambda < 1.0:
            raise PonderError(f"halt.prior_lambda must be in (0, 1), got {self.prior_lambda}")
        if self.pool not in ("first", "mean"):
            raise PonderError(f"halt.pool must be 'first' or 'mean', got {self.pool!r}")
        if self.eval_rule not in ("threshold", "sample"):
            raise PonderError(f"halt.eval_rule must be 'threshold' or 'sample', got {self.eval_rule!r}")
        if self.logit_bound < 0 or self.lr_scale <= 0:
            raise PonderError("halt.logit_bound must be >= 0 and halt.lr_scale > 0")


class HaltingHead(Protocol):
    """What the training loop and the evaluator need from a halting head."""

    unrolled: bool  # True: trained on whole trajectories (trajectory_loss); False: per step (loss)
    needs_next_step: bool  # True: `loss` wants the next step's output (HRM's Q-continue target)

    def logits(self, y: Tensor) -> Tensor:
        """(b, n, d) answer state -> (b,) raw halt logits (stored in StepOutput.halt_logits)."""

    def start(self, batch_size: int, device: torch.device) -> Memo:
        """Fresh per-sample memo for samples at step 0."""

    def decide(self, out: StepOutput, steps: Tensor, memo: Memo) -> tuple[Tensor, Memo]:
        """(b,) bool "halt after this step" and the updated memo; steps (b,) counts this step.
        Always True at max_steps; never True before min_steps."""

    def answer(self, out: StepOutput, memo: Memo) -> Tensor:
        """(b, n, v) logits a sample answers with if it halts at this step (memo after decide)."""

    def loss(self, out: StepOutput, correct: Tensor, *, steps: Tensor,
             next_out: StepOutput | None = None) -> tuple[Tensor, dict[str, float]]:
        """Deep supervision: halting loss of one step given (b,) bool "answer exactly right now"."""

    def trajectory_loss(self, outs: list[StepOutput], labels: Tensor,
                        task_loss: TaskLoss) -> tuple[Tensor, dict[str, float]]:
        """Unrolled: the whole objective (task and halting terms) of an M-step trajectory."""


HALTING: Registry[type] = Registry("halting head")


class HaltProbe(nn.Module):
    """Linear probe on the pooled answer state, with the optional stabilisers on its logit:
    bounded logit (scaled tanh) and the step gate (learned per-step gate and cycle embedding,
    times the cycle-aware factor (c+1)/C)."""

    def __init__(self, cfg: HaltConfig, d_model: int, outputs: int = 1):
        super().__init__()
        self.cfg = cfg
        self.linear = nn.Linear(d_model, outputs)
        nn.init.zeros_(self.linear.weight)
        nn.init.constant_(self.linear.bias, cfg.bias_init)
        if cfg.step_gate:
            self.gate = nn.Parameter(torch.full((cfg.max_steps,), 3.0))  # sigmoid(3) ~ 0.95: nearly open
            self.cycle_embedding = nn.Parameter(torch.zeros(cfg.max_steps))

    def forward(self, y: Tensor) -> Tensor:
        pooled = y[:, 0] if self.cfg.pool == "first" else y.mean(dim=1)  # (b, d)
        raw = self.linear(pooled)  # (b, outputs)
        if self.cfg.logit_bound > 0:
            raw = self.cfg.logit_bound * torch.tanh(raw / self.cfg.logit_bound)
        return raw

    def shape(self, logit: Tensor, steps: Tensor) -> Tensor:
        """Apply the step gate to (b,) logits at (b,) step counts (identity when off)."""
        if not self.cfg.step_gate:
            return logit
        c = (steps - 1).clamp(0, self.cfg.max_steps - 1)  # (b,) cycle index
        factor = steps.to(logit.dtype) / self.cfg.max_steps  # (c+1)/C
        return torch.sigmoid(self.gate[c]) * (logit + self.cycle_embedding[c]) * factor

    def penalty(self, logit: Tensor) -> Tensor:
        """L1 penalty on the halt logit (0 when off)."""
        return self.cfg.l1_weight * logit.abs().mean() if self.cfg.l1_weight > 0 else logit.new_zeros(())


class ProbeHead(nn.Module):
    """What every head shares: its config, a `HaltProbe` on the answer state (`outputs` logits)
    and `train_step`, the optimizer step set by the training loop (for the penalty warm-up).
    `logits` returns the probe's single logit; heads with several override it."""

    outputs = 1

    def __init__(self, cfg: HaltConfig, d_model: int):
        super().__init__()
        self.cfg = cfg
        self.probe = HaltProbe(cfg, d_model, outputs=self.outputs)
        self.train_step = 0

    def logits(self, y: Tensor) -> Tensor:
        return self.probe(y).squeeze(-1)  # (b,)


def penalty_scale(cfg: HaltConfig, train_step: int) -> float:
    """Warm-up factor of the halting penalty at optimizer step `train_step`."""
    if cfg.penalty_warmup_steps <= 0:
        return 1.0
    return min(1.0, (train_step + 1) / cfg.penalty_warmup_steps)


def build_halting(cfg: HaltConfig, d_model: int) -> nn.Module:
    """Construct the registered head named by `cfg.kind`."""
    cfg.validate()
    return HALTING.get(cfg.kind)(cfg, d_model)


from ponder.models.halting import q_halt as _q_halt  # noqa: E402,F401  (registers q_halt, q_continue)
from ponder.models.halting import act as _act, pondernet as _pondernet  # noqa: E402,F401

__all__ = ["HALTING", "HaltConfig", "HaltProbe", "HaltingHead", "Memo", "ProbeHead", "TaskLoss", "build_halting",
           "penalty_scale"]
