"""Halting health: named verdicts on how a learned halting head behaves during training, and the
callback that runs them (config section `halting_health`).

The checks are pure functions of the metric records the training loop writes to metrics.jsonl
(train records: `halt_logit_mean`, `halt_logit_std`, `halted_mean_steps`, `q_halt_acc`, ...;
eval records: `test_exact`, `test_halt_first_frac`, `test_halt_max_frac`, `test_wrong_halt_frac`,
`test_spearman`, ...). Each returns a `Verdict` with the figures behind it; a verdict whose
fields are missing is not flagged and says "no data". The verdicts follow the failure modes of
REFERENCE.md section 2:

- `drift`: the halt logit moves steadily toward "never halt" while the steps used climb
  (adversarial drift, failure mode 7);
- `collapse`: nearly every sample stops at step 1 while accuracy is poor, or nearly none stops
  before the cap M (failure modes 1-3);
- `input_agnostic`: the halt logit hardly differs across inputs, or the steps used do not
  follow the task's difficulty (failure mode 8);
- `q_miscalibration`: the halting probe's "answer is right" prediction is often wrong, or the
  head stops on wrong answers.

`HaltingMonitor` is the training callback that runs these checks after every evaluation; the
verdicts also go into the run's one health report (ponder.health.report).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from tqdm import tqdm

from ponder.core.stats import spearman_or_none
from ponder.health.config import HaltingHealthConfig

__all__ = ["Verdict", "VERDICTS", "check_health", "format_health", "HaltingMonitor",
           "check_drift", "check_collapse", "check_input_agnostic", "check_q_miscalibration"]

VERDICTS = ("drift", "collapse", "input_agnostic", "q_miscalibration")
SAME_STEP_OK = "all samples halt at the same step and are right"


@dataclass
class Verdict:
    """One named check: flagged or not, why, and the figures it was decided on."""

    name: str
    flagged: bool
    reason: str
    figures: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- helpers


def _num(v: Any) -> Optional[float]:
    """A finite float, or None (missing, null, NaN, non-numeric)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _round(v: Any, digits: int = 4) -> Any:
    return round(v, digits) if isinstance(v, float) else v


def _no_data(name: str, what: str) -> Verdict:
    return Verdict(name, False, f"no data ({what})", {})


def _train_records(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("kind") == "train"]


def _latest_eval(records: list[dict]) -> Optional[dict]:
    evals = [r for r in records if r.get("kind") == "eval"]
    return evals[-1] if evals else None


def _recent_mean(train: list[dict], key: str, window: int) -> tuple[Optional[float], int]:
    vals = [v for v in (_num(r.get(key)) for r in train) if v is not None][-window:]
    return (float(np.mean(vals)), len(vals)) if vals else (None, 0)


def _eval_fields(ev: Optional[dict], prefix: str) -> dict[str, Any]:
    """The judged split's fields of an eval record (None where missing)."""
    keys = ("exact", "mean_steps", "halt_first_frac", "halt_max_frac", "wrong_halt_frac", "spearman")
    out: dict[str, Any] = {k: (_num(ev.get(f"{prefix}_{k}")) if ev else None) for k in keys}
    hist = ev.get(f"{prefix}_steps_histogram") if ev else None
    out["steps_histogram"] = hist if isinstance(hist, list) and sum(hist) > 0 else None
    out["step"] = ev.get("step") if ev else None
    out["has_spearman"] = bool(ev) and f"{prefix}_spearman" in ev  # a null value means "undefined", absence "not logged"
    return out


# ----------------------------------------------------------------------------- verdicts


def _drift_window(rows: list[tuple[int, float, float, Optional[float]]], cfg: HaltingHealthConfig) -> tuple[bool, dict]:
    steps = [r[0] for r in rows]
    logit = [r[1] for r in rows]
    used = [r[2] for r in rows]
    rho_logit, rho_used = spearman_or_none(steps, logit), spearman_or_none(steps, used)
    fall = logit[0] - logit[-1]
    rise = used[-1] / used[0] - 1.0 if used[0] > 0 else 0.0
    figures = {
        "from_step": steps[0], "to_step": steps[-1], "records": len(rows),
        "logit_start": logit[0], "logit_end": logit[-1],
        "halt_prob_start": _sigmoid(logit[0]), "halt_prob_end": _sigmoid(logit[-1]),
        "steps_start": used[0], "steps_end": used[-1],
        "rho_logit_vs_step": rho_logit, "rho_steps_vs_step": rho_used,
        "logit_fall": fall, "steps_rise_frac": rise,
    }
    if rows[0][3] is not None and rows[-1][3] is not None:  # logged mean of sigmoid(logit) over the batch
        figures["halt_prob_mean_start"], figures["halt_prob_mean_end"] = rows[0][3], rows[-1][3]
    falling = rho_logit is not None and rho_logit <= cfg.drift_logit_rho and fall >= cfg.drift_min_logit_fall
    climbing = rho_used is not None and rho_used >= cfg.drift_steps_rho and rise >= cfg.drift_min_steps_rise
    figures["logit_falling"], figures["steps_climbing"] = falling, climbing
    return falling and climbing, {k: _round(v) for k, v in figures.items()}


def check_drift(records: list[dict], cfg: HaltingHealthConfig) -> Verdict:
    """Halt logit falling steadily toward "never halt" while the steps used climb.

    Judged over the whole run and over the trailing `drift_window` train records; flagged if
    either shows it (figures from the flagging window, else from the trailing one). The halt
    probability figures are sigmoid(mean logit), a lower bound of the batch's mean halt
    probability while logits are negative (sigmoid is convex there); when train records carry
    `halt_prob_mean` its first and last values are reported too.
    """
    rows = []
    for r in _train_records(records):
        s, x, u = r.get("step"), _num(r.get("halt_logit_mean")), _num(r.get("halted_mean_steps"))
        if isinstance(s, int) and x is not None and u is not None:
            rows.append((s, x, u, _num(r.get("halt_prob_mean"))))
    if len(rows) < cfg.drift_min_records:
        return _no_data("drift", f"needs halt_logit_mean and halted_mean_steps in >= {cfg.drift_min_records} "
                                 f"train records, found {len(rows)}")
    windows = [rows[-cfg.drift_window:]]
    if len(rows) > cfg.drift_window:
        windows.append(rows)
    results = [_drift_window(w, cfg) for w in windows]
    hit = next((res for res in results if res[0]), None)
    flagged, f = hit if hit else results[0]
    span = f"over steps {f['from_step']}..{f['to_step']}"
    logit = (f"halt logit {f['logit_start']:.2f} -> {f['logit_end']:.2f} (halt prob {f['halt_prob_start']:.3f} -> "
             f"{f['halt_prob_end']:.3f}, rho {_fmt(f['rho_logit_vs_step'])})")
    used = f"steps {f['steps_start']:.2f} -> {f['steps_end']:.2f} (rho {_fmt(f['rho_steps_vs_step'])})"
    if flagged:
        reason = f"{logit} falls toward never-halt while {used} climb {span}: the head is losing the ability to halt"
    elif f["logit_falling"]:
        reason = f"{logit} falls {span} but {used} do not climb"
    else:
        reason = f"no steady fall of the halt logit {span}: {logit}, {used}"
    return Verdict("drift", flagged, reason, f)


def check_collapse(records: list[dict], cfg: HaltingHealthConfig) -> Verdict:
    """From the latest eval: nearly all samples stop at step 1 with poor accuracy, or nearly
    none stops before M."""
    e = _eval_fields(_latest_eval(records), cfg.eval_prefix)
    first, at_max, exact = e["halt_first_frac"], e["halt_max_frac"], e["exact"]
    if first is None or at_max is None:
        return _no_data("collapse", f"needs {cfg.eval_prefix}_halt_first_frac and {cfg.eval_prefix}_halt_max_frac "
                                    f"in an eval record")
    figures = {"eval_step": e["step"], "halt_first_frac": first, "halt_max_frac": at_max, "exact": exact,
               "mean_steps": e["mean_steps"], "mode": None}
    figures = {k: _round(v) for k, v in figures.items()}
    nearly = cfg.collapse_frac
    if first >= nearly and at_max >= nearly:
        return Verdict("collapse", False, "max_steps is 1: every sample stops at step 1 = M, there is no halting "
                                          "decision to judge", figures)
    if first >= nearly:
        if exact is not None and exact >= cfg.solved_exact:
            return Verdict("collapse", False, f"{first:.0%} of samples halt at step 1 and are right "
                                              f"(exact {exact:.3f})", figures)
        figures["mode"] = "first_step"
        acc = "unknown" if exact is None else f"{exact:.3f}"
        return Verdict("collapse", True, f"collapse to the first step: {first:.0%} of samples halt at step 1 "
                                         f"while exact accuracy is {acc}", figures)
    if at_max >= nearly and exact is not None and exact < cfg.never_halts_min_exact:
        return Verdict("collapse", False, f"runs to M while almost nothing is solved yet (exact {exact:.3f}): "
                                          f"there is no right answer to stop on, so going on is the right call",
                       figures)
    if at_max >= nearly:
        figures["mode"] = "never_halts"
        return Verdict("collapse", True, f"never halts: {at_max:.0%} of samples run to the step cap M "
                                         f"(mean steps {_fmt(e['mean_steps'])})", figures)
    return Verdict("collapse", False, f"no collapse: {first:.0%} of samples stop at step 1, "
                                      f"{at_max:.0%} run to M", figures)


def _steps_constant(e: dict) -> Optional[bool]:
    """Do all judged samples use the same number of steps? None when the record cannot tell."""
    hist = e["steps_histogram"]
    if hist is not None:
        return sum(1 for c in hist if c) == 1
    first, at_max, rho, mean = e["halt_first_frac"], e["halt_max_frac"], e["spearman"], e["mean_steps"]
    if rho is not None:
        return False  # a rank correlation exists only when the steps vary
    if (first is not None and first >= 1.0) or (at_max is not None and at_max >= 1.0):
        return True
    if (first is not None and 0.0 < first < 1.0) or (at_max is not None and 0.0 < at_max < 1.0):
        return False
    if mean is not None and abs(mean - round(mean)) > 1e-9:
        return False
    return None


def check_input_agnostic(records: list[dict], cfg: HaltingHealthConfig, max_steps: Optional[int] = None) -> Verdict:
    """The halt logit hardly differs across inputs, or the steps used ignore difficulty.

    max_steps: M of the run when known; lets the logit-spread check tell "everyone runs to M"
    apart without an eval record. Cases left to `collapse` (nearly all samples at step 1 or at M) are not flagged here; nor is
    a run whose samples all stop at one step with their answers right.
    """
    train = _train_records(records)
    ev = _latest_eval(records)
    e = _eval_fields(ev, cfg.eval_prefix)
    std, n_std = _recent_mean(train, "halt_logit_std", cfg.agnostic_window)
    has_eval = e["has_spearman"] or any(e[k] is not None for k in ("exact", "halt_first_frac", "halt_max_frac",
                                                                       "mean_steps"))
    if std is None and not has_eval:
        return _no_data("input_agnostic", "needs halt_logit_std in train records or an eval record")
    constant = _steps_constant(e) if has_eval else None
    if constant is None and e["has_spearman"] and e["spearman"] is None and e["mean_steps"] is not None:
        constant = True  # undefined rank correlation, no sign of varying steps: one step count for all
    figures = {"halt_logit_std": std, "std_records": n_std, "eval_step": e["step"], "spearman": e["spearman"],
               "exact": e["exact"], "mean_steps": e["mean_steps"], "halt_first_frac": e["halt_first_frac"],
               "halt_max_frac": e["halt_max_frac"], "steps_constant": constant}
    figures = {k: _round(v) for k, v in figures.items()}
    exact, first, at_max = e["exact"], e["halt_first_frac"], e["halt_max_frac"]
    solved = exact is not None and exact >= cfg.solved_exact
    nearly = cfg.collapse_frac
    if solved and (constant or (first is not None and first >= nearly)):
        return Verdict("input_agnostic", False, SAME_STEP_OK, figures)
    if first is not None and first >= nearly:
        return Verdict("input_agnostic", False, f"{first:.0%} of samples halt at step 1: judged by collapse", figures)
    if at_max is not None and at_max >= nearly:
        return Verdict("input_agnostic", False, f"{at_max:.0%} of samples run to M: judged by collapse", figures)

    problems: list[str] = []
    notes: list[str] = []
    judged = False  # did at least one of the two checks have its data?
    all_at_max: Optional[bool] = None  # the logit spread only matters if some samples halt before M
    if at_max is not None:
        all_at_max = False  # (>= collapse_frac returned above)
    else:
        used, _ = _recent_mean(train, "halted_mean_steps", cfg.agnostic_window)
        if used is not None and max_steps is not None:
            all_at_max = used >= max_steps - 1e-6
    if std is None:
        notes.append("no halt_logit_std")
    elif all_at_max is None:
        notes.append("logit spread not judged: unknown whether samples halt before M")
    elif all_at_max:
        notes.append("every sample runs to M")
    elif std < cfg.agnostic_logit_std:
        judged = True
        problems.append(f"halt logits barely differ across inputs (std {std:.3g} < {cfg.agnostic_logit_std:g} "
                        f"over the last {n_std} train records)")
    else:
        judged = True
        notes.append(f"halt logit std {std:.3g}")

    rho = e["spearman"]
    if not has_eval or not e["has_spearman"]:
        notes.append("no Spearman(steps, difficulty) in an eval record")
    elif rho is None:
        if constant is False:
            notes.append("steps vary but Spearman(steps, difficulty) is undefined (constant difficulty?)")
        elif constant:
            judged = True
            problems.append(f"every sample uses the same number of steps ({_fmt(e['mean_steps'])}) whatever the "
                            f"input (Spearman undefined, exact {_fmt(exact)})")
        else:
            notes.append("no steps data in the eval record")
    else:
        judged = True
        if abs(rho) < cfg.agnostic_min_abs_rho:
            problems.append(f"steps do not follow difficulty (Spearman {rho:+.3f}, "
                            f"|rho| < {cfg.agnostic_min_abs_rho:g})")
        else:
            notes.append(f"steps follow difficulty (Spearman {rho:+.3f})")
    if problems:
        return Verdict("input_agnostic", True, "; ".join(problems), figures)
    if not judged:
        return Verdict("input_agnostic", False, "no data (" + "; ".join(notes) + ")", figures)
    return Verdict("input_agnostic", False, "halting depends on the input: " + "; ".join(notes), figures)


def check_q_miscalibration(records: list[dict], cfg: HaltingHealthConfig) -> Verdict:
    """The probe's halt prediction disagrees with correctness (train `q_halt_acc`), or the head
    stops on wrong answers (eval `wrong_halt_frac`)."""
    acc, n_acc = _recent_mean(_train_records(records), "q_halt_acc", cfg.q_window)
    e = _eval_fields(_latest_eval(records), cfg.eval_prefix)
    wrong = e["wrong_halt_frac"]
    if acc is None and wrong is None:
        return _no_data("q_miscalibration", f"needs q_halt_acc in train records or {cfg.eval_prefix}_wrong_halt_frac "
                                            f"in an eval record (None when no sample stops before M)")
    figures = {k: _round(v) for k, v in {"q_halt_acc": acc, "q_records": n_acc, "wrong_halt_frac": wrong,
                                         "eval_step": e["step"]}.items()}
    problems, notes = [], []
    if acc is not None:
        if acc < cfg.q_halt_acc_min:
            problems.append(f"the probe's halt prediction matches correctness on only {acc:.1%} of steps "
                            f"(< {cfg.q_halt_acc_min:.0%})")
        else:
            notes.append(f"q_halt_acc {acc:.1%}")
    if wrong is not None:
        if wrong > cfg.wrong_halt_frac_max:
            problems.append(f"{wrong:.1%} of the samples stopped before M are wrong (> {cfg.wrong_halt_frac_max:.0%})")
        else:
            notes.append(f"{wrong:.1%} of early stops wrong")
    if problems:
        return Verdict("q_miscalibration", True, "; ".join(problems), figures)
    return Verdict("q_miscalibration", False, "halting agrees with correctness: " + ", ".join(notes), figures)


def check_health(records: list[dict], cfg: Optional[HaltingHealthConfig] = None,
                 max_steps: Optional[int] = None) -> list[Verdict]:
    """All verdicts (in `VERDICTS` order) on a stream of metric records (max_steps: M of the run)."""
    cfg = cfg or HaltingHealthConfig()
    cfg.validate()
    return [check_drift(records, cfg), check_collapse(records, cfg), check_input_agnostic(records, cfg, max_steps),
            check_q_miscalibration(records, cfg)]


# ----------------------------------------------------------------------------- reporting


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_health(verdicts: list[Verdict]) -> str:
    """Markdown checklist: a ticked box is a healthy verdict, an open box a flagged one."""
    flagged = [v.name for v in verdicts if v.flagged]
    head = f"**{len(flagged)} flagged: {', '.join(flagged)}**" if flagged else "**all clear**"
    lines = ["## Halting health", "", f"{head} (ticked = healthy, open = flagged)", ""]
    for v in verdicts:
        box, state = ("[ ]", "FLAGGED") if v.flagged else ("[x]", "ok")
        lines.append(f"- {box} **{v.name}** ({state}): {v.reason}")
        if v.figures:
            lines.append("  - " + ", ".join(f"{k}={_fmt(x)}" for k, x in v.figures.items()))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the callback


class HaltingMonitor:
    """Training callback: re-checks halting health after every evaluation.

    It reads the run's records from the metrics log (the eval record is written before
    `on_eval_end` runs), prints one line when verdicts newly flag and writes a record of kind
    "halting_flag" (step, verdict, reason) for each, which the health report lists as "first
    flagged at". Its state (which verdicts are flagged) is saved in checkpoints.
    """

    def __init__(self, cfg: HaltingHealthConfig, *, max_steps: int, verbose: bool = True):
        cfg.validate()
        self.cfg, self.max_steps, self.verbose = cfg, max_steps, verbose
        self.flagged: set[str] = set()
        self.last: list[Verdict] = []

    def on_eval_end(self, run, record: dict) -> None:
        if not run.shard.main:  # the verdicts read the log, which rank 0 alone writes
            return
        self.last = check_health(run.log.records(), self.cfg, self.max_steps)
        new = [v for v in self.last if v.flagged and v.name not in self.flagged]
        step = record.get("step")
        for v in new:
            run.log.write({"step": step, "kind": "halting_flag", "verdict": v.name, "reason": v.reason})
        if new and self.verbose:
            tqdm.write(f"halting health at step {step}: " + "; ".join(f"{v.name} FLAGGED: {v.reason}" for v in new))
        self.flagged = {v.name for v in self.last if v.flagged}

    def state_dict(self) -> dict:
        return {"flagged": sorted(self.flagged)}

    def load_state_dict(self, state: dict) -> None:
        self.flagged = set(state.get("flagged", []))
