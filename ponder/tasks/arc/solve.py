"""`ponder arc solve`: mode (c) over a split -- a fresh model per task, trained from scratch on that
task's demonstrations alone (`ponder.tasks.arc.solver_train`), `jobs` tasks at a time in worker
processes with one torch thread each.

Only a `Puzzle` (demonstrations and test inputs) is sent to a worker; the test outputs stay in this
process and are used after a task is finished, for scoring and for the learning curve (how the
answers recorded during training would have scored), never for the answers.

Resumable: each finished task is written atomically to OUT/tasks/ID.json as it finishes, and a
rerun with the same settings skips the tasks already there. At the end OUT holds:

- submission.json: Kaggle format (`ponder arc score` of it prints the same scores);
- tasks.csv: one row per task (solved, demonstrations fitted, iterations, seconds, mean halting steps);
- report.md / report.json: both scoring rules, pass@1 and pass@2, beside every baseline on the same
  tasks, the ids of the tasks solved and which baselines solve them too, learning curves;
- gallery.png: solved and failed tasks in the ARC palette.
"""
from __future__ import annotations

import csv
import io
import json
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ponder.core.errors import PonderError
from ponder.core.files import atomic_write_text
from ponder.core.progress import bar
from ponder.tasks.arc.baselines import run_baseline, score_baselines
from ponder.tasks.arc.data import DATA_VERSION, MAX_SIDE, ArcTask
from ponder.tasks.arc.gallery import draw_gallery
from ponder.tasks.arc.scoring import RULES, ScoreReport, format_score_table, score_attempts
from ponder.tasks.arc.solver_train import Puzzle, SolverSettings, TaskResult, cpu_setup, puzzle_of, solve_puzzle, \
    warm_up
from ponder.tasks.arc.vote import Candidate, to_kaggle

__all__ = ["SolveRun", "solve_tasks", "finish_run", "read_results", "learning_curve", "score_command",
           "score_rows", "write_outputs", "settings_with", "run_solve", "SETTINGS_FILE", "MODEL_ROW", "UNION_ROW"]

SETTINGS_FILE = "solve.json"
MODEL_ROW = "model: mode (c), from scratch per task"
UNION_ROW = "composite: model or program search (not the model's score)"


@dataclass
class SolveRun:
    """A finished (or partly finished) mode-(c) run: its tasks, results and scores."""

    split: str
    max_side: int
    settings: SolverSettings
    tasks: tuple[ArcTask, ...]
    results: dict[str, TaskResult]
    report: ScoreReport
    baselines: dict[str, ScoreReport] = field(default_factory=dict)
    baseline_cells: dict[str, float] = field(default_factory=dict)
    union: ScoreReport | None = None

    def attempts(self) -> dict[str, list[list[np.ndarray]]]:
        return {t: r.attempts for t, r in self.results.items()}


def _worker_init() -> None:
    cpu_setup(threads=1)
    warm_up()


def _solve_one(puzzle: Puzzle, settings: SolverSettings) -> dict:
    """A worker's job: the puzzle alone in, the result as JSON-ready data out."""
    return solve_puzzle(puzzle, settings).to_dict()


def _settings_record(split: str, max_side: int, settings: SolverSettings, ids: Sequence[str]) -> dict:
    return {"split": split, "max_side": max_side, "settings": settings.to_dict(), "tasks": list(ids),
            "data_version": DATA_VERSION}


def _check_resume(out: Path, record: dict) -> None:
    path = out / SETTINGS_FILE
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        raise PonderError(f"{path} is unreadable; name another --out") from None
    for key in ("split", "max_side", "settings"):
        if old.get(key) != record[key]:
            diff = ({k: (old[key].get(k), v) for k, v in record[key].items() if old[key].get(k) != v}
                    if key == "settings" and isinstance(old.get(key), dict) else (old.get(key), record[key]))
            raise PonderError(f"{out} holds a run with other settings ({key}: {diff} as (there, now)); "
                              f"name another --out to start afresh")


def _result_path(out: Path, task_id: str) -> Path:
    return out / "tasks" / f"{task_id}.json"


def read_results(out: Path, ids: Sequence[str]) -> dict[str, TaskResult]:
    """The finished tasks among `ids` in the run directory `out`."""
    got = {}
    for i in ids:
        p = _result_path(out, i)
        if p.exists():
            try:
                got[i] = TaskResult.from_dict(json.loads(p.read_text()))
            except (OSError, ValueError, TypeError, KeyError) as e:
                raise PonderError(f"{p} is unreadable ({type(e).__name__}); delete it to solve that task again") \
                    from None
    return got


def _task_solved(task: ArcTask, result: TaskResult) -> tuple[int, int]:
    """(test inputs solved at pass@2, test inputs)."""
    report = score_attempts([task], {task.id: result.attempts}, k=2)
    return report.tasks[0].solved(2), len(task.test)


def solve_tasks(tasks: Sequence[ArcTask], settings: SolverSettings, out: Path, *, split: str, max_side: int,
                jobs: int = 1, log: Callable[[str], None] = print) -> dict[str, TaskResult]:
    """Solve every task not yet finished in `out`, `jobs` at a time; return every finished result."""
    record = _settings_record(split, max_side, settings, [t.id for t in tasks])
    _check_resume(out, record)
    atomic_write_text(out / SETTINGS_FILE, json.dumps(record, indent=1) + "\n", "the run's settings")
    results = read_results(out, [t.id for t in tasks])
    todo = [t for t in tasks if t.id not in results]
    by_id = {t.id: t for t in tasks}
    if results:
        log(f"resuming: {len(results)} of {len(tasks)} tasks already finished in {out}")
    start, done = time.perf_counter(), 0

    def finished(data: dict) -> None:
        nonlocal done
        r = TaskResult.from_dict(data)
        atomic_write_text(_result_path(out, r.task), json.dumps(data) + "\n", f"the result of task {r.task}")
        results[r.task] = r
        done += 1
        solved, n = _task_solved(by_id[r.task], r)  # scored only now: the answers are fixed
        left = (time.perf_counter() - start) / done * (len(todo) - done)
        log(f"[{len(results)}/{len(tasks)}] {r.task}: solved {solved}/{n}, demonstrations "
            f"{'fitted' if r.demo_exact else f'{100 * r.demo_cell_acc:.1f}% of cells'}, {r.iters} iterations in "
            f"{r.seconds:.0f} s, mean halting steps {r.expected_steps:.2f}; about {left / 60:.1f} min left")
        progress.update(1)

    with bar(total=len(todo), desc="arc solve", unit="task") as progress:
        if jobs <= 1:
            cpu_setup(threads=1)
            if todo:
                warm_up()
            for t in todo:
                finished(_solve_one(puzzle_of(t), settings))
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init) as pool:
                pending = {pool.submit(_solve_one, puzzle_of(t), settings) for t in todo}
                while pending:
                    ready, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in ready:
                        finished(f.result())
    return results


# ----------------------------------------------------------------------------- scores and files


def learning_curve(task: ArcTask, result: TaskResult) -> list[dict]:
    """The logged learning curve with, added after the fact, how the top answers recorded at each
    point would have scored: test inputs solved by attempt 1 and within 2."""
    rows = []
    for h in result.history:
        row = {k: v for k, v in h.items() if k != "top"}
        tops = [[np.array(g, dtype=np.uint8) for g in tries] for tries in h.get("top", [])]
        if tops and all(tops):
            s = score_attempts([task], {task.id: tops}, k=2).tasks[0]
            row["test_solved_at_1"], row["test_solved_at_2"] = s.solved(1), s.solved(2)
        rows.append(row)
    return rows


def finish_run(tasks: Sequence[ArcTask], results: dict[str, TaskResult], *, split: str, max_side: int,
               settings: SolverSettings, baselines: bool = True) -> SolveRun:
    """Score the finished tasks (the ones in `results`) under both rules, beside the baselines."""
    tasks = tuple(t for t in tasks if t.id in results)
    attempts = {t.id: results[t.id].attempts for t in tasks}
    report = score_attempts(tasks, attempts, split=split, k=2)
    run = SolveRun(split, max_side, settings, tasks, results, report)
    if baselines and tasks:
        run.baselines, run.baseline_cells = score_baselines(tasks, split)
        name = next((n for n in run.baselines if n.startswith("program search")), None)
        if name is not None:  # a composite, reported apart: program search's attempts where only it solves
            search = run.baselines[name]
            only_search = set(search.solved_ids(2)) - set(report.solved_ids(2))
            theirs = run_baseline(name, [t for t in tasks if t.id in only_search])
            run.union = score_attempts(tasks, {**attempts, **theirs}, split=split, k=2)
    return run


def score_command(run: SolveRun, path: Path, all_tasks: bool) -> str:
    """The `ponder arc score` command that reproduces the model's score from its submission."""
    cmd = f"ponder arc score {path} --split {run.split}"
    if run.max_side < MAX_SIDE:
        cmd += f" --max-side {run.max_side}"
    return cmd + ("" if all_tasks else " --only-submitted")


def _csv(run: SolveRun) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["task", "tests", "solved_at_1", "solved_at_2", "all_solved", "demo_fit", "demo_cell_accuracy",
                "first_demo_fit_iteration", "iterations", "seconds", "mean_halting_steps", "halting_distribution",
                "step_correct"])
    scores = {s.task: s for s in run.report.tasks}
    for t in run.tasks:
        r, s = run.results[t.id], scores[t.id]
        per_step = ""
        if r.step_answers and all(r.step_answers):
            per_step = "".join(str(int(all(a[k].shape == o.shape and np.array_equal(a[k], o)
                                           for a, (_, o) in zip(r.step_answers, t.test))))
                               for k in range(len(r.step_answers[0])))
        w.writerow([t.id, s.n_tests, s.solved(1), s.solved(2), int(s.solved(2) == s.n_tests), int(r.demo_exact),
                    f"{r.demo_cell_acc:.4f}", "" if r.demo_exact_first is None else r.demo_exact_first, r.iters,
                    f"{r.seconds:.1f}", f"{r.expected_steps:.2f}", " ".join(map(str, r.halt_q)), per_step])
    return buf.getvalue()


def score_rows(run: SolveRun) -> list[tuple[str, ScoreReport]]:
    """The model's row, every baseline's, then the labelled composite row (model or program search)."""
    rows = [(MODEL_ROW, run.report)] + [(f"baseline: {n}", r) for n, r in run.baselines.items()]
    return rows + ([(UNION_ROW, run.union)] if run.union is not None else [])


def markdown(run: SolveRun, sub_cmd: str) -> str:
    s = run.settings
    n = len(run.tasks)
    res = [run.results[t.id] for t in run.tasks]
    lines = [f"# ARC mode (c): {run.split}, from scratch per task", "", f"- data: {DATA_VERSION}",
             f"- {n} tasks"
             + ("" if run.max_side >= MAX_SIDE else f" whose grids all fit {run.max_side}x{run.max_side}")
             + f"; {s.seconds:g} s per task, {s.n_steps} tied recursion steps with adaptive halting, seed {s.seed}",
             "- each task's model sees its demonstrations and test inputs only; two attempts per test input", "",
             format_score_table(score_rows(run)), ""]
    lines += [f"- {rule}: {text}" for rule, text in RULES.items()]
    if res:
        lines += ["", f"Mean per task: {np.mean([r.iters for r in res]):.0f} iterations, "
                      f"{np.mean([r.seconds for r in res]):.1f} s, demonstrations fitted in "
                      f"{sum(r.demo_exact for r in res)} of {n}, mean halting steps "
                      f"{np.mean([r.expected_steps for r in res]):.2f} of {s.n_steps}."]
    solved = run.report.solved_ids(2)
    lines += ["", f"- solved by the model (all test inputs, pass@2): {', '.join(solved) if solved else 'none'}"]
    for name, r in run.baselines.items():
        also = sorted(set(solved) & set(r.solved_ids(2)))
        lines.append(f"- solved by baseline {name}: {', '.join(r.solved_ids(2)) or 'none'}"
                     + (f" (also solved by the model: {', '.join(also)})" if also else ""))
    lines += ["", f"Reproduce the model's score from the submission: `{sub_cmd}`", ""]
    return "\n".join(lines)


def _gallery_votes(run: SolveRun) -> dict[tuple[str, int], list[Candidate]]:
    out = {}
    for t in run.tasks:
        r = run.results[t.id]
        for i, (tries, votes) in enumerate(zip(r.attempts, r.votes)):
            out[(t.id, i)] = [Candidate(g, v, 0.0) for g, v in zip(tries, votes)]
    return out


def to_dict(run: SolveRun, sub_cmd: str) -> dict:
    return {"split": run.split, "max_side": run.max_side, "data_version": DATA_VERSION,
            "settings": run.settings.to_dict(), "score": run.report.to_dict(),
            "baselines": {n: r.to_dict() for n, r in run.baselines.items()},
            "baseline_cells": run.baseline_cells, "union_model_or_program_search":
                None if run.union is None else run.union.to_dict(),
            "tasks": {t.id: {k: v for k, v in run.results[t.id].to_dict().items()
                             if k not in ("history", "step_answers", "attempts")} for t in run.tasks},
            "learning_curves": {t.id: learning_curve(t, run.results[t.id]) for t in run.tasks},
            "score_command": sub_cmd}


def write_outputs(run: SolveRun, out: Path, *, all_tasks: bool, gallery_tasks: int = 6) -> dict[str, Path]:
    """submission.json, tasks.csv, report.md, report.json and gallery.png into `out`."""
    paths = {k: out / v for k, v in (("submission", "submission.json"), ("csv", "tasks.csv"),
                                     ("report", "report.md"), ("json", "report.json"), ("gallery", "gallery.png"))}
    sub_cmd = score_command(run, paths["submission"], all_tasks)
    what = "the ARC solve report"
    atomic_write_text(paths["submission"], json.dumps(to_kaggle(run.attempts())) + "\n", what)
    atomic_write_text(paths["csv"], _csv(run), what)
    atomic_write_text(paths["report"], markdown(run, sub_cmd), what)
    atomic_write_text(paths["json"], json.dumps(to_dict(run, sub_cmd), indent=1) + "\n", what)
    draw_gallery(run.tasks, run.report, _gallery_votes(run), paths["gallery"], per_group=gallery_tasks,
                 title=f"{run.split}: mode (c), from scratch per task, {run.settings.seconds:g} s per task")
    return paths


def settings_with(seconds: float, **overrides) -> SolverSettings:
    """The default settings with a budget per task (and any named field changed)."""
    names = {f.name for f in fields(SolverSettings)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise PonderError(f"unknown solver setting {bad[0]!r}; valid: {', '.join(sorted(names))}")
    return SolverSettings(seconds=seconds, **overrides)


def run_solve(tasks: Sequence[ArcTask], settings: SolverSettings, out: Path, *, split: str, max_side: int,
              jobs: int = 1, all_tasks: bool = True, log: Callable[[str], None] = print) -> tuple[SolveRun, dict]:
    """The whole protocol, as `ponder arc solve` runs it: solve (resuming), score beside the baselines,
    write the files. Returns the run and the paths written."""
    results = solve_tasks(tasks, settings, out, split=split, max_side=max_side, jobs=jobs, log=log)
    run = finish_run(tasks, results, split=split, max_side=max_side, settings=settings)
    return run, write_outputs(run, out, all_tasks=all_tasks)
