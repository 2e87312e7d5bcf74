"""The halting-head family's shared parts, read first (the package docstring of
ponder.models.halting says how the family trains and decides):

- `HaltingHead`: the one protocol every head implements;
- `HaltSettings`: the settings every head has (each head adds its own in its module);
- `ThresholdSettings` and `ThresholdRule`: the settings and the runtime value of a head that halts
  at a threshold (Q-halt, PonderNet), including `threshold="auto"` (calibrated: ponder.training.calibrate);
- `Segment`: consecutive steps of the same samples, what `HaltingHead.loss` is given;
- `HaltProbe` and `ProbeHead`: the linear probe with its stabilisers, and what heads share;
- `HALTING` (head classes) and `HALT_SETTINGS` (their settings dataclasses), filled by `register_head`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Literal, Optional, Protocol

import torch
from torch import Tensor, nn

from ponder.core.autocast import fp32_region
from ponder.core.errors import PonderError
from ponder.core.registry import Registry
from ponder.core.settings import KindRegistry, check, setting
from ponder.core.types import Knob, StepOutput

Memo = dict[str, Tensor]  # per-sample running halting state; every tensor is batch-first
TaskLoss = Callable[[Tensor, Tensor], Tensor]  # (logits (b, n, v), labels (b, n)) -> (b,) per-sample loss


@dataclass(kw_only=True)
class HaltSettings:
    """Settings every halting head has (config section `halt`; `halt.kind` picks the head).

    Attributes:
        max_steps: M, the most ACT steps a sample may take.
        min_steps: no halting before this many steps (a stabiliser; 1 = off).
        bias_init: initial bias of the halt logit (negative = "deep start": rare early halts).
        pool: how the answer state (b, n, d) is reduced for the probe: "first" position or "mean".
        l1_weight: L1 penalty on the halt logit (stabiliser; 0 = off).
        logit_bound: bound the halt logit to +-logit_bound with a scaled tanh (0 = off).
        lr_scale: the halting head's learning rate as a multiple of the base LR (own param group).
        step_gate: learned per-step gate and cycle-index embedding on the halt logit, times the
            cycle-aware factor (c+1)/C (stabiliser).
        penalty_warmup_steps: ramp the halting penalty (ponder cost / KL / Q weight) linearly
            from 0 over this many optimizer steps (0 = off).
    """

    kind: ClassVar[str] = ""
    max_steps: int = setting(8, ge=1)
    min_steps: int = setting(1, ge=1)
    bias_init: float = setting(-5.0, ge=-100, le=100)
    pool: str = setting("mean", choices=("first", "mean"))
    l1_weight: float = setting(0.0, ge=0)
    logit_bound: float = setting(0.0, ge=0)
    lr_scale: float = setting(1.0, gt=0)
    step_gate: bool = False
    penalty_warmup_steps: int = setting(0, ge=0)

    def validate(self) -> None:
        check(self, "halt")
        if self.min_steps > self.max_steps:
            raise PonderError(f"halt.min_steps must be in 1..max_steps={self.max_steps}, got {self.min_steps}")


HALT_SETTINGS = KindRegistry("halt")  # kind -> settings dataclass

AUTO = "auto"
TRAINING_THRESHOLD = 0.5  # what a head under threshold="auto" halts at while the model trains


@dataclass(kw_only=True)
class ThresholdSettings:
    """The settings of a head that halts at a threshold (mixed into its settings dataclass).

    Attributes:
        threshold: the head's halting threshold in [0, 1] (what it thresholds: the head's own
            docstring), or "auto": at every evaluation the threshold is calibrated
            (ponder.training.calibrate) as the lowest of a fixed grid whose solved fraction on a
            validation slice of the training split (its last `calibration_samples` samples, which
            a run trained with "auto" never trains on) is within `auto_margin` of always running
            max_steps. Training's own halting (deep supervision) keeps 0.5 under "auto".
        auto_margin: with threshold "auto", the largest drop of the task's headline metric (the
            fraction it counts as solved; 0.01 = 1 point) allowed against always running M steps.
        calibration_samples: with threshold "auto", the size of that slice (at most a quarter of
            the training split).
    """

    threshold: float | Literal["auto"] = setting(0.5, ge=0, le=1)
    auto_margin: float = setting(0.01, ge=0, le=1)
    calibration_samples: int = setting(512, ge=1)

    def inactive(self) -> dict[str, str]:
        if self.threshold == AUTO:
            return {}
        return {name: f"halt.threshold is {self.threshold!r}, not 'auto'" for name in ("auto_margin",
                                                                                       "calibration_samples")}


class ThresholdRule:
    """Mixed into a head class whose settings are `ThresholdSettings`: the threshold its `decide`
    uses now (`threshold_in_use`). Under threshold "auto": 0.5 while the module trains, else
    `calibrated` (set by ponder.training.calibrate, with its record in `calibration`)."""

    calibrated: float | None = None  # the threshold chosen by the last calibration ("auto")
    calibration: dict | None = None  # that calibration's record

    def threshold_in_use(self) -> float:
        t = self.cfg.threshold  # type: ignore[attr-defined]
        if t != AUTO:
            return t
        if self.training:  # type: ignore[attr-defined]
            return TRAINING_THRESHOLD
        if self.calibrated is None:
            raise PonderError("halt.threshold=auto: the model is evaluated before its threshold was calibrated "
                              "(ponder.training.calibrate.calibrate must run first)")
        return self.calibrated


@dataclass
class Segment:
    """Consecutive ACT steps of the same samples, handed to `HaltingHead.loss`.

    Attributes:
        outs: the step outputs, oldest first (one for deep supervision, M for a trajectory).
        steps: (b,) step count of outs[0] (1 = the first step from fresh latents).
        labels: (b, n) targets.
        task_loss: per-sample task loss of (logits, labels) -> (b,).
        correct: one (b,) bool per output: is that step's answer exactly right (Q targets).
        train_step: the optimizer step (for the penalty warm-up).
        next_out: the output of the step after the last one, without gradient (HRM's bootstrapped
            Q-continue target), or None when the head does not ask for it.
        step_losses: () -> (b, len(outs)) every output's `task_loss` in one call, where the
            objective can compute them at once (the same values); None: call `task_loss` per output.
    """

    outs: list[StepOutput]
    steps: Tensor
    labels: Tensor
    task_loss: TaskLoss
    correct: list[Tensor]
    train_step: int = 0
    next_out: Optional[StepOutput] = None
    step_losses: Optional[Callable[[], Tensor]] = None


class HaltingHead(Protocol):
    """What the training loop and the evaluator need from a halting head."""

    trains_on: ClassVar[str]  # "step" (deep supervision with a carry) or "trajectory" (M steps from fresh)
    needs_next_step: ClassVar[bool]  # True: the segment must carry the next step's output (Q-continue)
    cfg: HaltSettings

    def logits(self, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """(b, n, d) answer state -> (b,) raw halt logits and further per-sample outputs."""

    def start(self, batch_size: int, device: torch.device) -> Memo:
        """Fresh per-sample memo for samples at step 0."""

    def decide(self, out: StepOutput, steps: Tensor, memo: Memo) -> tuple[Tensor, Memo]:
        """(b,) bool "halt after this step" and the updated memo; steps (b,) counts this step.
        Always True at max_steps; never True before min_steps."""

    def answer(self, out: StepOutput, memo: Memo) -> Tensor:
        """(b, n, v) logits a sample answers with if it halts at this step (memo after decide)."""

    def loss(self, segment: Segment) -> tuple[Tensor, dict[str, float]]:
        """The whole objective of a segment (task and halting terms) and named figures."""

    def knobs(self) -> dict[str, Knob]:
        """Runtime settings the stability controller may change (e.g. "halt_weight")."""


HALTING: Registry[type] = Registry("halting head")


def register_head(settings: type):
    """Register a head class under `settings.kind`, with its settings dataclass."""
    def decorate(cls: type) -> type:
        HALT_SETTINGS.register(settings)
        HALTING.add(settings.kind, cls)
        cls.Settings = settings
        return cls

    return decorate


class HaltProbe(nn.Module):
    """Linear probe on the pooled answer state, with the optional stabilisers on its logit:
    bounded logit (scaled tanh) and the step gate (learned per-step gate and cycle embedding,
    times the cycle-aware factor (c+1)/C)."""

    def __init__(self, cfg: HaltSettings, d_model: int, outputs: int = 1):
        super().__init__()
        self.cfg = cfg
        self.linear = nn.Linear(d_model, outputs)
        nn.init.zeros_(self.linear.weight)
        nn.init.constant_(self.linear.bias, cfg.bias_init)
        if cfg.step_gate:
            self.gate = nn.Parameter(torch.full((cfg.max_steps,), 3.0))  # sigmoid(3) ~ 0.95: nearly open
            self.cycle_embedding = nn.Parameter(torch.zeros(cfg.max_steps))

    def forward(self, y: Tensor) -> Tensor:
        """(b, n, d) answer state -> (b, outputs) raw halting logits, always float32: under bf16
        autocast the halting rule (ACT's running sum against 1 - epsilon, PonderNet's remaining
        mass, a threshold) would otherwise be decided at bf16 resolution in training and at fp32
        in an evaluation without autocast."""
        with fp32_region(y):
            pooled = y[:, 0].float() if self.cfg.pool == "first" else y.float().mean(dim=1)  # (b, d)
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
    """What every head shares: its settings and a `HaltProbe` on the answer state (`outputs`
    logits). `logits` returns the probe's single logit; heads with several override it. The
    weight of the head's penalty term is a runtime value (`penalty_weight`, the controller's
    "halt_weight" knob), initialised from the head's own setting named by `weight_setting`."""

    outputs = 1
    weight_setting = ""

    def __init__(self, cfg: HaltSettings, d_model: int):
        super().__init__()
        self.cfg = cfg
        self.probe = HaltProbe(cfg, d_model, outputs=self.outputs)
        self.penalty_weight = float(getattr(cfg, self.weight_setting))

    def logits(self, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.probe(y).squeeze(-1), {}  # (b,)

    def weight(self, train_step: int) -> float:
        """The penalty weight at optimizer step `train_step` (after the warm-up ramp)."""
        return self.penalty_weight * penalty_scale(self.cfg, train_step)

    def knobs(self) -> dict[str, Knob]:
        return {"halt_weight": Knob("halt_weight", lambda: self.penalty_weight,
                                    lambda v: setattr(self, "penalty_weight", float(v)), loss_weight=True)}


def penalty_scale(cfg: HaltSettings, train_step: int) -> float:
    """Warm-up factor of the halting penalty at optimizer step `train_step`."""
    if cfg.penalty_warmup_steps <= 0:
        return 1.0
    return min(1.0, (train_step + 1) / cfg.penalty_warmup_steps)


def halt_config(kind: str = "q_halt", **settings) -> HaltSettings:
    """The settings dataclass of head `kind` with `settings`; a setting the head does not have is
    a PonderError naming the ones it has."""
    return HALT_SETTINGS.make(kind, **settings)


def build_halting(cfg: HaltSettings, d_model: int) -> nn.Module:
    """Construct the registered head of `cfg` (its kind's settings dataclass)."""
    cfg.validate()
    return HALTING.get(cfg.kind)(cfg, d_model)
