"""TensorBoard event files mirror the metrics log (scalars, step histograms, controller text) and
are cut back on resume like the JSONL."""
import json
from pathlib import Path

import pytest
from run_support import CrashAt

from ponder.core.errors import PonderError
from ponder.presets import get_config
from ponder.runs.config import apply_overrides
from ponder.runs.run import train_run
from ponder.training.callbacks import MetricsLog
from ponder.training.tensorboard import TensorBoardMirror, tensorboard_available

pytestmark = pytest.mark.skipif(not tensorboard_available(), reason="the tensorboard extra is not installed")
if tensorboard_available():
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def _events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def _scalar(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _jsonl(run_dir, kind, key):
    return [(r["step"], r[key]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == kind and r.get(key) is not None]


def test_events_mirror_the_log(tmp_path):
    cfg = apply_overrides(get_config("debug"), ["--train.steps=20"])
    train_run(cfg, tmp_path / "run", final_eval=False)
    acc = _events(tmp_path / "run")
    for kind, key in (("train", "loss"), ("eval", "test_cell"), ("train", "halted_mean_steps")):
        got, want = _scalar(acc, f"{kind}/{key}"), _jsonl(tmp_path / "run", kind, key)
        assert [s for s, _ in got] == [s for s, _ in want]
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)
    hist = acc.Histograms("eval/test_steps_histogram")
    assert hist and hist[-1].histogram_value.num == cfg.eval.during_training_samples  # one count per sample


def test_actions_and_flags_become_text_and_nested_figures_scalars(tmp_path):
    log = MetricsLog(tmp_path, mirror=TensorBoardMirror(tmp_path))
    log.write({"step": 7, "kind": "action", "action": "lr_backoff", "causes": ["loss_spike"], "reason": "spike"})
    log.write({"step": 8, "kind": "health", "attention": {"net.blocks.0": {"entropy": 1.5}}, "grad_norm_mean": 2.0})
    log.mirror.close()
    acc = _events(tmp_path)
    assert _scalar(acc, "health/attention/net.blocks.0/entropy") == [(8, 1.5)]
    assert "controller/text_summary" in acc.Tags()["tensors"]


def test_resume_purges_events_after_the_checkpoint(tmp_path):
    cfg = apply_overrides(get_config("debug"), ["--train.steps=20"])
    with pytest.raises(RuntimeError):
        train_run(cfg, tmp_path / "r", callbacks=[CrashAt(15)], final_eval=False)  # checkpoint at 10
    train_run(cfg, tmp_path / "r", resume=True, final_eval=False)
    steps = [s for s, _ in _scalar(_events(tmp_path / "r"), "train/loss")]
    assert steps == [5, 10, 15, 20]  # step 15 of the crashed session is not there twice


def test_on_without_the_package_is_refused(monkeypatch):
    monkeypatch.setattr("ponder.training.train_config.tensorboard_available", lambda: False)
    with pytest.raises(PonderError, match="tensorboard package is not installed"):
        apply_overrides(get_config("debug"), ["--train.tensorboard=on"]).validate()
