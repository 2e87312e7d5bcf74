"""Every command on every kind of run.

For each preset family (Sudoku, maze, parity, recurrent cell, hybrid LM, recursive LM, ARC
demonstrations, ARC embedding) a tiny run is trained, and another is left as a run interrupted
before its first log line. Each is looked at with every command that applies to it: `eval` with
and without overrides and `--split`, `report` with samples, `health`, `diagnose gradients`,
`generate`, `arc eval` and `train --resume`. Each command exits cleanly or refuses in one line;
a command that does not apply to a kind says in one line what it applies to. The page of each run
opens in a real browser with no console error and shows the run's own figures in their own units.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from browser_support import open_browser, why_no_browser
from kinds_support import KINDS

from ponder.cli import main
from ponder.core.metrics import FRACTION, figure_formats
from ponder.tasks import TASKS

ARC_KINDS = ("ARC demonstrations", "ARC embedding")
LM_KINDS = ("hybrid LM", "recursive LM")


def _call(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _refused_in_one_line(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ponder: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _head_and_format(run_dir: Path) -> tuple[str, str]:
    config = json.loads((run_dir / "config.json").read_text())
    metric = TASKS.get(config["task"]["name"]).metric
    return metric.columns[0], figure_formats(metric)[metric.columns[0]]


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_command_on_a_finished_run(runs, kind, capsys):
    run = runs[kind]["finished"]
    config = json.loads((run / "config.json").read_text())
    head, fmt = _head_and_format(run)
    own = (run / "eval" / "report.json").read_text()
    # eval: the run's own evaluation, then two evaluations beside it that say what they measured
    code, out, err = _call(capsys, "eval", run, "--quiet")
    assert code == 0, err
    about = json.loads((run / "eval" / "report.json").read_text())["evaluation"]
    assert about["split"] == "test" and about["overrides"] == []
    has_head = kind != "hybrid LM"  # the hybrid LM runs every layer once: it has no halting head
    threshold = ["--halt.threshold=0.9"] if has_head and "threshold" in config["halt"] else []
    for args, folder in ((["--split", "train"], "split-train"),
                         ([*threshold, "--eval.batch_size=7"], "+".join([*(t[2:] for t in threshold),
                                                                          "eval.batch_size=7"]))):
        before = (run / "eval" / "report.json").read_text()
        code, out, err = _call(capsys, "eval", run, *args, "--quiet")
        assert code == 0, (args, err)
        written = run / "eval" / folder / "report.json"
        assert written.exists(), (kind, sorted(p.name for p in (run / "eval").iterdir()))
        recorded = json.loads(written.read_text())["evaluation"]
        assert recorded["split"] == ("train" if "--split" in args else "test")
        assert recorded["overrides"] == [a for a in args if a.startswith("--") and "=" in a]
        if threshold and "--split" not in args:
            assert recorded["halt"]["threshold"] == 0.9
        assert (run / "eval" / "report.json").read_text() == before  # the run's own evaluation is kept
    assert json.loads(own)["evaluation"]["split"] == "test"  # the final evaluation of training says so too
    assert _call(capsys, "eval", run, "--no-write", "--quiet")[0] == 0
    other_head = "q_halt" if config["halt"]["kind"] != "q_halt" else "act"
    _refused_in_one_line(*_call(capsys, "eval", run, f"--halt.kind={other_head}", "--no-write")[::2],
                         "--change-head" if has_head else "has no halting head")
    # report, with samples drawn by the task's own pictures
    code, out, err = _call(capsys, "report", run, "--samples", "2", "--quiet")
    assert code == 0, err
    page = (run / "report.html").read_text()
    cell = re.search(rf'data-key="held_out\.{head}"[^>]*>([^<]*)<', page)
    if kind not in ARC_KINDS:
        assert cell, f"the page shows no held-out {head}"
        assert cell.group(1).endswith("%") == (fmt == FRACTION), (head, cell.group(1))
    else:
        assert "ARC scores, both rules" in page and "arc-scores" in page
    assert "Held-out samples" in page
    # health: a verdict, never a traceback
    code, out, err = _call(capsys, "health", run)
    assert code in (0, 1) and "Traceback" not in err and "# Health" in out
    # diagnose gradients: the recursive reasoner only; any other model is told so in one line
    code, out, err = _call(capsys, "diagnose", "gradients", run, "--batch", "4", "--steps", "2", "--ref-steps", "4",
                           "--max-iter", "4", "--ref-max-iter", "8", "--rtrl-max-params", "10", "--power-iters", "4",
                           "--quiet")
    if code != 0:
        _refused_in_one_line(code, err, "diagnose gradients applies to")
    # generate: language models only
    code, out, err = _call(capsys, "generate", run, "--max-tokens", "3")
    if kind in LM_KINDS:
        assert code == 0, err
    else:
        _refused_in_one_line(code, err, "not a language model")
    # arc eval: ARC runs only
    code, out, err = _call(capsys, "arc", "eval", run, "--max-tasks", "1", "--quiet")
    if kind in ARC_KINDS:
        assert code == 0, err
    else:
        _refused_in_one_line(code, err, "is not an ARC run")
    # resume of a finished run: says so, trains nothing
    steps = (run / "metrics.jsonl").read_text()
    code, out, err = _call(capsys, "train", "--resume", run)
    assert code == 0 and "is finished" in err and "--extend-steps" in err, err
    assert (run / "metrics.jsonl").read_text() == steps


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_command_on_a_run_stopped_before_its_first_log_line(runs, kind, capsys):
    run = runs[kind]["half"]
    code, out, err = _call(capsys, "health", run)
    assert code == 0 and "No training step has been logged yet" in out, err
    code, out, err = _call(capsys, "report", run, "--samples", "2", "--quiet")
    assert code == 0 and "No checkpoint yet" in (run / "report.html").read_text(), err
    _refused_in_one_line(*_call(capsys, "eval", run)[::2], "holds no checkpoint")
    assert not (run / "metrics.csv").exists()  # no table of nothing
    code, out, err = _call(capsys, "train", "--resume", run)
    assert code == 0 and "starting it from step 0" in err, err
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == [1, 2, 3, 4]


def test_a_changed_model_setting_on_resume_says_what_changed(runs, capsys):
    run = runs["sudoku"]["finished"]
    code, err = _call(capsys, "train", "--resume", run, "--model.d_model=48")[::2]
    _refused_in_one_line(code, err, "model.d_model", "--init-from")


def test_compare_refuses_one_preset_against_itself(capsys):
    _refused_in_one_line(*_call(capsys, "compare", "debug", "debug")[::2], "two different presets")


@pytest.mark.skipif(why_no_browser() is not None, reason=str(why_no_browser()))
def test_every_kind_of_page_opens_in_a_browser_with_its_own_units(runs, capsys):
    driver = open_browser()
    try:
        for kind, dirs in ((k, d) for k, d in runs.items() if k in KINDS):
            run = dirs["finished"]
            if not (run / "report.html").exists():
                assert _call(capsys, "report", run, "--samples", "2", "--quiet")[0] == 0
            driver.get((run / "report.html").resolve().as_uri())
            severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not severe, (kind, severe)
            head, fmt = _head_and_format(run)
            shown = driver.execute_script(
                "return Array.from(document.querySelectorAll('#summary td[data-key]'))"
                ".map(td => [td.dataset.key, td.innerText])")
            cells = [text for key, text in shown if key == f"held_out.{head}"]
            if kind in ARC_KINDS:
                assert driver.execute_script("return document.querySelectorAll('#arc-scores tr').length") > 2
            else:
                assert cells and cells[0].endswith("%") == (fmt == FRACTION), (kind, cells)
    finally:
        driver.quit()
