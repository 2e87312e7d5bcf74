"""Health verdicts a user can act on: the debug preset, trained as it ships, gets a clean bill from
`ponder health` (exit 0; the default demo preset's clean bill is checked by `make bench`, whose
demo section runs it, since training it to its target takes minutes); a failing check says where
and how much (the fault scenarios of tests/test_health_scenarios.py still fail)."""
from __future__ import annotations

import json

import pytest

from ponder.cli import main
from ponder.health.report import build_checks
from ponder.presets import get_config


@pytest.mark.parametrize("preset", ["debug"])
def test_the_shipped_presets_get_a_clean_bill(tmp_path, preset, capsys):
    run = tmp_path / preset
    assert main(["train", preset, "--run-dir", str(run), "--train.progress=false"]) == 0
    capsys.readouterr()
    code = main(["health", str(run)])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads((run / "health.json").read_text())
    assert report["passed"] and not [c["name"] for c in report["checks"] if c["passed"] is False]


def _spike_check(steps: int, where: list[list]):
    """The "no loss spikes" check of a run of `steps` logged steps with these spikes."""
    records = [{"step": s, "kind": "train", "loss": 1.0} for s in range(1, steps + 1)]
    records.append({"step": steps // 2, "kind": "health", "spikes": len(where), "where": {"spikes": where}})
    (check,) = [c for c in build_checks(records, get_config("debug")) if c.name == "no loss spikes"]
    return check


def test_a_failing_spike_check_says_where_and_how_much():
    check = _spike_check(100, [[37, 6.5]])
    assert check.passed is False and "step 37 (6.5x)" in check.summary
    assert check.figures["where"] == [[37, 6.5]] and check.figures["worst_ratio"] == 6.5


def test_a_small_isolated_spike_is_listed_but_passes():
    check = _spike_check(1000, [[437, 2.2]])
    assert check.passed is True and "step 437 (2.2x)" in check.summary
