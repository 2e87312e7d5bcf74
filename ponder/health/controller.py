"""The stability controller: one callback that acts on the monitors' events, with stated reasons.

At the end of every window of `health.window` steps it reads the HealthMonitor's per-step
events and decides, in this order (REFERENCE section 4, "meta-escalation"):

1. rollback: an adapter delta norm at the kill level, or `rollback_after` consecutive windows of
   hard failure (>= hard_nan non-finite steps) restore the last good snapshot (weights,
   optimizer, EMA; taken after clean windows in RUN_DIR/health/) and multiply the LR by
   rollback_lr. The step counter, data stream and log go on: the run is never lost. After
   max_rollbacks the run stops with an emergency checkpoint and a one-line error.
2. LR backoff: gradient explosions, attention collapses, a critical adapter norm or (with
   backoff_on_acc_drop, an accuracy collapse) an accuracy-EMA drop beyond acc_drop multiply the
   LR by lr_backoff (once per cooldown_windows); clean windows restore it gradually
   (restore_windows clean windows undo one backoff).
3. gate: any NaN step, explosion, loss spike, collapse, critical norm, accuracy-EMA drop beyond
   acc_drop, backoff or rollback in the window pauses the auxiliary-weight ramp: the weights
   are held, not lowered.
4. recovery: the first clean window after a pause resumes; the held weights then close
   `recovery` of the gap to the schedule per clean window until they track it again.
5. aux cap: if the auxiliary terms made more than aux_cap of the total loss, the auxiliary loss
   weights are scaled down to meet the cap.

The knobs it turns are declared by the parts that own them (`model.knobs()`: the halting
head's loss weight, the adapter's scale and regulariser weight), never reached through
attributes. Every decision is a typed `Action(step, kind, causes, reason, detail)`
(ponder.health.events), written to the metrics log as a record of kind "action" and listed in
the health report. The ramp itself runs per step: base -> target over ramp_steps, linear or
cosine. All state is in `state_dict` (exact resume).
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ponder.checkpoint import atomic_write_bytes
from ponder.errors import PonderError
from ponder.health.config import TrainingHealthConfig, parse_ramp
from ponder.health.events import Action, ActionKind, Cause
from ponder.health.monitors import HealthMonitor

SNAPSHOTS = "health"
KEEP_SNAPSHOTS = 2


def ramp_value(step: int, base: float, target: float, steps: int, shape: str) -> float:
    """Scheduled weight at `step`: base -> target over `steps`, linear or cosine (then target)."""
    p = 1.0 if steps <= 0 else min(1.0, step / steps)
    if shape == "cosine":
        p = 0.5 * (1 - math.cos(math.pi * p))
    return base + (target - base) * p


class StabilityController:
    """Training callback (after the HealthMonitor it reads).

    Args:
        cfg: policy (config section `health`).
        monitor: the run's HealthMonitor.
    """

    def __init__(self, cfg: TrainingHealthConfig, monitor: HealthMonitor):
        cfg.validate()
        self.cfg, self.monitor = cfg, monitor
        self.ramp = parse_ramp(cfg.ramp)
        self.values: dict[str, float] = {k: base for k, (base, _) in self.ramp.items()}
        self.mode = "track"  # track | paused | recovering
        self.lr_mult, self.aux_mult = 1.0, 1.0
        self.cooldown = 0
        self.clean_windows = self.hard_windows = self.rollbacks = 0
        self.clean_since_snapshot = 0
        self.good_step: int | None = None
        self.actions: list[Action] = []

    # ------------------------------------------------------------------ knobs

    def on_train_start(self, run) -> None:
        self.run = run
        self.knobs = run.model.knobs()
        missing = [k for k in self.ramp if k not in self.knobs]
        if missing:
            raise PonderError(f"health.ramp names {', '.join(missing)}, which this model does not have; it has "
                              f"{', '.join(sorted(self.knobs)) or 'none'} (adapter knobs need model.adapter_rank > 0)")
        # the unramped value of every auxiliary loss weight (the aux cap scales them)
        self.orig = {k: knob.get() for k, knob in self.knobs.items() if knob.loss_weight}

    def _apply(self, step: int) -> None:
        if self.mode == "track":
            for k, (base, target) in self.ramp.items():
                self.values[k] = ramp_value(step, base, target, self.cfg.ramp_steps, self.cfg.ramp_shape)
        for k in set(self.ramp) | set(self.orig):
            knob = self.knobs[k]
            v = self.values.get(k, self.orig.get(k))
            knob.set(v * self.aux_mult if knob.loss_weight else v)

    def on_step_start(self, run, step: int) -> None:
        self._apply(step)
        if self.lr_mult != 1.0:
            for g in run.optimizer.param_groups:
                g["lr"] *= self.lr_mult

    # ------------------------------------------------------------------ decisions

    def _act(self, step: int, kind: ActionKind, causes: list[Cause], reason: str, **detail: Any) -> None:
        a = Action(step, kind, tuple(dict.fromkeys(causes)), reason, detail)
        self.actions.append(a)
        self.run.log.write(a.to_record())
        if self.run.shard.main:
            tqdm.write(f"controller at step {step}: {a.kind.value}: {a.reason}")

    def on_step_end(self, run, m: dict) -> None:
        step = m["step"]
        if step % self.cfg.window:
            return
        # under several processes every rank must decide alike: rank 0's events (its share of the
        # batch's tensors; the losses and norms in them are already the global batch's) decide
        events = run.shard.broadcast(self.monitor.take_events())
        c = self.cfg
        nonfinite = sum(1 for e in events if e.nonfinite)
        streak = max((e.streak for e in events), default=0)
        explosions = [e.explosion for e in events if e.explosion is not None]
        spikes = [e.spike for e in events if e.spike is not None]
        collapses = sorted({name for e in events for name in e.collapsed})
        norms = [(e.norm_level, e.norm_max) for e in events if e.norm_level != "ok"]
        level = max((lvl for lvl, _ in norms), key=("warn", "critical", "kill").index, default="ok")
        norm_max = max((v for _, v in norms), default=0.0)
        drops = [e.acc_drop for e in events if e.acc_drop is not None]
        shares = [e.aux_share for e in events if e.aux_share is not None]

        reasons: list[str] = []
        causes: list[Cause] = []
        if nonfinite:
            reasons.append(f"{nonfinite} non-finite steps (longest streak {streak})")
            causes.append(Cause.NONFINITE)
        if explosions:
            reasons.append(f"{len(explosions)} gradient explosions (max pre-clip norm {max(explosions):.3g})")
            causes.append(Cause.EXPLOSION)
        if spikes:
            loss, mean = max(spikes)
            reasons.append(f"{len(spikes)} loss spikes (loss {loss:.3g} vs running mean {mean:.3g})")
            causes.append(Cause.SPIKE)
        if collapses:
            reasons.append("attention collapse in " + ", ".join(collapses))
            causes.append(Cause.ATTENTION_COLLAPSE)
        if level in ("critical", "kill"):  # "warn" is logged by the monitor, not acted on
            reasons.append(f"adapter delta norm {norm_max:.3g} at {level} level (clamp {self.monitor.max_norm:g})")
            causes.append(Cause.ADAPTER_NORM)
        if drops:
            ema, best = drops[-1]
            reasons.append(f"accuracy EMA {ema:.3f} is {best - ema:.3f} below its best {best:.3f}")
            causes.append(Cause.ACCURACY_DROP)

        hard = nonfinite >= c.hard_nan or level == "kill"
        self.hard_windows = self.hard_windows + 1 if hard else 0
        self.cooldown = max(0, self.cooldown - 1)
        acted = False
        if level == "kill" or self.hard_windows >= c.rollback_after:
            acted = self._rollback(step, causes + [Cause.REPEATED_FAILURE], "; ".join(reasons))
        backoff = explosions or collapses or level in ("critical", "kill") or (drops and c.backoff_on_acc_drop)
        if not acted and backoff and self.cooldown == 0:
            self.lr_mult *= c.lr_backoff
            self.cooldown = c.cooldown_windows
            acted = True
            self._act(step, ActionKind.LR_BACKOFF, causes, "; ".join(reasons), lr_mult=self.lr_mult,
                      cooldown_windows=c.cooldown_windows)

        if reasons or acted:
            self.clean_windows = self.clean_since_snapshot = 0
            self.mode = "paused"
            self._act(step, ActionKind.PAUSE, causes, "; ".join(reasons) or "a backoff this window",
                      held=dict(self.values))
        else:
            self._clean_window(step)
        if shares:
            share = sum(shares) / len(shares)
            if share > c.aux_cap and self.orig:
                factor = c.aux_cap * (1 - share) / ((1 - c.aux_cap) * share)
                self.aux_mult *= factor
                self._act(step, ActionKind.AUX_CAP, [Cause.AUX_SHARE],
                          f"auxiliary terms were {share:.1%} of the loss (cap {c.aux_cap:.0%})", aux_mult=self.aux_mult)
        self.run.log.write({"step": step, "kind": "controller", "lr_mult": self.lr_mult, "aux_mult": self.aux_mult,
                        "mode": self.mode, **{f"ramp_{k}": v for k, v in self.values.items()}})

    def _clean_window(self, step: int) -> None:
        c = self.cfg
        self.clean_windows += 1
        if self.mode == "paused":
            self.mode = "recovering" if self.ramp else "track"
            self._act(step, ActionKind.RESUME, [Cause.CLEAN_WINDOW], "a clean window after a pause",
                      values=dict(self.values))
        elif self.mode == "recovering":
            done = True
            for k, (base, target) in self.ramp.items():
                sched = ramp_value(step, base, target, c.ramp_steps, c.ramp_shape)
                self.values[k] += c.recovery * (sched - self.values[k])
                done &= abs(sched - self.values[k]) <= 0.01 * max(abs(target - base), 1e-12)
            if done:
                self.mode = "track"
            self._act(step, ActionKind.RECOVER, [Cause.CLEAN_WINDOW], f"closing {c.recovery:.0%} of the gap to the "
                      f"schedule" + ("; back on schedule" if done else ""), values=dict(self.values))
        if self.lr_mult < 1.0 and self.cooldown == 0:
            self.lr_mult = min(1.0, self.lr_mult * (1 / c.lr_backoff) ** (1 / c.restore_windows))
            self._act(step, ActionKind.LR_RESTORE, [Cause.CLEAN_WINDOW], "a clean window after a backoff",
                      lr_mult=self.lr_mult)
        self.clean_since_snapshot += 1
        if self.clean_since_snapshot >= c.snapshot_every:
            self._snapshot(step)
            self.clean_since_snapshot = 0

    # ------------------------------------------------------------------ snapshots and rollback

    def _snapshot_dir(self) -> Path:
        """Each process keeps its own snapshots (they are equal; no rank waits on another's file)."""
        shard = self.run.shard
        return Path(self.run.run_dir) / SNAPSHOTS / (f"rank{shard.rank}" if shard.rank else "")

    def _snapshot(self, step: int) -> None:
        ema = self.run.ema
        buf = io.BytesIO()
        torch.save({"step": step, "model": self.run.model.state_dict(),
                    "optimizer": self.run.optimizer.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None}, buf)
        atomic_write_bytes(self._snapshot_dir() / f"good-step-{step:07d}.pt", buf.getvalue())
        self.good_step = step
        for old in sorted(self._snapshot_dir().glob("good-step-*.pt"))[:-KEEP_SNAPSHOTS]:
            old.unlink(missing_ok=True)

    def _rollback(self, step: int, causes: list[Cause], reason: str) -> bool:
        c = self.cfg
        if self.rollbacks >= c.max_rollbacks:
            self.run.save_checkpoint(step)
            self._act(step, ActionKind.ABORT, causes, f"{reason}; {self.rollbacks} rollbacks did not help")
            raise PonderError(f"training stopped at step {step} after {self.rollbacks} rollbacks ({reason}); "
                              f"emergency checkpoint in {self.run.run_dir}/checkpoints")
        files = sorted(self._snapshot_dir().glob("good-step-*.pt"))
        wanted = self._snapshot_dir() / f"good-step-{self.good_step or 0:07d}.pt"
        path = wanted if wanted.exists() else (files[-1] if files else None)
        if path is None:
            return False  # nothing good yet: fall through to an LR backoff
        snap = torch.load(path, map_location="cpu", weights_only=True)
        self.run.model.load_state_dict(snap["model"])
        self.run.optimizer.load_state_dict(snap["optimizer"])
        if self.run.ema is not None and snap["ema"] is not None:
            self.run.ema.load_state_dict(snap["ema"])
        self.run.objective.commit(False)  # latents computed by the bad weights are dropped
        self.rollbacks += 1
        self.hard_windows = 0
        self.lr_mult *= c.rollback_lr
        self.cooldown = c.cooldown_windows
        self._act(step, ActionKind.ROLLBACK, causes, reason, to_step=int(snap["step"]), lr_mult=self.lr_mult,
                  rollbacks=self.rollbacks)
        return True

    # ------------------------------------------------------------------ resume

    def state_dict(self) -> dict:
        return {"values": dict(self.values), "mode": self.mode, "lr_mult": self.lr_mult, "aux_mult": self.aux_mult,
                "cooldown": self.cooldown, "clean_windows": self.clean_windows, "hard_windows": self.hard_windows,
                "rollbacks": self.rollbacks, "clean_since_snapshot": self.clean_since_snapshot,
                "good_step": self.good_step, "actions": [a.to_record() for a in self.actions]}

    def load_state_dict(self, s: dict) -> None:
        for k in ("mode", "lr_mult", "aux_mult", "cooldown", "clean_windows", "hard_windows", "rollbacks",
                  "clean_since_snapshot", "good_step"):
            setattr(self, k, s[k])
        self.values = dict(s["values"])
        self.actions = [Action.from_record(r) if "action" in r else
                        Action.from_record({**r, "action": r["kind"]}) for r in s["actions"]]
