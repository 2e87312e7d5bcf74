"""Shared by the resume tests: a crashing callback and a run's metric records without timings."""
import json
from pathlib import Path


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
