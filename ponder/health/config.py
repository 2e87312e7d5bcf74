"""Settings of the training-health monitors and the stability controller (config section `health`)."""
from __future__ import annotations

from dataclasses import dataclass

from ponder.errors import PonderError

RAMP_SHAPES = ("linear", "cosine")


@dataclass(kw_only=True)
class TrainingHealthConfig:
    """Thresholds of the monitors and the policy of the controller (defaults from REFERENCE §4).

    Attributes:
        monitors: run the training-health monitors and write the health report (cheap; on).
        abort_streak: this many non-finite (skipped) steps in a row abort the run with an
            emergency checkpoint and a one-line error.
        explode_factor: a pre-clip gradient norm above explode_factor x train.grad_clip is an
            explosion (REFERENCE: 10x clip). With clipping off, x the running mean norm.
        spike_ratio: a loss above spike_ratio x its running mean is a spike.
        spike_warmup: steps before spikes are judged (the early loss falls fast).
        ema_beta: decay of the running means (loss, accuracy).
        attention_every: attention statistics every this many steps (0 = off).
        attention_samples: samples (batch rows) whose attention weights are recomputed.
        attention_floor: collapse when mean max-attention < attention_floor / n (uniform = 1/n).
        logit_limit: |token logit| above this counts as unbounded in the report (REFERENCE: ±67
            went wrong; its clamp starts at 50).
        halt_var_floor: halt-logit variance across the batch below this is logged as saturated
            (REFERENCE: stop-logit variance should exceed ~0.5). The report's verdict on halt
            spread is the halting-health `input_agnostic` check.
        acc_drop: an accuracy EMA more than this below its best is a drop (REFERENCE: 5 points).
        norm_warn, norm_critical, norm_kill: adapter delta norm (before its clamp) as multiples
            of model.adapter_max_norm: warn (logged), critical (LR backoff), kill (rollback).
        activation_norms: comma-separated module names (e.g. "readout,net.blocks.0") whose
            per-sample output norms are logged (mean, max, p90).
        controller: run the stability controller (off by default).
        window: steps per controller window (decisions are taken at window ends).
        ramp: auxiliary weights to ramp, "knob:base:target,..." with knobs halt_weight,
            adapter_scale, adapter_reg (empty = none).
        ramp_steps: steps over which the ramp goes from base to target; ramp_shape: linear|cosine.
        recovery: after a pause, the fraction of the gap to the schedule closed per clean window.
        lr_backoff: LR multiplier on an explosion, collapse or critical norm; cooldown_windows:
            windows before another backoff; restore_windows: clean windows to undo one backoff.
        backoff_on_acc_drop: an accuracy-EMA drop beyond acc_drop also backs off the LR (REFERENCE
            only pauses on it; on this project's tasks a too-high LR shows first as such a drop).
        aux_cap: most the auxiliary terms may make of the total loss (REFERENCE: 25%).
        hard_nan: non-finite steps in a window that make it a hard failure.
        rollback_after: consecutive hard-failure windows before a rollback to the last good
            snapshot; rollback_lr: extra LR multiplier after a rollback; max_rollbacks: then abort.
        snapshot_every: clean windows between good-state snapshots (RUN_DIR/health/).
    """

    monitors: bool = True
    abort_streak: int = 50
    explode_factor: float = 10.0
    spike_ratio: float = 2.0
    spike_warmup: int = 20
    ema_beta: float = 0.9
    attention_every: int = 10
    attention_samples: int = 4
    attention_floor: float = 1.5
    logit_limit: float = 50.0
    halt_var_floor: float = 0.5
    acc_drop: float = 0.05
    norm_warn: float = 1.5
    norm_critical: float = 3.0
    norm_kill: float = 10.0
    activation_norms: str = ""
    controller: bool = False
    window: int = 10
    ramp: str = ""
    ramp_steps: int = 0
    ramp_shape: str = "linear"
    recovery: float = 0.05
    lr_backoff: float = 0.5
    cooldown_windows: int = 2
    restore_windows: int = 4
    backoff_on_acc_drop: bool = True
    aux_cap: float = 0.25
    hard_nan: int = 3
    rollback_after: int = 2
    rollback_lr: float = 0.5
    max_rollbacks: int = 3
    snapshot_every: int = 1

    def validate(self) -> None:
        if self.abort_streak < 1 or self.window < 1 or self.rollback_after < 1 or self.snapshot_every < 1:
            raise PonderError("health.abort_streak, window, rollback_after and snapshot_every must be >= 1")
        if self.ramp_shape not in RAMP_SHAPES:
            raise PonderError(f"health.ramp_shape must be one of {', '.join(RAMP_SHAPES)}, got {self.ramp_shape!r}")
        for name in ("lr_backoff", "rollback_lr", "recovery", "ema_beta"):
            if not 0 < getattr(self, name) <= 1:
                raise PonderError(f"health.{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0 < self.aux_cap <= 1:
            raise PonderError(f"health.aux_cap must be in (0, 1], got {self.aux_cap}")
        if not self.norm_warn <= self.norm_critical <= self.norm_kill:
            raise PonderError("health.norm_warn <= norm_critical <= norm_kill is required")
        parse_ramp(self.ramp)


KNOBS = ("halt_weight", "adapter_scale", "adapter_reg")
LOSS_KNOBS = ("halt_weight", "adapter_reg")  # the weights of auxiliary loss terms


def parse_ramp(text: str) -> dict[str, tuple[float, float]]:
    """"halt_weight:0.1:0.5,adapter_scale:0:1" -> {knob: (base, target)}; bad text is a PonderError."""
    out: dict[str, tuple[float, float]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            name, base, target = part.split(":")
            out_value = (float(base), float(target))
        except ValueError:
            raise PonderError(f"health.ramp entry {part!r} is not knob:base:target") from None
        if name not in KNOBS:
            raise PonderError(f"health.ramp knob {name!r} unknown; valid: {', '.join(KNOBS)}")
        out[name] = out_value
    return out
