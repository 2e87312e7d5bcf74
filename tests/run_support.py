"""Shared by the resume tests: a crashing callback, a run's metric records without timings, and
the check that a crashed and resumed run equals an uninterrupted one."""
import json
from pathlib import Path

import pytest
import torch


class CrashAt:
    """Callback that raises at the end of optimizer step `step` (a simulated crash)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, run, metrics):
        if metrics["step"] == self.step:
            raise RuntimeError("simulated crash")


def records(run_dir):
    """RUN_DIR/metrics.jsonl as dicts, without the `time_*` fields (which differ between runs)."""
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time_")}
            for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def assert_resume_matches(cfg, done_dir, resumed_dir, crash_at):
    """Train `cfg` into `resumed_dir` with a crash at step `crash_at`, resume it, and check that its
    records and final weights equal those of the uninterrupted run already in `done_dir`."""
    from ponder.runs.run import train_run
    from ponder.training.checkpoint import load_checkpoint, resolve_checkpoint
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(cfg, resumed_dir, callbacks=[CrashAt(crash_at)], final_eval=False)
    train_run(cfg, resumed_dir, resume=True, final_eval=False)
    assert records(done_dir) == records(resumed_dir)
    wa = load_checkpoint(resolve_checkpoint(done_dir))["model"]
    wb = load_checkpoint(resolve_checkpoint(resumed_dir))["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
