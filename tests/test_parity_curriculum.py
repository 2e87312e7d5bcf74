"""The parity task's curriculum over the number of non-zeros: the settings are checked, the
stream draws only admitted samples, the limit rises on the logged training figure, and a resumed
run follows the same curriculum as an uninterrupted one."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from run_support import assert_resume_matches, records

from ponder.core.errors import PonderError
from ponder.core.task import Curriculum
from ponder.presets import get_config
from ponder.runs.config import apply_overrides
from ponder.runs.run import train_run
from ponder.tasks import build_task
from ponder.tasks.parity.task import ParityConfig
from ponder.training.carry import SampleStream

SMALL = ["--task.length=8", "--task.n_train=2000", "--task.n_test=64", "--halt.max_steps=4",
         "--model.d_model=16", "--model.embed_dim=8", "--train.batch_size=16", "--train.steps=12",
         "--train.eval_every=6", "--train.checkpoint_every=6", "--train.log_every=2", "--train.progress=false",
         "--eval.train_samples=32", "--eval.during_training_samples=32", "--eval.batch_size=64", "--train.lr=0.01"]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PONDER_CACHE_DIR", str(tmp_path / "cache"))


def _cfg(*overrides):
    return apply_overrides(get_config("parity64-rnn"), [*SMALL, *overrides])


def test_settings_are_checked_and_none_is_ignored():
    with pytest.raises(PonderError, match="curriculum_start"):
        ParityConfig(length=8, n_train=100, n_test=10, split="extrapolation", curriculum=True,
                     curriculum_start=5).validate()
    with pytest.raises(PonderError, match="curriculum"):  # set while the curriculum is off
        ParityConfig(length=8, n_train=100, n_test=10, curriculum_factor=2.0).validate()
    with pytest.raises(PonderError):
        ParityConfig(length=8, n_train=100, n_test=10, curriculum=True, curriculum_factor=1.0).validate()
    with pytest.raises(PonderError, match="log_every"):  # nothing logged: it could never rise
        _cfg("--train.log_every=0").validate()
    task = build_task(ParityConfig(length=8, n_train=100, n_test=10, split="extrapolation", curriculum=True))
    assert task.curriculum == Curriculum(start=2, top=4, factor=1.25, threshold=0.95)
    assert build_task(ParityConfig(length=8, n_train=100, n_test=10)).curriculum is None


def test_rises_multiply_add_at_least_one_and_stop_at_the_top():
    c = Curriculum(start=2, top=64, factor=1.25, threshold=0.95)
    limits = [2.0]
    while limits[-1] < 64:
        limits.append(c.raised(limits[-1]))
    assert limits[:6] == [2, 3, 4, 5, 7, 9] and limits[-1] == 64


def test_the_stream_draws_only_admitted_samples_and_resumes():
    task = build_task(ParityConfig(length=8, n_train=2000, n_test=64))
    stream = SampleStream(task.train, seed=0, augment=None, limit=2)
    assert (stream.take(500).difficulty <= 2).all()
    stream.set_limit(5)
    state = stream.state_dict()
    a = stream.take(300)
    assert (a.difficulty <= 5).all() and (a.difficulty > 2).any()
    other = SampleStream(task.train, seed=0, augment=None)
    other.load_state_dict(state)
    assert torch.equal(other.take(300).inputs, a.inputs)


def test_the_limit_rises_in_a_run_and_resume_equals_an_uninterrupted_run(tmp_path):
    # a threshold every logged step passes: the limit rises at each logged step (every 2 steps)
    cfg = _cfg("--task.curriculum_threshold=0.01")
    train_run(cfg, tmp_path / "a", final_eval=False)
    limits = [r["curriculum_limit"] for r in records(tmp_path / "a") if r["kind"] == "train"]
    assert limits == sorted(limits) and limits[0] > 2 and limits[-1] == 8
    assert_resume_matches(cfg, tmp_path / "a", tmp_path / "b", crash_at=9)  # after checkpoint 6


def test_figures_of_logged_steps_only_and_stops_of_every_step(tmp_path):
    cfg = _cfg("--task.curriculum_threshold=1.0")
    train_run(cfg, tmp_path / "r", final_eval=False)
    train = [r for r in records(tmp_path / "r") if r["kind"] == "train"]
    assert {r["curriculum_limit"] for r in train} <= {2.0, 3.0}
    # the deployed answer is scored on the logged steps, the stopping step counted on every step
    assert all("step_exact" in r and 1 <= r["halted_mean_steps"] <= 4 for r in train)
    assert train[-1]["samples_completed"] == 12 * 16
    assert np.isfinite([r["halt_logit_mean"] for r in train]).all()


def test_deep_supervision_rises_on_logged_steps_only(tmp_path):
    # Q-halt trains one ACT step at a time and reports its figures on every step; the curriculum
    # still judges only the logged ones: one rise per log record at most
    cfg = _cfg("--task.curriculum_threshold=0.01", "--halt.kind=q_halt", "--train.steps=6")
    train_run(cfg, tmp_path / "q", final_eval=False)
    limits = [2.0] + [r["curriculum_limit"] for r in records(tmp_path / "q") if r["kind"] == "train"]
    rise = Curriculum(start=2, top=8, factor=1.25, threshold=0.01).raised
    assert all(b in (a, rise(a)) for a, b in zip(limits, limits[1:])) and limits[-1] > 2
