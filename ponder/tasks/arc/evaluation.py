"""`ponder arc eval`: a trained ARC run scored by ARC's rules on one split.

Every view of every test input is answered with adaptive halting (real early exit) and with always
M steps; each set of answers is voted (ponder.tasks.arc.vote: inverse transform, crop at EOS, count, ties
by mean halting confidence) into two attempts per test input and scored under both rules
(ponder.tasks.arc.scoring), beside the baselines on the same tasks. With a time budget, the
demonstrations mode is also scored after test-time fine-tuning (ponder.tasks.arc.ttft).

Written to the output directory: report.md and report.json (scores, times, data version, the
label of what the run saw), tasks.csv (one row per test input), gallery.png (solved and failed
tasks in the ARC palette) and submission.json (Kaggle format, the adaptive answers; `ponder arc
score` of it prints the same scores).
"""
from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ponder.core.errors import PonderError
from ponder.core.files import atomic_write_text
from ponder.core.metrics import Metric
from ponder.core.progress import bar
from ponder.core.types import IGNORE
from ponder.tasks.arc.baselines import score_baselines
from ponder.tasks.arc.canvas import COLOUR0
from ponder.tasks.arc.data import DATA_VERSION, ArcTask
from ponder.tasks.arc.gallery import draw_gallery
from ponder.tasks.arc.inference import Predictions, ViewSamples, predict, split_label, view_samples
from ponder.tasks.arc.scoring import RULES, ScoreReport, format_score_table, score_attempts
from ponder.tasks.arc.task import ArcConfig
from ponder.tasks.arc.ttft import TTFTSettings, finetuned
from ponder.tasks.arc.vote import Candidate, to_kaggle, vote_views
from ponder.training.distributed import SINGLE, Shard
from ponder.training.evaluate import describe_evaluation

__all__ = ["ArcEval", "evaluate_arc", "write_arc_eval", "score_command", "view_accuracy"]


@dataclass
class Answers:
    """One way of answering (adaptive, always M, after fine-tuning): votes, attempts, score."""

    name: str
    predictions: Predictions
    voted: dict[tuple[str, int], list[Candidate]]
    report: ScoreReport
    mean_steps_per_input: dict[tuple[str, int], float]


@dataclass
class ArcEval:
    split: str
    label: str
    run: str
    max_steps: int
    samples: ViewSamples
    answers: list[Answers]
    baselines: dict[str, ScoreReport]
    ttft: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @property
    def adaptive(self) -> Answers:
        return self.answers[0]


def _attempts(voted: dict[tuple[str, int], list[Candidate]], tasks: tuple[ArcTask, ...]) -> dict:
    out = {}
    for t in tasks:
        out[t.id] = [[c.grid for c in voted.get((t.id, i), [])[:2]] for i in range(len(t.test))]
    return out


def _answers(name: str, samples: ViewSamples, pred: Predictions, split: str, side: int) -> Answers:
    voted = vote_views(samples.views, pred.tokens[:, -side * side:], pred.confidence)
    report = score_attempts(samples.tasks, _attempts(voted, samples.tasks), split=split, k=2)
    steps: dict[tuple[str, int], list[int]] = {}
    for v, s in zip(samples.views, pred.steps):
        steps.setdefault((v.task, v.test_index), []).append(int(s))
    return Answers(name, pred, voted, report, {k: float(np.mean(v)) for k, v in steps.items()})


def evaluate_arc(model, cfg, split: str, *, metric: Metric, device: torch.device, run: str = "", max_tasks: int = 0,
                 ttft: TTFTSettings | None = None, batch_size: int | None = None) -> ArcEval:
    """Score a trained ARC model (`cfg`: the run's Config, `metric`: its task's) on `split`; see the
    module docstring."""
    tc: ArcConfig = cfg.task
    if ttft is not None and tc.conditioning != "demonstrations":
        raise PonderError("--ttft-seconds needs a demonstrations-mode run (task.conditioning=demonstrations); "
                          "an embedding-mode run has already trained on the evaluation demonstrations")
    samples = view_samples(tc, split, max_tasks)
    m = cfg.halt.max_steps
    bs = batch_size or cfg.eval.batch_size
    label = split_label(tc, split)
    scored = f"{split} ({label})"
    adaptive = predict(model, samples.split, max_steps=m, batch_size=bs, device=device, adaptive=True)
    always = predict(model, samples.split, max_steps=m, batch_size=bs, device=device, adaptive=False)
    answers = [_answers("model, adaptive halting", samples, adaptive, scored, tc.max_side),
               _answers(f"model, always {m} steps", samples, always, scored, tc.max_side)]
    logs = []
    if ttft is not None:
        answers.append(_answers(f"model + test-time fine-tuning ({ttft.seconds:g} s/task), adaptive", samples,
                                _ttft_predictions(model, cfg, samples, ttft, device, bs, logs, metric), scored,
                                tc.max_side))
    baselines, baseline_cells = score_baselines(samples.tasks, scored)
    n_tasks = len(samples.tasks)
    info = {"data_version": DATA_VERSION, "split": split, "label": label, "run": run, "max_steps": m,
            "views": tc.views, "conditioning": tc.conditioning, "max_side": tc.max_side, "n_tasks": n_tasks,
            "n_samples": len(samples.split), "rules": RULES,
            "seconds": {a.name: a.predictions.seconds for a in answers},
            "seconds_per_task": {a.name: a.predictions.seconds / n_tasks for a in answers},
            "mean_steps": {a.name: float(a.predictions.steps.mean()) for a in answers},
            "view_accuracy": {a.name: view_accuracy(samples, a.predictions, tc.max_side) for a in answers},
            "baseline_cells": baseline_cells}
    return ArcEval(split, label, run, m, samples, answers, baselines, [asdict(x) for x in logs], info)


def view_accuracy(samples: ViewSamples, pred: Predictions, side: int) -> dict[str, float]:
    """Per-view accuracy of the answers before voting (a signal below ARC's exact match): `cell`, the
    share of the target grids' cells (PAD and the EOS border left out) answered right, over all
    views; `exact`, the share of views whose whole canvas is right."""
    labels = samples.split.labels[:, -side * side:]
    right = pred.tokens[:, -side * side:] == labels
    grid = labels >= COLOUR0
    return {"cell": float(right[grid].mean()), "exact": float((right | (labels == IGNORE)).all(axis=1).mean())}


def _ttft_predictions(model, cfg, samples: ViewSamples, settings: TTFTSettings, device, bs: int, logs: list,
                      metric: Metric) -> Predictions:
    n = len(samples.split)
    tokens = np.zeros((n, samples.split.inputs.shape[1]), dtype=np.int64)
    conf, steps = np.zeros(n), np.zeros(n, dtype=np.int64)
    seconds = 0.0
    for task in bar(samples.tasks, desc="test-time fine-tuning", unit="task"):
        rows = np.array([i for i, v in enumerate(samples.views) if v.task == task.id])
        t0 = time.perf_counter()
        tuned, log = finetuned(model, task, cfg.task, settings, max_steps=cfg.halt.max_steps, metric=metric,
                               loss_kind=cfg.train.loss, device=device)
        p = predict(tuned, samples.split.subset(rows), max_steps=cfg.halt.max_steps, batch_size=bs, device=device)
        seconds += time.perf_counter() - t0
        tokens[rows], conf[rows], steps[rows] = p.tokens, p.confidence, p.steps
        logs.append(log)
        del tuned
    return Predictions(tokens, conf, steps, seconds)


# ----------------------------------------------------------------------------- writing


def submission(result: ArcEval) -> dict:
    """Kaggle-format submission of the adaptive answers (every scored task)."""
    return to_kaggle(_attempts(result.adaptive.voted, result.samples.tasks))


def score_command(result: ArcEval, path: Path) -> str:
    """The `ponder arc score` command that reproduces the adaptive score from submission.json."""
    side = result.info["max_side"]
    cmd = f"ponder arc score {path} --split {result.split}"
    if side < 30:
        cmd += f" --max-side {side}"
    return cmd + " --only-submitted"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _csv(result: ArcEval) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["task", "test_input"]
    for a in result.answers:
        tag = _tag(a.name)
        head += [f"{tag}_solved_at_1", f"{tag}_solved_at_2", f"{tag}_votes_1", f"{tag}_votes_2",
                 f"{tag}_candidates", f"{tag}_mean_steps", f"{tag}_halting_confidence_1"]
    w.writerow(head)
    n_views = {}
    for v in result.samples.views:
        n_views[(v.task, v.test_index)] = n_views.get((v.task, v.test_index), 0) + 1
    by_task = [{t.task: t for t in a.report.tasks} for a in result.answers]
    for task in result.samples.tasks:
        for i in range(len(task.test)):
            row = [task.id, i]
            for a, scores in zip(result.answers, by_task):
                s = scores[task.id].solved_at[i]
                cands = a.voted.get((task.id, i), [])
                votes = [f"{c.votes}/{n_views[(task.id, i)]}" for c in cands[:2]] + [""] * 2
                row += [int(s is not None and s <= 1), int(s is not None and s <= 2), votes[0], votes[1], len(cands),
                        f"{a.mean_steps_per_input[(task.id, i)]:.2f}",
                        f"{cands[0].confidence:.4f}" if cands else ""]
            w.writerow(row)
    return buf.getvalue()


def _tag(name: str) -> str:
    if name.startswith("model, always"):
        return "always_m"
    if "fine-tuning" in name:
        return "ttft"
    return "adaptive"


def markdown(result: ArcEval, sub_cmd: str | None) -> str:
    """The report of an ARC evaluation as Markdown (`sub_cmd`: how to re-score its submission file)."""
    info = result.info
    lines = [f"# ARC evaluation: {result.split} ({result.label})", "",
             f"- run: {result.run}", f"- data: {DATA_VERSION}",
             f"- {info['n_tasks']} tasks whose grids all fit {info['max_side']}x{info['max_side']}, "
             f"{info['n_samples']} samples ({info['views']} views per task, de-duplicated), "
             f"conditioning {info['conditioning']}, M = {result.max_steps}",
             "- two attempts per test input, voted over the views (ties by mean halting confidence)",
             *([f"- {describe_evaluation(info['evaluation'])}"] if info.get("evaluation") else []), "",
             format_score_table([(f"{a.name} [{result.label}]", a.report) for a in result.answers]
                                + [(f"baseline: {n}", r) for n, r in result.baselines.items()]), ""]
    for rule, text in RULES.items():
        lines.append(f"- {rule}: {text}")
    lines += ["", "| answers | seconds | seconds per task | mean steps | target cells right per view | views exact |",
              "|---|---|---|---|---|---|"]
    for a in result.answers:
        acc = info["view_accuracy"][a.name]
        lines.append(f"| {a.name} | {a.predictions.seconds:.2f} | {info['seconds_per_task'][a.name]:.3f} | "
                     f"{info['mean_steps'][a.name]:.2f} | {_pct(acc['cell'])} | {_pct(acc['exact'])} |")
    lines.append("")
    for a in result.answers:
        ids = a.report.solved_ids(2)
        lines.append(f"- solved by {a.name} (all test inputs, pass@2): {', '.join(ids) if ids else 'none'}")
    for n, r in result.baselines.items():
        ids = r.solved_ids(2)
        cells = info.get("baseline_cells", {}).get(n)
        lines.append(f"- solved by baseline {n}: {', '.join(ids) if ids else 'none'}"
                     + (f"; target cells right in its first attempts: {_pct(cells)}" if cells is not None else ""))
    if result.ttft:
        upd = [x["updates"] for x in result.ttft]
        sec = [x["seconds"] for x in result.ttft]
        lines.append(f"- test-time fine-tuning: {np.mean(upd):.1f} updates per task (min {min(upd)}, max {max(upd)}), "
                     f"{np.mean(sec):.2f} s per task (max {max(sec):.2f})")
    if sub_cmd:
        lines += ["", f"Reproduce the adaptive score from the submission: `{sub_cmd}`"]
    lines.append("")
    return "\n".join(lines)


def to_dict(result: ArcEval) -> dict:
    return {**result.info,
            "scores": {a.name: a.report.to_dict() for a in result.answers},
            "baselines": {n: r.to_dict() for n, r in result.baselines.items()},
            "ttft": result.ttft}


def write_arc_eval(result: ArcEval, out: Path, *, gallery_tasks: int = 6) -> dict[str, Path]:
    """Write report.md/.json, tasks.csv, gallery.png and submission.json into `out`."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PonderError(f"cannot create {out}: {e.strerror or e}") from None
    paths = {k: out / v for k, v in (("report", "report.md"), ("json", "report.json"), ("csv", "tasks.csv"),
                                     ("gallery", "gallery.png"), ("submission", "submission.json"))}
    sub_cmd = score_command(result, paths["submission"])
    what = "the ARC evaluation"
    atomic_write_text(paths["submission"], json.dumps(submission(result)) + "\n", what)
    atomic_write_text(paths["csv"], _csv(result), what)
    atomic_write_text(paths["report"], markdown(result, sub_cmd), what)
    atomic_write_text(paths["json"], json.dumps({**to_dict(result), "score_command": sub_cmd}, indent=1) + "\n", what)
    draw_gallery(result.samples.tasks, result.adaptive.report, result.adaptive.voted, paths["gallery"],
                 per_group=gallery_tasks, title=f"{result.split} ({result.label}): {result.adaptive.name}")
    return paths


def evaluate_arc_run(model, task, cfg, run_dir: Path, *, device: torch.device, split: str = "test",
                     quiet: bool = False, shard: Shard = SINGLE, out: Path | None, about: dict | None = None) -> dict:
    """The ARC task's own evaluation of a trained run: every view of every test input, voted,
    both scoring rules beside the baselines, written into `out` (RUN_DIR/eval: report.md/.json,
    tasks.csv, gallery.png, submission.json; None writes nothing). Rank 0 evaluates; the other
    ranks return {}."""
    if not shard.main:
        return {}
    arc_split = f"{cfg.task.dataset}-{'eval' if split == 'test' else 'train'}"
    result = evaluate_arc(model, cfg, arc_split, metric=task.metric, device=device, run=str(run_dir))
    result.info["evaluation"] = about
    if out is None:
        if not quiet:
            print(markdown(result, None))
        return to_dict(result)
    paths = write_arc_eval(result, out)
    if not quiet:
        print(paths["report"].read_text())
    return json.loads(paths["json"].read_text())
