"""Halting-health verdicts driven by synthetic metric streams, and the monitor callback."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from ponder.core.errors import PonderError
from ponder.health.config import HaltingHealthConfig
from ponder.health.halting import (SAME_STEP_OK, VERDICTS, HaltingMonitor, check_collapse, check_drift, check_health,
                                   check_input_agnostic, check_q_miscalibration, format_health)
from ponder.training.callbacks import MetricsLog
from ponder.training.distributed import SINGLE

CFG = HaltingHealthConfig()


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def train_stream(logits, steps=None, *, every=50, **columns):
    """Train records at steps every, 2*every, ...; keyword columns are per-record sequences."""
    out = []
    for i, x in enumerate(logits):
        r = {"step": (i + 1) * every, "kind": "train", "halt_logit_mean": float(x)}
        if steps is not None:
            r["halted_mean_steps"] = None if steps[i] is None else float(steps[i])
        for k, col in columns.items():
            r[k] = col[i]
        out.append(r)
    return out


def jitter(n, amp):
    """Alternating noise, zero at both ends (so start/end figures are exact)."""
    j = amp * (-1.0) ** np.arange(n)
    j[0] = j[-1] = 0.0
    return j


def eval_record(step=1000, prefix="test", **fields):
    return {"step": step, "kind": "eval", **{f"{prefix}_{k}": v for k, v in fields.items()}}


HEALTHY_EVAL = dict(exact=0.8, mean_steps=3.4, halt_first_frac=0.2, halt_max_frac=0.05, wrong_halt_frac=0.05,
                    spearman=0.55)


# ----------------------------------------------------------------------------- drift


def test_reference_drift_is_flagged_with_its_figures():
    n = 20  # 1000 steps logged every 50
    logits = np.linspace(-3.6, -5.7, n) + jitter(n, 0.06)
    steps = np.linspace(4, 12, n) + jitter(n, 0.3)
    v = check_drift(train_stream(logits, steps), CFG)
    assert v.flagged, v.reason
    f = v.figures
    assert f["logit_start"] == pytest.approx(-3.6) and f["logit_end"] == pytest.approx(-5.7)
    assert f["halt_prob_start"] == pytest.approx(sigmoid(-3.6), abs=1e-4)
    assert f["halt_prob_end"] == pytest.approx(sigmoid(-5.7), abs=1e-4)
    assert f["steps_start"] == 4 and f["steps_end"] == 12
    assert f["from_step"] == 50 and f["to_step"] == 1000
    assert f["rho_logit_vs_step"] <= -0.8 and f["rho_steps_vs_step"] >= 0.5
    assert "-3.60 -> -5.70" in v.reason and "4.00 -> 12.00" in v.reason


def test_reference_drift_reports_logged_mean_halt_probability():
    n = 20
    probs = np.linspace(0.064, 0.008, n)
    v = check_drift(train_stream(np.linspace(-3.6, -5.7, n), np.linspace(4, 12, n), halt_prob_mean=probs), CFG)
    assert v.flagged
    assert v.figures["halt_prob_mean_start"] == pytest.approx(0.064)
    assert v.figures["halt_prob_mean_end"] == pytest.approx(0.008)


@pytest.mark.parametrize("logits, steps", [
    (np.linspace(-5, 2, 20), np.linspace(8, 3, 20)),  # learning to halt: logit up, steps down
    (-1 + jitter(20, 0.1), 4 + jitter(20, 0.2)),  # stable
])
def test_healthy_streams_are_not_drift(logits, steps):
    v = check_drift(train_stream(logits, steps), CFG)
    assert not v.flagged and not v.reason.startswith("no data"), v.reason


def test_falling_logit_with_flat_steps_is_not_drift():
    v = check_drift(train_stream(np.linspace(-5, -7, 20), [8] * 20), CFG)
    assert not v.flagged and "do not climb" in v.reason


def test_small_fall_is_not_drift():
    v = check_drift(train_stream(np.linspace(-3.6, -4.0, 20), np.linspace(4, 12, 20)), CFG)
    assert not v.flagged


def test_late_drift_after_a_healthy_rise_is_caught_by_the_trailing_window():
    logits = np.concatenate([np.linspace(-5, -1, 20), np.linspace(-1.2, -4, 20)])
    steps = np.concatenate([np.linspace(8, 3, 20), np.linspace(3, 8, 20)])
    v = check_drift(train_stream(logits, steps), CFG)
    assert v.flagged and v.figures["from_step"] == 21 * 50


def test_slow_drift_is_caught_over_the_whole_run():
    n = 100  # the same fall as REFERENCE's, but over 5000 steps
    v = check_drift(train_stream(np.linspace(-3.6, -5.7, n), np.linspace(4, 12, n)), CFG)
    assert v.flagged and v.figures["records"] == n


@pytest.mark.parametrize("records", [
    [],
    train_stream(np.linspace(-3.6, -5.7, 4), np.linspace(4, 12, 4)),  # too few records
    train_stream(np.linspace(-3.6, -5.7, 20)),  # no halted_mean_steps
    train_stream(np.linspace(-3.6, -5.7, 20), [None] * 20),  # nothing halted in any window
    [eval_record(**HEALTHY_EVAL)],
])
def test_drift_without_data(records):
    v = check_drift(records, CFG)
    assert not v.flagged and v.reason.startswith("no data")


# ----------------------------------------------------------------------------- collapse


def test_collapse_to_first_step_is_flagged():
    v = check_collapse([eval_record(exact=0.41, mean_steps=1.02, halt_first_frac=0.98, halt_max_frac=0.0)], CFG)
    assert v.flagged and "first step" in v.reason and v.figures["mode"] == "first_step"


def test_never_halting_is_flagged():
    v = check_collapse([eval_record(exact=0.3, mean_steps=7.9, halt_first_frac=0.0, halt_max_frac=0.97)], CFG)
    assert v.flagged and "never halts" in v.reason and v.figures["mode"] == "never_halts"


def test_first_step_with_right_answers_is_not_collapse():
    v = check_collapse([eval_record(exact=0.99, mean_steps=1.0, halt_first_frac=1.0, halt_max_frac=0.0)], CFG)
    assert not v.flagged and "right" in v.reason


def test_spread_halting_and_single_step_cap_are_not_collapse():
    assert not check_collapse([eval_record(**HEALTHY_EVAL)], CFG).flagged
    v = check_collapse([eval_record(exact=0.2, mean_steps=1.0, halt_first_frac=1.0, halt_max_frac=1.0)], CFG)
    assert not v.flagged and "max_steps is 1" in v.reason


def test_collapse_judges_the_latest_eval():
    early = eval_record(step=500, exact=0.1, mean_steps=8, halt_first_frac=0.0, halt_max_frac=1.0)
    late = eval_record(step=1000, **HEALTHY_EVAL)
    assert not check_collapse([early, late], CFG).flagged
    assert check_collapse([late, early], CFG).flagged


def test_collapse_without_data():
    for records in ([], train_stream([-1] * 5, [3] * 5), [eval_record(exact=0.5, mean_steps=3.0)]):
        v = check_collapse(records, CFG)
        assert not v.flagged and v.reason.startswith("no data")


# ----------------------------------------------------------------------------- input_agnostic


def stds(value, n=10):
    return train_stream([-1.0] * n, [3.0] * n, halt_logit_std=[value] * n)


def test_constant_logit_across_inputs_is_flagged():
    records = stds(0.01) + [eval_record(**HEALTHY_EVAL)]
    v = check_input_agnostic(records, CFG)
    assert v.flagged and "barely differ" in v.reason and v.figures["halt_logit_std"] == pytest.approx(0.01)


def test_steps_uncorrelated_with_difficulty_are_flagged():
    records = stds(1.3) + [eval_record(**{**HEALTHY_EVAL, "spearman": 0.03})]
    v = check_input_agnostic(records, CFG)
    assert v.flagged and "do not follow difficulty" in v.reason


def test_one_middle_step_for_everyone_is_flagged_unless_right():
    hist = [0, 0, 0, 512, 0, 0, 0, 0]  # every sample stops at step 4 of 8
    wrong = eval_record(exact=0.5, mean_steps=4.0, halt_first_frac=0.0, halt_max_frac=0.0, spearman=None,
                        steps_histogram=hist)
    v = check_input_agnostic(stds(0.3) + [wrong], CFG)
    assert v.flagged and "same number of steps" in v.reason
    # without a histogram: an undefined Spearman and an integer mean read as "one step count"
    wrong.pop("test_steps_histogram")
    assert check_input_agnostic(stds(0.3) + [wrong], CFG).flagged
    right = {**wrong, "test_exact": 0.97}
    v = check_input_agnostic(stds(0.3) + [right], CFG)
    assert not v.flagged and v.reason == SAME_STEP_OK


def test_everything_right_in_one_step_is_not_flagged():
    solved = eval_record(exact=1.0, mean_steps=1.0, halt_first_frac=1.0, halt_max_frac=0.0, spearman=None,
                         wrong_halt_frac=0.0)
    v = check_input_agnostic(stds(0.0) + [solved], CFG)
    assert not v.flagged and v.reason == SAME_STEP_OK


def test_healthy_input_dependence_is_not_flagged():
    v = check_input_agnostic(stds(1.5) + [eval_record(**HEALTHY_EVAL)], CFG)
    assert not v.flagged and "depends on the input" in v.reason


def test_extremes_are_left_to_collapse():
    at_max = eval_record(exact=0.0, mean_steps=8.0, halt_first_frac=0.0, halt_max_frac=1.0, spearman=None)
    v = check_input_agnostic(stds(0.0) + [at_max], CFG)  # zero-init probe: same logit everywhere, all at M
    assert not v.flagged and "collapse" in v.reason
    at_first = eval_record(exact=0.3, mean_steps=1.0, halt_first_frac=1.0, halt_max_frac=0.0, spearman=None)
    assert not check_input_agnostic(stds(0.0) + [at_first], CFG).flagged


def test_logit_spread_without_eval_needs_max_steps():
    records = stds(0.01)  # halted_mean_steps 3.0
    v = check_input_agnostic(records, CFG)
    assert not v.flagged and v.reason.startswith("no data")
    assert check_input_agnostic(records, CFG, max_steps=8).flagged
    assert not check_input_agnostic(records, CFG, max_steps=3).flagged  # everyone at M = 3


def test_input_agnostic_without_data():
    for records in ([], train_stream([-1] * 5, [3] * 5)):
        v = check_input_agnostic(records, CFG)
        assert not v.flagged and v.reason.startswith("no data")


# ----------------------------------------------------------------------------- q_miscalibration


def test_q_miscalibration():
    def q(acc):
        return train_stream([-1.0] * 6, [3.0] * 6, q_halt_acc=[acc] * 6)

    bad_probe = check_q_miscalibration(q(0.62), CFG)
    assert bad_probe.flagged and bad_probe.figures["q_halt_acc"] == pytest.approx(0.62)
    assert not check_q_miscalibration(q(0.95), CFG).flagged
    wrong = check_q_miscalibration(q(0.95) + [eval_record(**{**HEALTHY_EVAL, "wrong_halt_frac": 0.4})], CFG)
    assert wrong.flagged and "40.0%" in wrong.reason
    ok = check_q_miscalibration(q(0.95) + [eval_record(**HEALTHY_EVAL)], CFG)
    assert not ok.flagged and ok.figures["wrong_halt_frac"] == pytest.approx(0.05)
    assert check_q_miscalibration([eval_record(**{**HEALTHY_EVAL, "wrong_halt_frac": 0.4})], CFG).flagged


def test_q_miscalibration_without_data():
    no_early_stop = eval_record(exact=0.0, mean_steps=8.0, halt_first_frac=0.0, halt_max_frac=1.0,
                                wrong_halt_frac=None)
    for records in ([], train_stream([-1] * 5, [3] * 5), [no_early_stop]):
        v = check_q_miscalibration(records, CFG)
        assert not v.flagged and v.reason.startswith("no data")


# ----------------------------------------------------------------------------- together


def test_check_health_names_order_and_missing_data():
    verdicts = check_health([], CFG)
    assert [v.name for v in verdicts] == list(VERDICTS)
    assert all(not v.flagged and v.reason.startswith("no data") for v in verdicts)


def test_healthy_run_is_all_clear():
    n = 20
    records = train_stream(np.linspace(-5, 1, n), np.linspace(8, 3, n), halt_logit_std=[1.0] * n,
                           q_halt_acc=[0.93] * n)
    records.append(eval_record(**HEALTHY_EVAL))
    verdicts = check_health(records, CFG)
    assert not any(v.flagged for v in verdicts), [v.reason for v in verdicts]
    assert "all clear" in format_health(verdicts)


def test_format_health_is_a_checklist_with_figures():
    n = 20
    records = train_stream(np.linspace(-3.6, -5.7, n), np.linspace(4, 12, n)) + [eval_record(**HEALTHY_EVAL)]
    md = format_health(check_health(records, CFG))
    assert "- [ ] **drift** (FLAGGED)" in md and "- [x] **collapse** (ok)" in md
    assert "logit_start=-3.6" in md and "steps_end=12" in md
    assert md.count("- [") == len(VERDICTS)


def test_bad_config_is_a_ponder_error():
    with pytest.raises(PonderError):
        check_health([], HaltingHealthConfig(drift_min_records=2))
    with pytest.raises(PonderError):
        HaltingMonitor(HaltingHealthConfig(eval_prefix="valid"), max_steps=16)


# ----------------------------------------------------------------------------- monitor


def test_monitor_prints_new_flags_once_logs_them_and_resumes(tmp_path, capsys):
    log = MetricsLog(tmp_path)
    run = SimpleNamespace(run_dir=tmp_path, log=log, shard=SINGLE)
    n = 20
    drift = train_stream(np.linspace(-3.6, -5.7, n), np.linspace(4, 12, n))
    for r in drift[:3]:
        log.write(r)
    log.write(eval_record(step=150, **HEALTHY_EVAL))
    mon = HaltingMonitor(CFG, max_steps=16)
    mon.on_eval_end(run, {"step": 150})
    assert capsys.readouterr().out == ""  # three records: drift has no data yet, nothing else flags
    for r in drift[3:]:
        log.write(r)
    log.write(eval_record(step=1000, **HEALTHY_EVAL))
    mon.on_eval_end(run, {"step": 1000})
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "drift FLAGGED" in out and "step 1000" in out
    mon.on_eval_end(run, {"step": 1000})  # still flagged: no new line, no new record
    assert capsys.readouterr().out == ""
    flags = [r for r in log.records() if r["kind"] == "halting_flag"]
    assert [(r["step"], r["verdict"]) for r in flags] == [(1000, "drift")]

    state = mon.state_dict()
    assert state == {"flagged": ["drift"]}
    resumed = HaltingMonitor(CFG, max_steps=16)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    resumed.on_eval_end(run, {"step": 1000})
    assert capsys.readouterr().out == ""


def test_one_health_report_holds_the_halting_verdicts(tmp_path):
    from ponder.presets import get_config
    from ponder.runs.config import apply_overrides
    from ponder.runs.run import train_run

    cfg = apply_overrides(get_config("debug"), ["--train.progress=false"])
    train_run(cfg, tmp_path / "run", final_eval=False)
    data = json.loads((tmp_path / "run" / "health.json").read_text())
    assert [v["name"] for v in data["halting"]] == list(VERDICTS)
    assert {c["name"] for c in data["checks"]} >= {"non-finite steps", "gradient norm under limit"}
    md = (tmp_path / "run" / "health.md").read_text()
    assert "## Training health" in md and "## Halting health" in md and "## Controller actions" in md
    assert not (tmp_path / "run" / "halting_health.md").exists()  # one report, not two
    flagged = [v["name"] for v in data["halting"] if v["flagged"]]
    assert data["passed"] == (not flagged and all(c["passed"] is not False for c in data["checks"]))
    assert set(data["halting_first_flagged"]) == set(flagged) or not flagged


def test_running_to_m_before_anything_is_solved_is_not_collapse():
    v = check_collapse([eval_record(exact=0.01, mean_steps=8.0, halt_first_frac=0.0, halt_max_frac=1.0)], CFG)
    assert not v.flagged and "nothing is solved" in v.reason
