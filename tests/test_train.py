"""The training loop: exact resume (in-process crash, Ctrl-C, and a killed process), non-finite
steps refused, every delivered sample supervised, halting learns."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from run_support import CrashAt
from run_support import records as _records

import ponder.training.in_training as in_training
import ponder.training.objectives as objectives
from ponder.core.errors import PonderError
from ponder.presets import get_config
from ponder.runs.config import apply_overrides
from ponder.reports.page import build_page
from ponder.runs.run import train_run
from ponder.training.checkpoint import load_checkpoint, resolve_checkpoint
from ponder.training.in_training import evaluation_cost, target_reached

ROOT = Path(__file__).resolve().parents[1]


def _cfg(*overrides):
    return apply_overrides(get_config("debug"), ["--train.schedule=cosine", "--train.ema_decay=0.9", *overrides])


def test_resume_after_crash_equals_uninterrupted_run(tmp_path):
    train_run(_cfg(), tmp_path / "a", final_eval=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(_cfg(), tmp_path / "b", callbacks=[CrashAt(25)], final_eval=False)  # after checkpoint 20
    train_run(_cfg(), tmp_path / "b", resume=True, final_eval=False)
    a, b = _records(tmp_path / "a"), _records(tmp_path / "b")
    assert len(a) == len(b) > 5
    assert a == b
    wa = load_checkpoint(resolve_checkpoint(tmp_path / "a"))
    wb = load_checkpoint(resolve_checkpoint(tmp_path / "b"))
    assert all(torch.equal(wa["model"][k], wb["model"][k]) for k in wa["model"])


class InterruptAt:
    def __init__(self, step):
        self.step = step

    def on_step_end(self, run, metrics):
        if metrics["step"] == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_checkpoints_then_resumes_exactly(tmp_path):
    train_run(_cfg(), tmp_path / "a", final_eval=False)
    with pytest.raises(PonderError, match="interrupted at step 7; checkpoint saved"):
        train_run(_cfg(), tmp_path / "b", callbacks=[InterruptAt(7)], final_eval=False)
    assert resolve_checkpoint(tmp_path / "b").name == "step-0000007"
    train_run(_cfg(), tmp_path / "b", resume=True, final_eval=False)
    assert _records(tmp_path / "a") == _records(tmp_path / "b")


def _cli(*args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "ponder", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_killed_process_resumes_to_identical_metrics(tmp_path):
    """SIGKILL (no chance to clean up) mid-run; resuming reproduces the uninterrupted metrics."""
    common = ["--train.steps=40", "--train.checkpoint_every=5", "--train.eval_every=10", "--eval.max_samples=16"]
    full = _cli("train", "debug", "--run-dir", str(tmp_path / "full"), *common)
    assert full.wait(timeout=240) == 0, full.stderr.read()
    victim = _cli("train", "debug", "--run-dir", str(tmp_path / "killed"), *common)
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 240
    while time.time() < deadline and victim.poll() is None:
        if latest.exists() and latest.read_text().strip() >= "step-0000015":
            break
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    resumed = _cli("train", "--resume", str(tmp_path / "killed"))
    assert resumed.wait(timeout=240) == 0, resumed.stderr.read()
    assert _records(tmp_path / "full") == _records(tmp_path / "killed")


def test_non_finite_loss_is_skipped_and_counted(tmp_path, monkeypatch):
    real = objectives.per_sample_task_loss
    calls = {"n": 0}

    def sometimes_nan(logits, labels, kind):
        calls["n"] += 1
        loss = real(logits, labels, kind)
        return loss * float("nan") if calls["n"] in (3, 4) else loss

    monkeypatch.setattr(objectives, "per_sample_task_loss", sometimes_nan)
    train_run(_cfg(), tmp_path, final_eval=False)
    last = [r for r in _records(tmp_path) if r["kind"] == "train"][-1]
    assert last["skipped_steps"] == 2 and last["samples_dropped"] == 0
    weights = load_checkpoint(resolve_checkpoint(tmp_path))["model"]
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_every_delivered_sample_is_supervised(tmp_path):
    train_run(_cfg(), tmp_path, final_eval=False)
    state = load_checkpoint(resolve_checkpoint(tmp_path))["state"]
    c = state["objective"]["counters"]
    in_flight = int((~state["objective"]["carry"]["needs_sample"]).sum())
    # every sample taken either finished (halted) or is still in a slot: none dropped
    assert c["samples_taken"] == c["samples_completed"] + in_flight
    assert state["stream"]["delivered"] == c["samples_taken"]
    assert c["steps_completed_total"] >= c["samples_completed"]


def test_existing_run_dir_is_refused(tmp_path):
    train_run(_cfg("--train.steps=10"), tmp_path, final_eval=False)
    with pytest.raises(PonderError, match="already holds a run"):
        train_run(_cfg("--train.steps=10"), tmp_path, final_eval=False)


def test_resume_with_another_model_is_refused(tmp_path):
    train_run(_cfg("--train.steps=10"), tmp_path, final_eval=False)
    with pytest.raises(PonderError, match="model.d_model would change the task or model of the run"):
        train_run(_cfg("--model.d_model=64"), tmp_path, resume=True, final_eval=False)


def test_golden_metrics_of_debug_preset(tmp_path):
    """The debug preset's metrics (every train and eval record, and the final held-out report)
    equal those measured before the core was restructured (tests/golden/debug_preset.json):
    the composed step, the run layer and the task protocol changed no number. Tolerances: BLAS
    differences across CPUs for losses; accuracies on 64 samples must agree to one sample."""
    golden = json.loads((Path(__file__).parent / "golden" / "debug_preset.json").read_text())
    report = train_run(get_config("debug"), tmp_path)
    records = _records(tmp_path)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [g["step"] for g in golden["train"]]
    assert [r["step"] for r in evals] == [g["step"] for g in golden["eval"]]
    for got, want in zip(train, golden["train"]):
        for key, value in want.items():
            assert got[key] == pytest.approx(value, abs=2e-3), (got["step"], key)
    for got, want in zip(evals, golden["eval"]):
        for key, value in want.items():
            assert got[key] == pytest.approx(value, abs=1 / 64 + 1e-9), (got["step"], key)
    final = report["held_out"]
    for key, value in golden["final_report"].items():
        assert final[key] == pytest.approx(value, abs=1 / 64 + 1e-9), key


def test_init_from_loads_matching_tensors_and_reports_the_rest(tmp_path, capsys):
    from ponder.cli import main

    src = tmp_path / "src"
    assert main(["train", "debug", "--run-dir", str(src), "--train.steps=10"]) == 0
    dst = tmp_path / "dst"  # a wider readout is impossible; a bigger halting budget and more cycles are fine
    assert main(["train", "debug", "--run-dir", str(dst), "--init-from", str(src), "--train.steps=5",
                 "--halt.max_steps=8", "--model.h_cycles=3", "--model.positions=learned"]) == 0
    report = json.loads((dst / "init_from.json").read_text())
    assert "pos" in report["newly_initialised"] and not report["unexpected"] and not report["shape_mismatched"]
    assert "readout.weight" in report["loaded"]
    captured = capsys.readouterr()
    assert "init-from" in captured.out + captured.err


def test_extend_steps_continues_a_finished_run(tmp_path, capsys):
    from ponder.cli import main

    run = tmp_path / "run"
    assert main(["train", "debug", "--run-dir", str(run), "--train.steps=10"]) == 0
    assert main(["train", "--resume", str(run), "--extend-steps", "6"]) == 0
    assert resolve_checkpoint(run).name == "step-0000016"
    assert main(["train", "debug", "--run-dir", str(tmp_path / "x"), "--extend-steps", "3"]) == 2
    assert "use it with --resume" in capsys.readouterr().err


@pytest.mark.parametrize("style", ["trm", "hrm"])
def test_single_cycle_deep_supervision_trains_the_init_vectors(tmp_path, style):
    # T=1 differentiates the first net call, so the refill mask is saved by autograd; it must not
    # be mutated afterwards (regression: "modified by an inplace operation")
    cfg = _cfg(f"--model.style={style}", "--model.h_cycles=1", "--model.l_cycles=1", "--train.steps=6",
               "--train.eval_every=0", "--train.checkpoint_every=0")
    record = train_run(cfg, tmp_path, final_eval=False)
    assert math.isfinite(record["loss"])


def test_in_training_evaluation_scores_fixed_subsets_and_logs_its_seconds(tmp_path):
    """Each in-training evaluation scores the same `eval.during_training_samples` held-out samples
    (and as many training samples), at the inference batch size, and logs its wall time; the
    page shows what evaluating cost."""
    train_run(_cfg("--eval.during_training_samples=16", "--eval.train_samples=40"), tmp_path, final_eval=False)
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in log if r["kind"] == "eval"]
    assert len(evals) == 3
    for r in evals:
        assert sum(r["test_steps_histogram"]) == 16 and sum(r["train_steps_histogram"]) == 16
        assert r["time_eval_sec"] > 0 and "full_test_exact" not in r  # no target: nothing to confirm
    cost = evaluation_cost(log)
    assert cost["evaluations"] == 3 and cost["seconds"] == pytest.approx(sum(r["time_eval_sec"] for r in evals))
    assert 0 < cost["share"] < 1
    assert 'data-key="eval_cost"' in build_page([tmp_path])


def test_evaluation_cost_sums_the_sessions_of_a_resumed_run():
    evals = [{"kind": "eval", "step": 10, "time_since_start": 10.0, "time_eval_sec": 1.0},
             {"kind": "eval", "step": 20, "time_since_start": 21.0, "time_eval_sec": 1.0},
             {"kind": "eval", "step": 30, "time_since_start": 8.0, "time_eval_sec": 2.0},  # resumed at step 20
             {"kind": "train", "step": 30}]
    cost = evaluation_cost(evals)
    assert cost == {"evaluations": 3, "seconds": 4.0, "loop_seconds": 22.0 + 10.0, "share": 4.0 / 32.0}
    assert evaluation_cost([{"kind": "eval", "step": 1}]) is None  # logged before evaluations were timed
    assert in_training.wall_seconds([*evals[:2], {"kind": "train", "step": 25}, evals[2]]) == [10.0, 21.0, None, 30.0]


@pytest.mark.parametrize("full_exact, stops_at", [(1.0, 10), (0.5, 30)])
def test_a_target_reached_on_the_subset_is_confirmed_on_the_whole_split(tmp_path, monkeypatch, full_exact,
                                                                          stops_at):
    """train.target stops training only when the whole held-out split confirms what the subset
    says: the subset's score (here always 1.0) starts a whole-split evaluation, whose score decides."""
    cfg = _cfg("--eval.during_training_samples=16", "--train.target=0.9")
    real = in_training.evaluate_split
    sizes = []

    def scored(model, split, metric, **kw):
        r = real(model, split, metric, **kw)
        sizes.append(len(split))
        return {**r, "exact": full_exact if len(split) == cfg.task.n_test else 1.0}

    monkeypatch.setattr(in_training, "evaluate_split", scored)
    train_run(cfg, tmp_path, final_eval=False)
    evals = [r for r in _records(tmp_path) if r["kind"] == "eval"]
    assert evals[-1]["step"] == stops_at
    assert all(r["test_exact"] == 1.0 and r["full_test_exact"] == full_exact for r in evals)
    assert sizes[:3] == [16, 16, cfg.task.n_test]  # held-out subset, training subset, whole held-out split


def test_a_subset_within_its_sampling_error_of_the_target_has_the_whole_split_scored():
    cfg = _cfg("--train.target=0.99")
    assert in_training._may_reach(0.98, 100, cfg) and in_training._may_reach(0.99, 100, cfg)  # 98/100: 99% not ruled out
    assert not in_training._may_reach(0.90, 100, cfg) and not in_training._may_reach(0.98, 2000, cfg)
    assert not in_training._may_reach(None, 100, cfg)


def test_a_target_reached_on_the_whole_split_needs_no_confirmation(tmp_path):
    cfg = _cfg("--eval.during_training_samples=0", "--train.target=0.01")  # the whole split every time
    train_run(cfg, tmp_path, final_eval=False)
    evals = [r for r in _records(tmp_path) if r["kind"] == "eval"]
    assert all("full_test_exact" not in r for r in evals)
    assert target_reached(evals[-1], "exact", cfg) == (evals[-1]["test_exact"] >= 0.01)
