"""Run directories written before the package layout changed still load, evaluate and resume.

tests/fixtures/runs_before_layout/ holds two runs written by ponder as it was before the modules
moved into core/, training/, tasks/ and the other floors: a `debug` run (the recursive reasoner
on 4x4 Sudoku) and a recurrent-cell parity run (PonderNet), each trained 10 steps with a
checkpoint every 5 and then cut back to the step-5 checkpoint as an interrupted run would be.
`expected_metrics.jsonl` is what the uninterrupted run logged. Resuming must reproduce it exactly
(timings aside), and the trained weights must load for evaluation.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ponder.runs.config import load_config
from ponder.runs.run import train_run
from ponder.runs.trained import load_trained

FIXTURES = Path(__file__).parent / "fixtures" / "runs_before_layout"


def _comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if "second" not in k and "time" not in k}


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("name", ["debug", "cell"])
def test_a_run_written_before_the_move_resumes_exactly(tmp_path, name):
    run_dir = tmp_path / name
    shutil.copytree(FIXTURES / name, run_dir)
    expected = _records(run_dir / "expected_metrics.jsonl")
    cfg = load_config(run_dir / "config.json")
    cfg.train.progress = False
    train_run(cfg, run_dir, resume=True, final_eval=False)
    got = _records(run_dir / "metrics.jsonl")
    assert [(r["step"], r["kind"]) for r in got] == [(r["step"], r["kind"]) for r in expected]
    assert [_comparable(r) for r in got] == [_comparable(r) for r in expected]


@pytest.mark.parametrize("name", ["debug", "cell"])
def test_a_run_written_before_the_move_loads_for_evaluation(name):
    model, task, cfg, ckpt = load_trained(FIXTURES / name)
    assert ckpt.name == "step-0000005"
    assert cfg.preset and task.name in ("sudoku", "parity")
    assert sum(p.numel() for p in model.parameters()) > 0
