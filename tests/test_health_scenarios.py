"""Fault-injection scenarios: each fault produces its controller action with a reason, the run
finishes, and metrics, checkpoints and the health report are intact; resume stays bit-exact with
the controller on."""
import json

import pytest
import torch
from run_support import CrashAt
from run_support import records as _records

from ponder.cli import main
from ponder.core.errors import PonderError
from ponder.health import faults
from ponder.presets import get_config
from ponder.runs.config import apply_overrides
from ponder.runs.run import train_run
from ponder.training.checkpoint import load_checkpoint, resolve_checkpoint

BASE = ["--train.steps=40", "--health.controller=true", "--health.window=5", "--health.attention_every=5",
        "--health.ramp=halt_weight:0.1:0.5", "--health.ramp_steps=40", "--health.recovery=0.5"]


def _run(tmp_path, callbacks, *overrides, steps=40):
    cfg = apply_overrides(get_config("debug"), [*BASE, f"--train.steps={steps}", *overrides])
    train_run(cfg, tmp_path, callbacks=callbacks, final_eval=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return records, [r for r in records if r["kind"] == "action"]


def _intact(run_dir, records, steps=40):
    """The run finished: last train record at the last step, a loadable final checkpoint with
    finite weights, and a health report listing the same actions as the log."""
    assert max(r["step"] for r in records if r["kind"] == "train") == steps
    ckpt = load_checkpoint(resolve_checkpoint(run_dir))
    assert ckpt["state"]["step"] == steps
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())
    report = json.loads((run_dir / "health.json").read_text())
    assert len(report["actions"]) == sum(r["kind"] == "action" for r in records)
    return report


def _check(report, name):
    return next(c for c in report["checks"] if c["name"] == name)


def test_clean_run_takes_no_action_and_tracks_the_ramp(tmp_path):
    records, actions = _run(tmp_path, [])
    assert actions == []
    ctrl = [r for r in records if r["kind"] == "controller"]
    assert [round(r["ramp_halt_weight"], 4) for r in ctrl][-1] == pytest.approx(0.1 + 0.4 * 39 / 40)
    report = _intact(tmp_path, records)
    for name in ("non-finite steps", "gradient norm under limit", "no loss spikes", "attention never collapsed",
                 "logits bounded"):
        assert _check(report, name)["passed"] is True, name
    assert _check(report, "adapter delta norm under limits")["passed"] is None  # no adapter: no data


def test_nan_gradients_pause_the_ramp_and_weights_are_held(tmp_path):
    records, actions = _run(tmp_path, [faults.NaNGradients([12, 13, 14])])
    first = actions[0]
    assert (first["step"], first["action"]) == (15, "pause")
    assert "3 non-finite steps" in first["reason"]
    held = first["detail"]["held"]["halt_weight"]
    ctrl = {r["step"]: r for r in records if r["kind"] == "controller"}
    assert ctrl[15]["ramp_halt_weight"] == ctrl[20]["ramp_halt_weight"] == held  # held, not lowered
    assert [a["action"] for a in actions][1:3] == ["resume", "recover"]
    assert ctrl[25]["ramp_halt_weight"] > held
    train_rec = [r for r in records if r["kind"] == "train"]
    assert train_rec[-1]["skipped_steps"] == 3
    _intact(tmp_path, records)


def test_persistent_nan_rolls_back_to_a_good_snapshot_with_a_lower_lr(tmp_path):
    records, actions = _run(tmp_path, [faults.NaNGradients(range(16, 27))])
    rollback = next(a for a in actions if a["action"] == "rollback")
    assert rollback["step"] == 25 and rollback["detail"]["to_step"] == 15
    assert rollback["detail"]["lr_mult"] == 0.5
    lrs = {r["step"]: r["lr"] for r in records if r["kind"] == "train"}
    assert lrs[30] == pytest.approx(0.5 * 3e-3)  # debug LR 3e-3 halved after the rollback
    assert lrs[40] == pytest.approx(0.5 * 3e-3)  # and never given back above that safe level
    _intact(tmp_path, records)


def test_loss_spike_backs_off_the_lr_and_pauses(tmp_path):
    records, actions = _run(tmp_path, [faults.LossSpike([23])])
    kinds = [(a["step"], a["action"]) for a in actions]
    assert (25, "lr_backoff") in kinds and (25, "pause") in kinds
    assert "loss spikes" in actions[0]["reason"]
    assert any(a["action"] == "lr_restore" for a in actions)
    _intact(tmp_path, records)


def test_exploding_adapter_delta_is_clamped_and_rolled_back(tmp_path):
    records, actions = _run(tmp_path, [faults.ExplodeAdapter([23])], "--model.adapter_rank=4")
    health = {r["step"]: r for r in records if r["kind"] == "health"}
    assert health[25]["adapter_norm_max"] > 1000 * health[20]["adapter_norm_max"]
    rollback = next(a for a in actions if a["action"] == "rollback")
    assert rollback["step"] == 25 and "kill level" in rollback["reason"]
    assert health[40]["adapter_norm_max"] < 9.0  # back under the critical level after the rollback
    report = _intact(tmp_path, records)
    assert _check(report, "adapter delta norm under limits")["passed"] is False


def test_forced_attention_collapse_is_detected_and_backs_off(tmp_path):
    records, actions = _run(tmp_path, [faults.CollapseAttention([25])])
    first = actions[0]
    assert (first["step"], first["action"]) == (25, "lr_backoff")
    assert "attention collapse in net.blocks.0.mixer" in first["reason"]
    report = _intact(tmp_path, records)
    assert _check(report, "attention never collapsed")["passed"] is False


def test_accuracy_drop_backs_off_and_pauses_the_ramp(tmp_path):
    records, actions = _run(tmp_path, [faults.ScrambleReadout([28])], steps=45)
    kinds = [(a["step"], a["action"]) for a in actions]
    assert kinds[:2] == [(30, "lr_backoff"), (30, "pause")]
    assert "accuracy EMA" in actions[0]["reason"] and "below its best" in actions[0]["reason"]
    ctrl = {r["step"]: r for r in records if r["kind"] == "controller"}
    assert ctrl[30]["ramp_halt_weight"] == ctrl[35]["ramp_halt_weight"]  # held while accuracy is down
    _intact(tmp_path, records, steps=45)


def test_nan_streak_aborts_with_an_emergency_checkpoint(tmp_path, capsys):
    cfg = apply_overrides(get_config("debug"), ["--health.abort_streak=6"])
    with pytest.raises(PonderError, match="training aborted at step 17: 6 non-finite steps in a row"):
        train_run(cfg, tmp_path, callbacks=[faults.NaNGradients(range(12, 100))], final_eval=False)
    assert load_checkpoint(resolve_checkpoint(tmp_path))["state"]["step"] == 17
    assert "non-finite steps | FAIL" in (tmp_path / "health.md").read_text()


def test_resume_is_bit_exact_with_the_controller_acting(tmp_path):
    # window 3: the checkpoint at step 20 falls mid-window, so queued monitor events are saved too
    cfg = apply_overrides(get_config("debug"), [*BASE, "--train.ema_decay=0.9", "--health.window=3"])
    fault = [faults.LossSpike([13])]
    train_run(cfg, tmp_path / "a", callbacks=fault, final_eval=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(cfg, tmp_path / "b", callbacks=[*fault, CrashAt(27)], final_eval=False)  # after checkpoint 20
    train_run(cfg, tmp_path / "b", resume=True, callbacks=fault, final_eval=False)
    a, b = _records(tmp_path / "a"), _records(tmp_path / "b")
    assert any(r["kind"] == "action" and r["step"] > 20 for r in a)  # the controller acts after the resume point
    assert a == b
    wa, wb = (load_checkpoint(resolve_checkpoint(tmp_path / x)) for x in "ab")
    assert all(torch.equal(wa["model"][k], wb["model"][k]) for k in wa["model"])


def test_health_command_rebuilds_the_report_and_rejects_bad_dirs(tmp_path, capsys):
    _run(tmp_path / "run", [faults.LossSpike([23])])
    (tmp_path / "run" / "health.md").unlink()
    assert main(["health", str(tmp_path / "run")]) in (0, 1)
    out = capsys.readouterr().out
    assert "| gradient norm under limit | FAIL |" in out and "**lr_backoff**" in out
    assert (tmp_path / "run" / "health.md").exists()
    assert main(["health", str(tmp_path / "missing")]) == 2
    assert "ponder: error: no such run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["health", str(tmp_path / "empty")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
