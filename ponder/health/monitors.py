"""Training-health monitors: one callback watching the failure modes of REFERENCE section 4.

Per step (cheap scalars the loop already has, or one reduction):
- non-finite loss or gradient: the loop skips and counts the step; here the streak is tracked and
  `abort_streak` in a row stop the run with an emergency checkpoint and a one-line PonderError;
- gradient-norm explosion: the PRE-clip norm above explode_factor x grad_clip;
- loss spikes: loss above spike_ratio x its running mean (after spike_warmup steps);
- logit magnitude: max |token logit| from a forward hook on the readout (before any soft clamp);
- halt-logit variance across the batch (saturation: below halt_var_floor);
- per-sample norms: the adapter's dW before its clamp (mean, max, p90, clamp hit-rate; governor
  levels warn / critical / kill) and the outputs of any named modules;
- accuracy EMA (training-batch cell accuracy) against its best so far.
Every `attention_every` steps: attention statistics per attention layer. SDPA returns no
weights, so a pre-hook keeps the input of the last call for `attention_samples` rows and the
weights are recomputed from it (mean max-attention, entropy; collapse = max near uniform 1/n).

Figures go to the metrics log as records of kind "health" every `train.log_every` steps (per
layer and per module figures nested under "attention" and "activations"); the per-step
`StepEvent`s are queued for the stability controller (`take_events`).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ponder.core.autocast import fp32_region
from ponder.core.errors import PonderError
from ponder.health.config import TrainingHealthConfig
from ponder.health.events import StepEvent
from ponder.health.report import write_health_report
from ponder.models.attention import Attention, split_heads

LEVELS = ("ok", "warn", "critical", "kill")
COUNTS = ("nonfinite", "explosions", "spikes", "attention_collapses", "acc_drops", "norm_warn")
WHERE_KEPT = 5  # occurrences per window whose step and size are logged
PEAKS = {"grad_norm": "grad_norm_max", "logit_absmax": "logit_absmax", "nonfinite_streak": "nonfinite_streak_max",
         "adapter_norm_max": "adapter_norm_max"}


@torch.no_grad()
def attention_stats(attn: Attention, x: torch.Tensor) -> tuple[float, float]:
    """Mean max-attention and mean entropy (nats) of `attn` on input x (b, n, d), over rows,
    heads and queries. Uniform attention gives 1/n and log(n)."""
    with fp32_region(x):  # the statistics are judged at fp32 resolution, whatever the run's precision
        q, k, _ = split_heads(attn.qkv(x.float()), attn.n_heads, attn.rotary)  # (b, h, n, hd)
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # (b, h, n, n)
    entropy = -(p * p.clamp(min=1e-30).log()).sum(-1)  # (b, h, n)
    return float(p.amax(-1).mean()), float(entropy.mean())


class _Window:
    """Sums, maxima and counts of per-step figures between two health records."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.maxs: dict[str, float] = {}

    def add(self, key: str, value: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value
        self.counts[key] = self.counts.get(key, 0) + 1
        self.maxs[key] = max(self.maxs.get(key, -math.inf), value)

    def mean(self, key: str) -> float:
        return self.sums[key] / self.counts[key]

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "counts": dict(self.counts), "maxs": dict(self.maxs)}

    def load_state_dict(self, s: dict) -> None:
        self.sums, self.counts, self.maxs = dict(s["sums"]), dict(s["counts"]), dict(s["maxs"])


class _Windows:
    """One `_Window` of the run-wide figures and one per named part (attention layer, module)."""

    def __init__(self):
        self.run = _Window()
        self.attention: dict[str, _Window] = {}
        self.activations: dict[str, _Window] = {}
        self.where: dict[str, list] = {}  # count name -> [step, size] of each occurrence (first WHERE_KEPT)

    def note(self, count: str, step: int, size: float | None = None) -> None:
        """Where (and how large) an occurrence of a counted event was, for the health report."""
        seen = self.where.setdefault(count, [])
        if len(seen) < WHERE_KEPT:
            seen.append([step, None if size is None else round(float(size), 4)])

    def part(self, group: str, name: str) -> _Window:
        return getattr(self, group).setdefault(name, _Window())

    def state_dict(self) -> dict:
        return {"run": self.run.state_dict(), "where": {k: list(v) for k, v in self.where.items()},
                **{g: {k: w.state_dict() for k, w in getattr(self, g).items()} for g in ("attention", "activations")}}

    def load_state_dict(self, s: dict) -> None:
        if "run" not in s:  # saved before the per-part windows: one flat window
            self.run.load_state_dict(s)
            return
        self.run.load_state_dict(s["run"])
        self.where = {k: [list(x) for x in v] for k, v in s.get("where", {}).items()}
        for g in ("attention", "activations"):
            for k, ws in s.get(g, {}).items():
                self.part(g, k).load_state_dict(ws)


def _percentile(values: torch.Tensor, q: float) -> float:
    return float(np.percentile(values.float().cpu().numpy(), q)) if values.numel() else float("nan")


class HealthMonitor:
    """The monitors as one training callback (config section `health`).

    Args:
        cfg: thresholds.
        log_every: steps between "health" records (the loop's train.log_every).
        grad_clip: the loop's clip norm (0 = off).
    """

    def __init__(self, cfg: TrainingHealthConfig, *, log_every: int, grad_clip: float):
        cfg.validate()
        self.cfg, self.log_every, self.grad_clip = cfg, max(1, log_every or 1), grad_clip
        self.window = _Windows()
        self.streak = 0
        self.loss_ema: float | None = None
        self.grad_ema: float | None = None
        self.acc_ema: float | None = None
        self.acc_best: float | None = None
        self.acc_steps = 0
        self.events: list[StepEvent] = []  # per-step events not yet taken by the controller
        self._hooks: list[Any] = []
        self._armed = False
        self._attn_armed = False
        self._attn_inputs: dict[str, torch.Tensor] = {}
        self._logit_max: torch.Tensor | None = None
        self._act: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ hooks

    def on_train_start(self, run) -> None:
        model = run.model
        self.run_dir, self.log = run.run_dir, run.log
        self.max_norm = model.cfg.adapter_max_norm
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self.attention = {name: m for name, m in model.named_modules() if isinstance(m, Attention)}
        if self.cfg.attention_every > 0:
            for name, m in self.attention.items():
                self._hooks.append(m.register_forward_pre_hook(self._keep_input(name)))
        readout = getattr(model, "readout", None)
        if readout is not None:
            self._hooks.append(readout.register_forward_hook(self._keep_logits()))
        modules = dict(model.named_modules())
        for name in filter(None, (n.strip() for n in self.cfg.activation_norms.split(","))):
            if name not in modules:
                some = ", ".join(list(n for n in modules if n)[:8])
                raise PonderError(f"health.activation_norms: no module {name!r} in the model (e.g. {some})")
            self._hooks.append(modules[name].register_forward_hook(self._keep_activation(name)))

    def _keep_input(self, name: str):
        def hook(module, args):
            if self._attn_armed:
                # float32 copy: the input may be bf16 under autocast (the no-grad forwards)
                self._attn_inputs[name] = args[0][: self.cfg.attention_samples].detach().to(torch.float32, copy=True)
        return hook

    # Hooks are closures, not bound methods: deep-copying the model (the EMA evaluation copy)
    # then shares them instead of copying this monitor; they only act while a step is armed.
    def _keep_logits(self):
        def hook(module, args, out):
            if self._armed:
                m = out.detach().abs().amax()
                self._logit_max = m if self._logit_max is None else torch.maximum(self._logit_max, m)
        return hook

    def _keep_activation(self, name: str):
        def hook(module, args, out):
            if self._armed and torch.is_grad_enabled():
                self._act[name] = out.detach().flatten(1).norm(dim=1)  # (b,)
        return hook

    def step_tensors(self, run) -> dict:
        """The step's largest token logit, read with the loop's one host transfer of the step
        (it comes back in `on_step_end`'s metrics)."""
        return {} if self._logit_max is None else {"_logit_absmax": self._logit_max}

    def on_step_start(self, run, step: int) -> None:
        self._armed = True
        every = self.cfg.attention_every
        self._attn_armed = every > 0 and bool(self.attention) and (step + 1) % every == 0

    # ------------------------------------------------------------------ per step

    def _norm_level(self, value: float) -> str:
        c = self.cfg
        for level, mult in (("kill", c.norm_kill), ("critical", c.norm_critical), ("warn", c.norm_warn)):
            if value > mult * self.max_norm:
                return level
        return "ok"

    def on_step_end(self, run, m: dict) -> None:
        self._armed = self._attn_armed = False
        c, w, step = self.cfg, self.window.run, m["step"]
        ev = StepEvent(step=step)
        loss, gnorm = m.get("loss", math.nan), m.get("grad_norm", math.nan)
        if m.get("skipped"):
            self.streak += 1
            w.add("nonfinite", 1.0)
            self.window.note("nonfinite", step)
            ev.nonfinite = True
        else:
            self.streak = 0
            w.add("nonfinite", 0.0)
        w.add("nonfinite_streak", float(self.streak))
        ev.streak = self.streak
        if math.isfinite(gnorm):
            w.add("grad_norm", gnorm)
            limit = c.explode_factor * (self.grad_clip if self.grad_clip > 0 else (self.grad_ema or math.inf))
            exploded = gnorm > limit
            w.add("explosions", float(exploded))
            if exploded:
                ev.explosion = gnorm
                self.window.note("explosions", step, gnorm)
            self.grad_ema = gnorm if self.grad_ema is None else c.ema_beta * self.grad_ema + (1 - c.ema_beta) * gnorm
        if math.isfinite(loss) and not m.get("skipped"):
            spike = (self.loss_ema is not None and step > c.spike_warmup and loss > c.spike_ratio * self.loss_ema)
            w.add("spikes", float(spike))
            if spike:
                ev.spike = (loss, self.loss_ema)
                self.window.note("spikes", step, loss / self.loss_ema)
            else:  # a spike does not move the reference it is judged against
                self.loss_ema = loss if self.loss_ema is None else c.ema_beta * self.loss_ema + (1 - c.ema_beta) * loss
            lm = m.get("lm_loss")
            if lm is not None and loss > 0:
                share = max(0.0, (loss - lm) / loss)
                w.add("aux_share", share)
                ev.aux_share = share
        if "_logit_absmax" in m:
            w.add("logit_absmax", float(m["_logit_absmax"]))
        self._logit_max = None
        std = m.get("halt_logit_std")
        if std is not None and math.isfinite(std):
            w.add("halt_logit_var", std * std)
            w.add("halt_saturated", float(std * std < c.halt_var_floor))
        ctx = getattr(run.objective, "context", None)
        factors = None if ctx is None else ctx.adapter
        if factors is not None and not m.get("skipped"):
            norms = factors.norms
            nmax = float(norms.max())
            w.add("adapter_norm_mean", float(norms.mean()))
            w.add("adapter_norm_max", nmax)
            w.add("adapter_norm_p90", _percentile(norms, 90))
            w.add("adapter_clamp_rate", float(factors.hit_rate))
            level = self._norm_level(nmax)
            ev.norm_level, ev.norm_max = level, nmax
            w.add("norm_warn", float(level != "ok"))
        for name, norms in self._act.items():
            aw = self.window.part("activations", name)
            aw.add("mean", float(norms.mean()))
            aw.add("max", float(norms.max()))
            aw.add("p90", _percentile(norms, 90))
        self._act = {}
        collapsed = []
        for name, x in self._attn_inputs.items():
            maxp, ent = attention_stats(self.attention[name], x)
            n = x.shape[1]
            aw = self.window.part("attention", name)
            aw.add("max_attention", maxp)
            aw.add("entropy", ent)
            aw.add("max_x_n", maxp * n)  # 1.0 = uniform
            if maxp < c.attention_floor / n:
                collapsed.append(f"{name} (max {maxp:.4f}, uniform {1 / n:.4f})")
        if self._attn_inputs:
            w.add("attention_collapses", float(len(collapsed)))
            if collapsed:
                self.window.note("attention_collapses", step, len(collapsed))
        self._attn_inputs = {}
        ev.collapsed = collapsed
        acc = m.get("step_cell")
        if acc is not None and math.isfinite(acc) and not m.get("skipped"):
            self.acc_steps += 1
            self.acc_ema = acc if self.acc_ema is None else c.ema_beta * self.acc_ema + (1 - c.ema_beta) * acc
            if self.acc_steps >= round(1 / (1 - c.ema_beta)):  # the EMA has seen enough steps
                self.acc_best = self.acc_ema if self.acc_best is None else max(self.acc_best, self.acc_ema)
                if self.acc_best - self.acc_ema > c.acc_drop:
                    ev.acc_drop = (self.acc_ema, self.acc_best)
                    w.add("acc_drops", 1.0)
                    self.window.note("acc_drops", step, self.acc_best - self.acc_ema)
        self.events.append(ev)
        if step % self.log_every == 0:
            self._write_record(step)
        if self.streak >= c.abort_streak:
            self._abort(run, step)

    def _write_record(self, step: int) -> None:
        w = self.window.run
        rec: dict[str, Any] = {"step": step, "kind": "health"}
        for key in sorted(w.sums):
            if key in COUNTS:
                rec[key] = int(w.sums[key])
            elif key in PEAKS:
                rec[PEAKS[key]] = w.maxs[key]
            else:
                rec[key] = w.mean(key)
        if "grad_norm" in w.sums:
            rec["grad_norm_mean"] = w.mean("grad_norm")
        if self.window.attention:
            rec["attention"] = {name: {k: aw.mean(k) for k in sorted(aw.sums)}
                                for name, aw in sorted(self.window.attention.items())}
        if self.window.activations:
            rec["activations"] = {name: {"mean": aw.mean("mean"), "max": aw.maxs["max"], "p90": aw.mean("p90")}
                                  for name, aw in sorted(self.window.activations.items())}
        if self.window.where:
            rec["where"] = {k: v for k, v in sorted(self.window.where.items())}
        rec.update({"acc_ema": self.acc_ema, "acc_best": self.acc_best, "loss_ema": self.loss_ema})
        self.log.write(rec)
        self.window = _Windows()

    def _abort(self, run, step: int) -> None:
        self._write_record(step)
        run.save_checkpoint(step)
        if run.shard.main:
            write_health_report(run.run_dir, run.cfg, run.log.records())
        tqdm.write(f"health: {self.streak} non-finite steps in a row at step {step}; emergency checkpoint written")
        raise PonderError(f"training aborted at step {step}: {self.streak} non-finite steps in a row "
                          f"(health.abort_streak); emergency checkpoint in {self.run_dir}/checkpoints, "
                          f"health report in {self.run_dir}/health.md")

    def restart_running_means(self) -> None:
        """Forget the loss and accuracy EMAs (not the best accuracy): the steps that follow, e.g. a
        carry refilling after a rollback, start them afresh instead of being judged against them."""
        self.acc_ema = self.loss_ema = None
        self.acc_steps = 0

    def take_events(self) -> list[StepEvent]:
        """Events of the steps since the last call (for the stability controller)."""
        out, self.events = self.events, []
        return out

    def on_train_end(self, run) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def state_dict(self) -> dict:
        return {"window": self.window.state_dict(), "streak": self.streak, "loss_ema": self.loss_ema,
                "grad_ema": self.grad_ema, "acc_ema": self.acc_ema, "acc_best": self.acc_best,
                "acc_steps": self.acc_steps, "events": [e.to_state() for e in self.events]}

    def load_state_dict(self, s: dict) -> None:
        self.window.load_state_dict(s["window"])
        self.streak, self.loss_ema, self.grad_ema = s["streak"], s["loss_ema"], s["grad_ema"]
        self.acc_ema, self.acc_best, self.acc_steps = s["acc_ema"], s["acc_best"], s["acc_steps"]
        self.events = [StepEvent.from_state(e) for e in s["events"]]
