"""The health report of a run: a pass/fail checklist with its figures, and every controller action.

A pure function of RUN_DIR/config.json and RUN_DIR/metrics.jsonl (the "health", "eval",
"train" and "action" records), so `ponder health RUN_DIR` rebuilds it for any run, finished,
stopped or aborted. Written to RUN_DIR/health.md and RUN_DIR/health.json. A check without data
(e.g. attention on an MLP-mixer model) is neither passed nor failed: it says "no data".
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ponder.checkpoint import atomic_write_text
from ponder.errors import PonderError
from ponder.health.config import TrainingHealthConfig
from ponder.stats import largest_drop


@dataclass
class Check:
    """One checklist item: passed (True / False / None = no data), a one-line summary, figures."""

    name: str
    passed: Optional[bool]
    summary: str
    figures: dict = field(default_factory=dict)


def _vals(records: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]


def _r(v: Any) -> Any:
    return round(v, 4) if isinstance(v, float) else v


def build_checks(records: list[dict], cfg, hc: TrainingHealthConfig) -> list[Check]:
    """The checklist from a run's metric records, its Config `cfg` and health settings `hc`."""
    health = [r for r in records if r.get("kind") == "health"]
    evals = [r for r in records if r.get("kind") == "eval"]
    train = [r for r in records if r.get("kind") == "train"]
    checks: list[Check] = []

    def no_data(name: str, what: str) -> None:
        checks.append(Check(name, None, f"no data ({what})"))

    if not health:
        no_data("monitors", "no health records: health.monitors was off or the run logged nothing")
    skipped = max(_vals(train, "skipped_steps"), default=0.0)
    streak = max(_vals(health, "nonfinite_streak_max"), default=0.0)
    checks.append(Check("non-finite steps", streak < hc.hard_nan,
                        f"{int(skipped)} steps skipped, longest streak {int(streak)} (hard failure at {hc.hard_nan})",
                        {"skipped_steps": int(skipped), "longest_streak": int(streak)}))
    gmax = max(_vals(health, "grad_norm_max"), default=None)
    clip = cfg.train.grad_clip
    if gmax is None:
        no_data("gradient norm under limit", "no finite gradient norm")
    else:
        explosions = int(sum(_vals(health, "explosions")))
        limit = hc.explode_factor * clip if clip > 0 else None
        checks.append(Check("gradient norm under limit", explosions == 0,
                            f"max pre-clip norm {gmax:.3g}, {explosions} steps above "
                            + (f"{hc.explode_factor:g} x clip = {limit:g}" if limit else "the explosion limit"),
                            {"grad_norm_max": _r(gmax), "explosions": explosions, "limit": limit}))
    spikes = int(sum(_vals(health, "spikes")))
    if health:
        checks.append(Check("no loss spikes", spikes == 0, f"{spikes} steps above {hc.spike_ratio:g} x the running mean",
                            {"spikes": spikes}))
    amax = max(_vals(health, "adapter_norm_max"), default=None)
    if amax is None:
        no_data("adapter delta norm under limits", "no adapter (model.adapter_rank=0)")
    else:
        max_norm = cfg.model.adapter_max_norm
        warn, critical = hc.norm_warn * max_norm, hc.norm_critical * max_norm
        checks.append(Check("adapter delta norm under limits", amax <= critical,
                            f"max per-sample |dW| before the clamp {amax:.3g} (critical above {critical:.3g}, warn "
                            f"above {warn:.3g}, clamp at {max_norm:g}); mean clamp hit-rate "
                            f"{_mean(health, 'adapter_clamp_rate'):.1%}",
                            {"adapter_norm_max": _r(amax), "adapter_norm_mean": _r(_mean(health, "adapter_norm_mean")),
                             "adapter_norm_p90": _r(_mean(health, "adapter_norm_p90")),
                             "clamp_rate": _r(_mean(health, "adapter_clamp_rate")), "warn": warn,
                             "critical": critical, "warn_steps": int(sum(_vals(health, "norm_warn")))}))
    acts = sorted({k[4:-4] for r in health for k in r if k.startswith("act_") and k.endswith("_max")})
    if acts:
        figs = {n: {"mean": _r(_mean(health, f"act_{n}_mean")), "max": _r(max(_vals(health, f"act_{n}_max")))}
                for n in acts}
        checks.append(Check("activation norms (logged)", None,
                            "; ".join(f"{n}: mean {f['mean']:.3g}, max {f['max']:.3g}" for n, f in figs.items()), figs))
    from ponder.halting_health import HealthConfig, check_input_agnostic

    verdict = check_input_agnostic(records, HealthConfig(max_steps=cfg.halt.max_steps))
    var = _mean(health, "halt_logit_var")
    no_verdict = verdict.reason.startswith("no data")
    checks.append(Check("halt logits kept spread", None if no_verdict else not verdict.flagged,
                        f"{verdict.reason}; mean variance across the batch {var:.3g} "
                        f"(below {hc.halt_var_floor:g} in {_mean(health, 'halt_saturated'):.0%} of steps)",
                        {"halt_logit_var_mean": _r(var), "verdict": verdict.figures}))
    layers = sorted({k[5:-8] for r in health for k in r if k.startswith("attn_") and k.endswith("_max_x_n")})
    if not layers:
        no_data("attention never collapsed", "no attention layers, or health.attention_every=0")
    else:
        collapses = int(sum(_vals(health, "attention_collapses")))
        low = {n: _r(min(_vals(health, f"attn_{n}_max_x_n"))) for n in layers}
        checks.append(Check("attention never collapsed", collapses == 0,
                            f"{collapses} collapsed checks; lowest mean max-attention x n per layer (1 = uniform, "
                            f"collapse below {hc.attention_floor:g}): "
                            + ", ".join(f"{n} {v:.2f}" for n, v in low.items()),
                            {"collapses": collapses, "lowest_max_x_n": low}))
    lmax = max(_vals(health, "logit_absmax"), default=None)
    if lmax is None:
        no_data("logits bounded", "no logit figures")
    else:
        t, m = cfg.model.logit_clamp, cfg.model.logit_clamp_max
        clamped = t > 0 and m <= hc.logit_limit
        checks.append(Check("logits bounded", lmax <= hc.logit_limit or clamped,
                            f"max |logit| before any clamp {lmax:.3g} (limit {hc.logit_limit:g})"
                            + (f"; soft clamp t={t:g}, m={m:g}" if t > 0 else "; soft clamp off"),
                            {"logit_absmax": _r(lmax), "limit": hc.logit_limit, "clamp": [t, m] if t > 0 else None}))
    figs, worst = {}, 0.0
    for key in ("test_exact", "test_cell"):
        vals = _vals(evals, key)
        if vals:
            drop, peak, last = largest_drop(vals)
            figs[key] = {"peak": _r(peak), "last": _r(last), "largest_drop": _r(drop)}
            worst = max(worst, drop)
    ema_drops = int(sum(_vals(health, "acc_drops")))
    if not figs:
        no_data("no accuracy drop from the peak", "no evaluation records")
    else:
        checks.append(Check("no accuracy drop from the peak", worst <= hc.acc_drop,
                            f"largest held-out fall from a peak {worst:.3f} (limit {hc.acc_drop:g}); "
                            + ", ".join(f"{k} peak {f['peak']:.3f} last {f['last']:.3f}" for k, f in figs.items())
                            + f"; training accuracy EMA below its best by more than the limit in {ema_drops} steps",
                            {**figs, "ema_drop_steps": ema_drops}))
    return checks


def _mean(records: list[dict], key: str) -> float:
    v = _vals(records, key)
    return sum(v) / len(v) if v else float("nan")


def format_report(checks: list[Check], actions: list[dict]) -> str:
    mark = {True: "PASS", False: "FAIL"}
    lines = ["# Training health", "", "| check | result | figures |", "|---|---|---|"]
    lines += [f"| {c.name} | {mark.get(c.passed, 'no data' if c.summary.startswith('no data') else 'logged')} | "
              f"{c.summary} |" for c in checks]
    lines += ["", f"## Controller actions ({len(actions)})", ""]
    if not actions:
        lines.append("none (controller off, or nothing to act on)")
    lines += [f"- step {a['step']}: **{a['action']}**: {a['reason']}"
              + (f" ({', '.join(f'{k}={_fmt(v)}' for k, v in a.get('detail', {}).items())})" if a.get("detail") else "")
              for a in actions]
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


def write_health_report(run_dir: Path) -> dict:
    """Build RUN_DIR/health.md and health.json; returns the JSON payload. A missing or invalid
    run directory is a PonderError."""
    from ponder.callbacks import MetricsLog
    from ponder.config import load_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PonderError(f"no such run directory: {run_dir}")
    if not (run_dir / "config.json").exists() or not (run_dir / "metrics.jsonl").exists():
        raise PonderError(f"{run_dir} is not a run directory (needs config.json and metrics.jsonl)")
    cfg = load_config(run_dir / "config.json")
    records = MetricsLog(run_dir).records()
    hc = getattr(cfg, "health", None) or TrainingHealthConfig()
    checks = build_checks(records, cfg, hc)
    actions = [r for r in records if r.get("kind") == "action"]
    payload = {"passed": all(c.passed is not False for c in checks), "checks": [asdict(c) for c in checks],
               "actions": actions}
    atomic_write_text(run_dir / "health.json", json.dumps(payload, indent=1) + "\n")
    atomic_write_text(run_dir / "health.md", format_report(checks, actions))
    return payload
