"""Settings of the health wing: the training-health monitors and the stability controller
(config section `health`) and the halting-health verdicts (config section `halting_health`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ponder.core.errors import PonderError
from ponder.core.settings import check, setting

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
        spike_fail_ratio, spike_fail_share: the report's "no loss spikes" check fails on a spike of
            at least spike_fail_ratio x the running mean, or on spikes in more than spike_fail_share
            of the judged steps; rarer, smaller spikes are listed (step and size) but pass. Deep
            supervision's loss moves with the carry's refills, and healthy runs of the default
            presets show an isolated spike of a little over 2x.
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
        lr_backoff: on an explosion, collapse or critical norm the LR is limited to lr_backoff x
            the LR in use (an absolute limit: a decaying schedule that falls below it is no longer
            held down); cooldown_windows: windows before another backoff; restore_windows: clean
            windows to give back one backoff (the limit rises by (1/lr_backoff)^(1/restore_windows)
            per clean window and is lifted once it reaches the scheduled LR).
        backoff_on_acc_drop: an accuracy-EMA drop beyond acc_drop also backs off the LR (REFERENCE
            only pauses on it; on this project's tasks a too-high LR shows first as such a drop).
        aux_cap: most the auxiliary terms may make of the total loss (REFERENCE: 25%).
        hard_nan: non-finite steps in a window that make it a hard failure.
        rollback_drop: an accuracy-EMA fall of more than this below its best makes the window a
            hard failure, like hard_nan non-finite steps: the run has lost what it learned, which a
            lower LR alone does not bring back (0 = off).
        rollback_after: consecutive hard-failure windows before a rollback to the last good
            snapshot; rollback_lr: the LR after a rollback is rollback_lr x the LR that failed (the
            highest used since that snapshot, or an earlier rollback's safe level where lower), and
            the LR is never given back above that safe level (a schedule below it is followed; a
            later backoff lowers it); max_rollbacks: then abort.
        snapshot_every: clean windows between good-state snapshots (RUN_DIR/health/).
    """

    monitors: bool = True
    abort_streak: int = setting(50, ge=1)
    explode_factor: float = setting(10.0, gt=0)
    spike_ratio: float = setting(2.0, gt=1)
    spike_warmup: int = setting(20, ge=0)
    spike_fail_ratio: float = setting(4.0, gt=1)
    spike_fail_share: float = setting(0.01, ge=0, le=1)
    ema_beta: float = setting(0.9, gt=0, lt=1)
    attention_every: int = setting(10, ge=0)
    attention_samples: int = setting(4, ge=1)
    attention_floor: float = setting(1.5, gt=0)
    logit_limit: float = setting(50.0, gt=0)
    halt_var_floor: float = setting(0.5, ge=0)
    acc_drop: float = setting(0.05, gt=0, le=1)
    norm_warn: float = setting(1.5, gt=0)
    norm_critical: float = setting(3.0, gt=0)
    norm_kill: float = setting(10.0, gt=0)
    activation_norms: str = ""
    controller: bool = False
    window: int = setting(10, ge=1)
    ramp: str = ""
    ramp_steps: int = setting(0, ge=0)
    ramp_shape: str = setting("linear", choices=RAMP_SHAPES)
    recovery: float = setting(0.05, gt=0, le=1)
    lr_backoff: float = setting(0.5, gt=0, le=1)
    cooldown_windows: int = setting(2, ge=0)
    restore_windows: int = setting(4, ge=1)
    backoff_on_acc_drop: bool = True
    aux_cap: float = setting(0.25, gt=0, le=1)
    hard_nan: int = setting(3, ge=1)
    rollback_drop: float = setting(0.15, ge=0, le=1)
    rollback_after: int = setting(2, ge=1)
    rollback_lr: float = setting(0.5, gt=0, le=1)
    max_rollbacks: int = setting(3, ge=0)
    snapshot_every: int = setting(1, ge=1)

    def inactive(self) -> dict[str, str]:
        """Settings that do nothing under the current values."""
        out: dict[str, str] = {}
        if not (self.monitors or self.controller):
            out.update({k: "health.monitors and health.controller are off" for k in (
                "abort_streak", "explode_factor", "spike_ratio", "spike_warmup", "spike_fail_ratio", "spike_fail_share",
                "ema_beta", "attention_every",
                "attention_samples", "attention_floor", "logit_limit", "halt_var_floor", "acc_drop", "norm_warn",
                "norm_critical", "norm_kill", "activation_norms")})
        if not self.controller:
            out.update({k: "the stability controller is off (health.controller=false)" for k in (
                "window", "ramp", "ramp_steps", "ramp_shape", "recovery", "lr_backoff", "cooldown_windows",
                "restore_windows", "backoff_on_acc_drop", "aux_cap", "hard_nan", "rollback_drop", "rollback_after",
                "rollback_lr", "max_rollbacks", "snapshot_every")})
        elif not self.ramp:
            out.update({k: "no weights are ramped (health.ramp is empty)" for k in ("ramp_steps", "ramp_shape",
                                                                                     "recovery")})
        return out

    def validate(self) -> None:
        check(self, "health")
        if not self.norm_warn <= self.norm_critical <= self.norm_kill:
            raise PonderError("health.norm_warn <= norm_critical <= norm_kill is required")
        parse_ramp(self.ramp)


@dataclass(kw_only=True)
class HaltingHealthConfig:
    """Thresholds of the halting-health verdicts (ponder.health.halting; config section
    `halting_health`).

    Attributes:
        drift_window: trailing train records checked for drift, besides the whole run (a drift
            can start after a healthy rise, and a slow one only shows over the whole run). The
            default covers 1000 steps at the default log_every of 50, the span of REFERENCE's case.
        drift_min_records: fewer train records than this (with both fields) are "no data": a
            rank correlation of 3-4 points is not evidence of a trend.
        drift_logit_rho: Spearman(halt logit, step) at or below this is a "mostly decreasing"
            logit: -0.8 still allows a few noisy reversals between log records.
        drift_min_logit_fall: the logit must also fall by at least this much (first to last
            record of the window). One logit unit divides the odds of halting by e (~2.7); batch
            means of the logit wobble by much less, and REFERENCE's case falls by 2.1.
        drift_steps_rho: Spearman(steps used, step) at or above this: steps mostly climbing.
        drift_min_steps_rise: relative rise of the steps used (0.25 = +25%, first to last record);
            REFERENCE's case goes 4 -> 12 (+200%); exploration noise moves it by a few percent.
        collapse_frac: "nearly all" samples: the fraction at step 1 (or at M) that counts as
            collapse. 0.95 leaves room for exploration and a few odd inputs.
        solved_exact: exact accuracy at which samples that all stop at one step count as
            "right": below 0.9 more than one sample in ten is wrong, which further steps might fix.
        never_halts_min_exact: running every sample to M is a collapse only once at least this
            share is solved: before anything is right there is nothing to stop on (a fresh or
            short run: Q-halt starts at "go on", and stopping early would only stop wrong answers).
        agnostic_window: trailing train records whose `halt_logit_std` is averaged.
        agnostic_logit_std: spread of halt logits across the batch below which the head treats
            every input alike: sigmoid's slope is at most 1/4, so a spread of 0.05 moves the halt
            probability by at most ~1.25 percentage points between inputs.
        agnostic_min_abs_rho: |Spearman(steps, difficulty)| below this means the steps do not
            follow difficulty; 0.1 is the conventional floor of a "small" correlation.
        q_window: trailing train records whose `q_halt_acc` is averaged.
        q_halt_acc_min: the probe's per-step accuracy (halt prediction == answer exactly right)
            below this is miscalibrated: 0.8 is well above the majority-class rate once right and
            wrong answers mix, and early on (all wrong, probe says "go on") it is near 1.
        wrong_halt_frac_max: of the samples the head stops before M, the fraction answered
            wrongly above this flags premature halting: a Q-halt head stops only when it believes
            the answer is right, so more than one wrong stop in five means that belief is poor.
        eval_prefix: which split of the eval records is judged ("test" or "train").
    """

    drift_window: int = setting(20, ge=1)
    drift_min_records: int = setting(5, ge=3)
    drift_logit_rho: float = setting(-0.8, ge=-1, le=1)
    drift_min_logit_fall: float = setting(1.0, ge=0)
    drift_steps_rho: float = setting(0.5, ge=-1, le=1)
    drift_min_steps_rise: float = setting(0.25, ge=0)
    collapse_frac: float = setting(0.95, gt=0, le=1)
    never_halts_min_exact: float = setting(0.05, ge=0, le=1)
    solved_exact: float = setting(0.9, ge=0, le=1)
    agnostic_window: int = setting(5, ge=1)
    agnostic_logit_std: float = setting(0.05, ge=0)
    agnostic_min_abs_rho: float = setting(0.1, ge=0, le=1)
    q_window: int = setting(5, ge=1)
    q_halt_acc_min: float = setting(0.8, ge=0, le=1)
    wrong_halt_frac_max: float = setting(0.2, ge=0, le=1)
    eval_prefix: str = setting("test", choices=("test", "train"))

    def validate(self) -> None:
        check(self, "halting_health")


# every knob a component may declare (RecursiveReasoner.knobs): checked when the config is read;
# the controller checks that the built model has the ones a ramp names
KNOBS = ("halt_weight", "adapter_scale", "adapter_reg")


def parse_ramp(text: str) -> dict[str, tuple[float, float]]:
    """"halt_weight:0.1:0.5,adapter_scale:0:1" -> {knob: (base, target)}; bad text is a PonderError."""
    out: dict[str, tuple[float, float]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            name, base, target = part.split(":")
            out_value = (float(base), float(target))
            if not all(math.isfinite(v) for v in out_value):
                raise ValueError
        except ValueError:
            raise PonderError(f"health.ramp entry {part!r} is not knob:base:target with finite numbers") from None
        if name not in KNOBS:
            raise PonderError(f"health.ramp knob {name!r} unknown; valid: {', '.join(KNOBS)}")
        out[name] = out_value
    return out
