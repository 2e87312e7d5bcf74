"""The stability controller: one callback that acts on the monitors' events, with stated reasons.

At the end of every window of `health.window` steps it reads the HealthMonitor's per-step
events and decides, in this order (REFERENCE section 4, "meta-escalation"):

1. rollback: an adapter delta norm at the kill level, or `rollback_after` consecutive windows of
   hard failure (>= hard_nan non-finite steps, or an accuracy-EMA fall beyond rollback_drop: a
   divergence) restore the last good snapshot (weights, optimizer, EMA; taken after clean
   windows in RUN_DIR/health/) and limit the LR to rollback_lr x the LR that failed (the highest
   used since that snapshot, or an earlier rollback's safe level where lower). That safe level
   is remembered: later give-backs stop there, and a backoff while running at it lowers it. The monitors' running means restart from the restored weights once
   the carry has refilled (halt.max_steps steps), and no snapshot is taken before the accuracy
   has been judged again for a whole window. The step counter, data stream and log go on:
   the run is never lost. After max_rollbacks the run stops with an emergency checkpoint and a
   one-line error.
2. LR backoff: gradient explosions, attention collapses, a critical adapter norm or (with
   backoff_on_acc_drop, an accuracy collapse) an accuracy-EMA drop beyond acc_drop limit the LR
   to lr_backoff x the LR in use (once per cooldown_windows; a drop smaller than the last
   window's is a recovery under way and backs off nothing, and so does a critical adapter norm no
   higher than one already answered: the per-sample norm does not fall with the LR). The limit is an absolute LR, not a
   multiplier of the schedule: a schedule that decays below it is followed. Clean windows give
   it back gradually (restore_windows clean windows undo one backoff) and it is lifted once it
   reaches the scheduled LR, so a run in which nothing more goes wrong ends on its schedule.
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

from ponder.core.errors import PonderError
from ponder.health.config import TrainingHealthConfig, parse_ramp
from ponder.health.events import Action, ActionKind, Cause
from ponder.health.monitors import HealthMonitor
from ponder.training.checkpoint import atomic_write_bytes

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
        self.aux_mult = 1.0
        # LR limits, as base LRs (a group's LR over its lr_scale): the limit in force (None = the
        # schedule's LR) and the level a rollback found safe (None = no rollback yet)
        self.lr_limit: float | None = None
        self.lr_safe: float | None = None
        self.sched_lr = self.used_lr = 0.0  # this step's scheduled and applied base LR
        self.cooldown = 0
        self.clean_windows = self.hard_windows = self.rollbacks = 0
        self.clean_since_snapshot = 0
        self.good_step: int | None = None
        self.peak_lr = 0.0  # the highest base LR used since the last good snapshot (or rollback)
        self.refill = 0  # steps after a rollback whose training accuracy is not judged (the carry refills)
        self.settle = 0  # steps after a rollback before a window may count as good again (snapshots)
        self.last_fall = 0.0  # the accuracy EMA's fall below its best at the end of the last window
        self.norm_backed = 0.0  # the highest critical adapter norm a backoff has answered
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
        if self.refill > 0:  # the carry is refilling after a rollback: its early answers are not judged
            self.refill -= 1
            self.monitor.restart_running_means()
        self.settle = max(0, self.settle - 1)
        groups = run.optimizer.param_groups
        self.sched_lr = groups[0]["lr"] / groups[0].get("lr_scale", 1.0)  # the loop has just set it
        mult = self.lr_mult
        if mult != 1.0:
            for g in groups:
                g["lr"] *= mult
        self.used_lr = self.sched_lr * mult
        self.peak_lr = max(self.peak_lr, self.used_lr)

    @property
    def lr_mult(self) -> float:
        """The applied LR over the scheduled one: the lower of the backoff limit and a rollback's
        safe level, where it is below the schedule; else 1."""
        caps = [x for x in (self.lr_limit, self.lr_safe) if x is not None]
        if not caps or self.sched_lr <= 0 or min(caps) >= self.sched_lr:
            return 1.0
        return min(caps) / self.sched_lr

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

        fall = max((best - ema for ema, best in drops), default=0.0)
        diverged = c.rollback_drop > 0 and fall > c.rollback_drop
        # a fall smaller than the last window's is a recovery under way: it holds the ramp but backs off
        # nothing more (else a run recovering at a good LR would be slowed down window after window)
        recovering = bool(drops) and drops[-1][1] - drops[-1][0] < self.last_fall
        if recovering:
            reasons[-1] += f" (recovering: {self.last_fall:.3f} below at the last window)"
        self.last_fall = drops[-1][1] - drops[-1][0] if drops else 0.0
        hard = nonfinite >= c.hard_nan or level == "kill" or diverged
        self.hard_windows = self.hard_windows + 1 if hard else 0
        self.cooldown = max(0, self.cooldown - 1)
        acted = False
        if level == "kill" or self.hard_windows >= c.rollback_after:
            acted = self._rollback(step, causes + [Cause.REPEATED_FAILURE], "; ".join(reasons))
        # a critical adapter norm no higher than one already answered backs off nothing more: the
        # per-sample norm does not fall with the LR (the clamp and the regulariser hold it)
        norm_new = level in ("critical", "kill") and norm_max > self.norm_backed
        backoff = (explosions or collapses or norm_new
                   or (drops and c.backoff_on_acc_drop and not recovering))
        if not acted and backoff and self.cooldown == 0:
            self.lr_limit = c.lr_backoff * self.used_lr
            if norm_new:
                self.norm_backed = norm_max
            if self.lr_safe is not None:  # trouble at a rollback's safe level: it was not safe
                self.lr_safe, self.lr_limit = min(self.lr_safe, self.lr_limit), None
            self.cooldown = c.cooldown_windows
            acted = True
            self._act(step, ActionKind.LR_BACKOFF, causes, "; ".join(reasons), lr_limit=self.lr_limit,
                      lr_safe=self.lr_safe, lr_mult=self.lr_mult, cooldown_windows=c.cooldown_windows)

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
        self.run.log.write({"step": step, "kind": "controller", "lr_mult": self.lr_mult, "lr_limit": self.lr_limit,
                            "lr_safe": self.lr_safe, "aux_mult": self.aux_mult, "mode": self.mode,
                            **{f"ramp_{k}": v for k, v in self.values.items()}})

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
        if self.lr_limit is not None and self.cooldown == 0:
            self._give_back(step)
        if self.settle > 0:  # after a rollback, no snapshot until the accuracy has been judged a full window
            return
        self.clean_since_snapshot += 1
        if self.clean_since_snapshot >= c.snapshot_every:
            self._snapshot(step)
            self.clean_since_snapshot = 0

    def _give_back(self, step: int) -> None:
        """One clean window's share of the LR back: the backoff limit rises by
        (1/lr_backoff)^(1/restore_windows) and is lifted once it reaches the scheduled LR or a
        rollback's safe level (which stays)."""
        c = self.cfg
        # (1 + 1e-9): restore_windows rises of a rounded factor land a hair below the level they undo
        raised = self.lr_limit * (1 / c.lr_backoff) ** (1 / c.restore_windows) * (1 + 1e-9)
        if raised >= self.sched_lr or (self.lr_safe is not None and raised >= self.lr_safe):
            self.lr_limit = None
            reason = ("a clean window after a backoff; the LR is back on its schedule" if self.lr_mult == 1.0 else
                      "a clean window after a backoff; the LR is back at the level a rollback found safe")
        else:
            self.lr_limit = raised
            reason = "a clean window after a backoff"
        self._act(step, ActionKind.LR_RESTORE, [Cause.CLEAN_WINDOW], reason, lr_limit=self.lr_limit,
                  lr_mult=self.lr_mult)

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
        self.good_step, self.peak_lr = step, 0.0
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
        # the LR that failed: the highest used since the good snapshot (a backoff since may have lowered
        # it), or an earlier rollback's safe level where that is lower (it failed too)
        failed = self.peak_lr if self.lr_safe is None else min(self.peak_lr, self.lr_safe)
        self.lr_safe, self.peak_lr = c.rollback_lr * failed, 0.0
        self.lr_limit = None  # the safe level is the limit now
        self.cooldown = c.cooldown_windows
        # the running means restart from the restored weights once the carry has refilled (its slots
        # restart at their first ACT step, whose answers are worse than the mix the best was taken
        # on): for halt.max_steps steps they are cleared. The best stays: the restored weights reached it.
        self.refill = self.run.cfg.halt.max_steps
        # a window is "clean" only once the accuracy is judged again: refill, the EMA's warm-up
        # (1 / (1 - ema_beta) steps) and a whole judged window; till then no snapshot is taken
        self.settle = self.refill + round(1 / (1 - c.ema_beta)) + c.window
        self.last_fall = 0.0  # a fall after the restore is new trouble, not a recovery
        self._act(step, ActionKind.ROLLBACK, causes, reason, to_step=int(snap["step"]), lr_safe=self.lr_safe,
                  lr_mult=self.lr_mult, rollbacks=self.rollbacks)
        return True

    # ------------------------------------------------------------------ resume

    def state_dict(self) -> dict:
        return {"values": dict(self.values), "mode": self.mode, "lr_limit": self.lr_limit, "lr_safe": self.lr_safe,
                "peak_lr": self.peak_lr, "refill": self.refill, "settle": self.settle,
                "last_fall": self.last_fall, "norm_backed": self.norm_backed, "aux_mult": self.aux_mult,
                "cooldown": self.cooldown, "clean_windows": self.clean_windows, "hard_windows": self.hard_windows,
                "rollbacks": self.rollbacks, "clean_since_snapshot": self.clean_since_snapshot,
                "good_step": self.good_step, "actions": [a.to_record() for a in self.actions]}

    def load_state_dict(self, s: dict) -> None:
        for k in ("mode", "aux_mult", "cooldown", "clean_windows", "hard_windows", "rollbacks",
                  "clean_since_snapshot", "good_step"):
            setattr(self, k, s[k])
        if "lr_limit" not in s and s.get("lr_mult", 1.0) != 1.0:
            raise PonderError("this checkpoint's stability-controller state holds an LR multiplier from before "
                              "LR limits; resume it with the ponder version that wrote it")
        self.lr_limit, self.lr_safe, self.peak_lr = s.get("lr_limit"), s.get("lr_safe"), s.get("peak_lr", 0.0)
        self.refill, self.settle, self.last_fall = s.get("refill", 0), s.get("settle", 0), s.get("last_fall", 0.0)
        self.norm_backed = s.get("norm_backed", 0.0)
        self.values = dict(s["values"])
        self.actions = [Action.from_record(r) if "action" in r else
                        Action.from_record({**r, "action": r["kind"]}) for r in s["actions"]]
