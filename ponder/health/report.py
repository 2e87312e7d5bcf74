"""The one health report of a run: the training-health checklist with its figures, the
halting-health verdicts, and every controller action.

A pure function of a run's config and its metric records (the "health", "eval", "train",
"halting_flag" and "action" records), so `ponder health RUN_DIR` rebuilds it for any run,
finished, stopped or aborted. Written to RUN_DIR/health.md and RUN_DIR/health.json. A check
without data (e.g. attention on an MLP-mixer model) is neither passed nor failed: it says
"no data". The run passes when no check failed and no halting verdict is flagged.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ponder.core.files import atomic_write_text
from ponder.core.stats import largest_drop
from ponder.health.events import Action
from ponder.health.halting import check_health, check_input_agnostic, format_health


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


def build_checks(records: list[dict], cfg) -> list[Check]:
    """The training-health checklist from a run's metric records and its Config `cfg`."""
    hc = cfg.health
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
    where = _where(health, "nonfinite")
    checks.append(Check("non-finite steps", streak < hc.hard_nan,
                        f"{int(skipped)} steps skipped, longest streak {int(streak)} (hard failure at {hc.hard_nan})"
                        + (f" (at steps {', '.join(str(s) for s, _ in where)})" if where else ""),
                        {"skipped_steps": int(skipped), "longest_streak": int(streak), "where": where}))
    gmax = max(_vals(health, "grad_norm_max"), default=None)
    clip = cfg.train.grad_clip
    if gmax is None:
        no_data("gradient norm under limit", "no finite gradient norm")
    else:
        explosions = int(sum(_vals(health, "explosions")))
        limit = hc.explode_factor * clip if clip > 0 else None
        where = _where(health, "explosions")  # [step, pre-clip norm]
        checks.append(Check("gradient norm under limit", explosions == 0,
                            f"max pre-clip norm {gmax:.3g}, {explosions} steps above "
                            + (f"{hc.explode_factor:g} x clip = {limit:g}" if limit else "the explosion limit")
                            + (f" ({_at(where, '')})" if explosions else ""),
                            {"grad_norm_max": _r(gmax), "explosions": explosions, "limit": limit, "where": where}))
    spikes = int(sum(_vals(health, "spikes")))
    if health:
        where = _where(health, "spikes")  # [step, loss / running mean]
        judged = max(0, max((r["step"] for r in train), default=0) - hc.spike_warmup)
        worst = max((size for _, size in where if size is not None), default=0.0)
        failed = worst >= hc.spike_fail_ratio or spikes > max(2.0, hc.spike_fail_share * judged)
        checks.append(Check("no loss spikes", not failed,
                            f"{spikes} steps above {hc.spike_ratio:g} x the running mean"
                            + (f" ({_at(where, 'x')}; fails at {hc.spike_fail_ratio:g} x, or in more than "
                               f"{hc.spike_fail_share:.0%} of steps)" if spikes else ""),
                            {"spikes": spikes, "where": where, "worst_ratio": _r(worst) if spikes else None}))
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
    acts = _parts(health, "activations")
    if acts:
        figs = {n: {"mean": _r(_mean(rs, "mean")), "max": _r(max(_vals(rs, "max")))} for n, rs in acts.items()}
        checks.append(Check("activation norms (logged)", None,
                            "; ".join(f"{n}: mean {f['mean']:.3g}, max {f['max']:.3g}" for n, f in figs.items()), figs))
    verdict = check_input_agnostic(records, cfg.halting_health, cfg.halt.max_steps)
    var = _mean(health, "halt_logit_var")
    no_verdict = verdict.reason.startswith("no data")
    checks.append(Check("halt logits kept spread", None if no_verdict else not verdict.flagged,
                        f"{verdict.reason}; mean variance across the batch {var:.3g} "
                        f"(below {hc.halt_var_floor:g} in {_mean(health, 'halt_saturated'):.0%} of steps)",
                        {"halt_logit_var_mean": _r(var), "verdict": verdict.figures}))
    layers = _parts(health, "attention")
    if not layers:
        no_data("attention never collapsed", "no attention layers, or health.attention_every=0")
    else:
        collapses = int(sum(_vals(health, "attention_collapses")))
        low = {n: _r(min(_vals(rs, "max_x_n"))) for n, rs in layers.items()}
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


def _where(records: list[dict], count: str) -> list[list]:
    """[step, size] of each logged occurrence of a counted event (the monitors keep the first few
    per health record)."""
    return [list(x) for r in records for x in (r.get("where") or {}).get(count, [])]


def _at(where: list[list], unit: str, shown: int = 5) -> str:
    """"at step 137 (2.3x), step 412 (2.1x)" of the first few occurrences."""
    parts = [f"step {s}" + (f" ({size:.3g}{unit})" if size is not None else "") for s, size in where[:shown]]
    more = f" and {len(where) - shown} more logged" if len(where) > shown else ""
    return "at " + ", ".join(parts) + more if parts else "where not logged"


def _parts(records: list[dict], group: str) -> dict[str, list[dict]]:
    """{part name: its figures in every record} of a nested group ("attention", "activations")."""
    out: dict[str, list[dict]] = {}
    for r in records:
        for name, figs in (r.get(group) or {}).items():
            if isinstance(figs, dict):
                out.setdefault(name, []).append(figs)
    return dict(sorted(out.items()))


def _mean(records: list[dict], key: str) -> float:
    v = _vals(records, key)
    return sum(v) / len(v) if v else float("nan")


def format_report(checks: list[Check], halting: str, actions: list[Action], *, empty: bool = False) -> str:
    mark = {True: "PASS", False: "FAIL"}
    lines = ["# Health", "", "## Training health", "", "| check | result | figures |", "|---|---|---|"]
    if empty:
        lines[2:2] = ["No training step has been logged yet: every check says \"no data\".", ""]
    lines += [f"| {c.name} | {mark.get(c.passed, 'no data' if c.summary.startswith('no data') else 'logged')} | "
              f"{c.summary} |" for c in checks]
    lines += ["", halting.rstrip(), "", f"## Controller actions ({len(actions)})", ""]
    if not actions:
        lines.append("none (controller off, or nothing to act on)")
    lines += [f"- step {a.step}: **{a.kind.value}** ({', '.join(c.value for c in a.causes) or 'no cause'}): {a.reason}"
              + (f" ({', '.join(f'{k}={_fmt(v)}' for k, v in a.detail.items())})" if a.detail else "")
              for a in actions]
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


def build_report(cfg, records: list[dict]) -> tuple[dict, str]:
    """(JSON payload, Markdown) of the health report of a run with Config `cfg` and metric records."""
    checks = build_checks(records, cfg)
    verdicts = check_health(records, cfg.halting_health, cfg.halt.max_steps)
    first = {}
    for r in records:
        if r.get("kind") == "halting_flag" and r.get("verdict") not in first:
            first[r["verdict"]] = r.get("step")
    halting = format_health(verdicts)
    if first:
        halting += "\nFirst flagged during training: " + ", ".join(
            f"{k} at step {s}" for k, s in sorted(first.items(), key=lambda kv: (kv[1] is None, kv[1] or 0))) + "\n"
    actions = [Action.from_record(r) for r in records if r.get("kind") == "action"]
    payload = {"passed": all(c.passed is not False for c in checks) and not any(v.flagged for v in verdicts),
               "checks": [asdict(c) for c in checks], "halting": [asdict(v) for v in verdicts],
               "halting_first_flagged": first, "actions": [a.to_record() for a in actions]}
    payload["steps_logged"] = max((r.get("step", 0) for r in records), default=0)
    return payload, format_report(checks, halting, actions, empty=not records)


def write_health_report(run_dir: Path, cfg, records: list[dict]) -> dict:
    """Write RUN_DIR/health.md and health.json for a run with Config `cfg` and metric records;
    returns the JSON payload."""
    payload, md = build_report(cfg, records)
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "health.json", json.dumps(payload, indent=1) + "\n", what="the health report")
    atomic_write_text(run_dir / "health.md", md, what="the health report")
    return payload
