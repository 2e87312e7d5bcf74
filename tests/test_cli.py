"""Bad input gets one line `ponder: error: ...` and exit status 2, never a traceback."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ponder.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, [line for line in err if not line.startswith("run directory:")]


@pytest.mark.parametrize("argv, message", [
    (["train", "nope"], "unknown preset 'nope'"),
    (["train", "debug", "--train.nope=1"], "unknown key 'nope' in section 'train'; valid:"),
    (["train", "debug", "--train.steps=many"], "--train.steps expects int"),
    (["train", "debug", "--task.min_givens=1"], "givens"),
    (["train", "debug", "--model.mixer=conv"], "mixer"),
    (["eval", "no/such/run"], "no such run or checkpoint"),
    (["train", "--resume", "no/such/run"], "not a run directory"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, message):
    argv = [a.replace("no/such/run", str(tmp_path / "missing")) for a in argv]
    if argv[0] == "train" and "--resume" not in argv:
        argv += ["--run-dir", str(tmp_path / "run")]
    code, err = _run(capsys, *argv)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("ponder: error:") and message in err[0], err


def test_train_then_eval_then_errors_on_damaged_or_foreign_runs(capsys, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "debug", "--run-dir", str(run), "--train.steps=10"]) == 0
    out = capsys.readouterr().out
    assert "baseline: copy input" in out and "adaptive halting" in out
    assert (run / "eval" / "report.json").exists() and (run / "eval" / "accuracy_vs_steps.png").exists()
    samples = (run / "eval" / "samples.html").read_text()  # held-out samples drawn by the task's renderer
    assert samples.count("<svg") == 8 and samples.count('class="panel"') == 3 * 8 and "<script" not in samples
    assert main(["eval", str(run)]) == 0
    capsys.readouterr()
    code, err = _run(capsys, "train", "demo", "--resume", str(run))
    assert code == 2 and "is a run of preset 'debug', not 'demo'" in err[0]
    ckpt = next(p for p in (run / "checkpoints").iterdir() if p.is_dir())
    blob = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(blob[:100])
    code, err = _run(capsys, "eval", str(ckpt))
    assert code == 2 and len(err) == 1 and "corrupt or truncated" in err[0]


def test_presets_lists_one_line_each(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("demo") and "(default)" in line for line in lines)
    assert all(len(line.split()) >= 3 for line in lines)


def test_console_entry_point_has_no_traceback():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "ponder", "train", "nope"], env=env, capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == "ponder: error: unknown preset 'nope'; valid: " + p.stderr.split("valid: ")[1].strip()
