"""Scoring ARC predictions under both official rules, and validating Kaggle-format submissions.

Each test input gets up to k attempts (Kaggle: two, `attempt_1` and `attempt_2`); a test input is
solved at k when one of its first k attempts equals the target grid exactly (shape and every cell).

- **fractional** (TRM's rule and the official benchmarking harness's): a task scores its solved
  test inputs / its test inputs; the split's score is the mean over tasks.
- **all-or-nothing** (HRM's notebook rule): a task scores 1 when every test input is solved, else 0.

`pass@k` is either rule with the first k attempts. A task whose predictions are malformed is
*invalid* and scores 0 (never credit), with the reason; problems with the file as a whole (not JSON,
not an object, duplicate, unknown or missing task ids) are a one-line PonderError.

Submission format: `{task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]}` with one entry per
test input, in the task's order; a grid is a non-empty list of equal-length non-empty lists of
integers 0-9, at most 30 x 30.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ponder.core.errors import PonderError
from ponder.tasks.arc.data import DATA_VERSION, MAX_SIDE, SPLITS, ArcTask, load_split

__all__ = ["RULES", "TaskScore", "ScoreReport", "score_attempts", "parse_submission", "read_submission",
           "check_grid", "format_score_table", "InvalidGrid"]

RULES = {"fractional": "fractional (per task: solved test inputs / test inputs, mean over tasks)",
         "all_or_nothing": "all-or-nothing (a task counts only when all its test inputs are solved)"}
ATTEMPT_KEYS = ("attempt_1", "attempt_2")

# per task: one list of attempts (grids) per test input, or a string saying why it is invalid
Attempts = dict[str, "list[list[np.ndarray]] | str"]


class InvalidGrid(ValueError):
    """A predicted grid that is not an ARC grid (the message says why)."""


@dataclass
class TaskScore:
    """One task's result: `solved_at[i]` is the 1-based index of the first attempt that solves test
    input i (None: none does); `invalid` is the reason a task got no credit for malformed predictions."""

    task: str
    n_tests: int
    solved_at: list[int | None]
    invalid: str | None = None

    def solved(self, k: int) -> int:
        return sum(1 for s in self.solved_at if s is not None and s <= k)


@dataclass
class ScoreReport:
    split: str
    k: int  # attempts per test input considered
    tasks: list[TaskScore]
    data_version: str = DATA_VERSION
    summary: dict[str, dict[str, float]] = field(default_factory=dict)

    def rule(self, rule: str, k: int) -> float:
        return self.summary[rule][f"pass@{k}"]

    def solved_ids(self, k: int = 2, rule: str = "all_or_nothing") -> list[str]:
        """Tasks with every test input solved (all-or-nothing) or at least one (fractional) at k."""
        need = (lambda t: t.solved(k) == t.n_tests) if rule == "all_or_nothing" else (lambda t: t.solved(k) > 0)
        return [t.task for t in self.tasks if need(t)]

    def to_dict(self) -> dict:
        return {"split": self.split, "data_version": self.data_version, "attempts": self.k, "rules": RULES,
                "summary": self.summary, "n_tasks": len(self.tasks),
                "n_test_inputs": sum(t.n_tests for t in self.tasks),
                "invalid": {t.task: t.invalid for t in self.tasks if t.invalid},
                "solved_all_tests_at_2": self.solved_ids(min(2, self.k)),
                "tasks": [{"task": t.task, "tests": t.n_tests, "solved_at": t.solved_at, "invalid": t.invalid}
                          for t in self.tasks]}


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


def score_attempts(tasks: Sequence[ArcTask], attempts: Attempts, *, split: str = "", k: int = 2) -> ScoreReport:
    """Score `attempts` (task id -> per test input a list of grids, best first; or an invalid reason)
    against the tasks' test outputs under both rules, pass@1 .. pass@k.

    A task absent from `attempts` scores 0 (invalid: "no predictions"); a task with the wrong number
    of test inputs is invalid. Attempts beyond k are not looked at.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    scores = []
    for task in tasks:
        n = len(task.test)
        got = attempts.get(task.id, "no predictions")
        if isinstance(got, str):
            scores.append(TaskScore(task.id, n, [None] * n, got))
            continue
        if len(got) != n:
            scores.append(TaskScore(task.id, n, [None] * n, f"{len(got)} test predictions for {n} test inputs"))
            continue
        solved = []
        for (_, target), tries in zip(task.test, got):
            hit = next((j + 1 for j, g in enumerate(list(tries)[:k]) if g is not None and _same(np.asarray(g), target)),
                       None)
            solved.append(hit)
        scores.append(TaskScore(task.id, n, solved))
    report = ScoreReport(split, k, scores)
    report.summary = _summarize(scores, k)
    return report


def first_attempt_cells(tasks: Sequence[ArcTask], attempts: Attempts) -> float:
    """The share of the target grids' cells (every test input of `tasks`) that attempt 1 gets right;
    a missing attempt or one of the wrong shape gets none of its target's cells."""
    right = total = 0
    for t in tasks:
        for i, (_, target) in enumerate(t.test):
            total += target.size
            tries = attempts.get(t.id, [])
            first = tries[i][0] if i < len(tries) and tries[i] else None
            if first is not None and np.shape(first) == target.shape:
                right += int((np.asarray(first) == target).sum())
    return right / total if total else 0.0


def _summarize(scores: list[TaskScore], k: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {"fractional": {}, "all_or_nothing": {}}
    m = len(scores)
    for j in range(1, k + 1):
        out["fractional"][f"pass@{j}"] = sum(t.solved(j) / t.n_tests for t in scores) / m if m else math.nan
        out["all_or_nothing"][f"pass@{j}"] = sum(t.solved(j) == t.n_tests for t in scores) / m if m else math.nan
    return out


# ----------------------------------------------------------------------------- submissions


def check_grid(value: Any) -> np.ndarray:
    """An ARC grid from JSON-like data, or InvalidGrid saying precisely what is wrong."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list):
        raise InvalidGrid(f"a grid must be a list of rows, got {type(value).__name__}")
    if not value:
        raise InvalidGrid("empty grid (no rows)")
    if len(value) > MAX_SIDE:
        raise InvalidGrid(f"grid has {len(value)} rows, more than {MAX_SIDE}")
    width = None
    for r, row in enumerate(value):
        if not isinstance(row, list):
            raise InvalidGrid(f"row {r} is a {type(row).__name__}, not a list")
        if width is None:
            width = len(row)
            if width == 0:
                raise InvalidGrid("row 0 is empty")
            if width > MAX_SIDE:
                raise InvalidGrid(f"grid has {width} columns, more than {MAX_SIDE}")
        elif len(row) != width:
            raise InvalidGrid(f"ragged grid: row {r} has {len(row)} cells, row 0 has {width}")
        for c, v in enumerate(row):
            if type(v) is not int:  # bool and float are refused too
                raise InvalidGrid(f"cell ({r}, {c}) is {v!r} ({type(v).__name__}), not an integer colour 0-9")
            if not 0 <= v <= 9:
                raise InvalidGrid(f"cell ({r}, {c}) has colour {v}, outside 0-9")
    return np.array(value, dtype=np.uint8)


def _task_attempts(entry: Any, n_tests: int) -> list[list[np.ndarray]] | str:
    """One task's Kaggle entry -> attempts per test input, or why it is invalid."""
    if not isinstance(entry, list):
        return f"expected a list of {n_tests} test predictions, got {type(entry).__name__}"
    if len(entry) != n_tests:
        return f"{len(entry)} test predictions for {n_tests} test input{'s' * (n_tests != 1)}"
    out = []
    for i, item in enumerate(entry):
        if not isinstance(item, dict):
            return f"test {i}: expected an object with attempt_1 and attempt_2, got {type(item).__name__}"
        missing = [a for a in ATTEMPT_KEYS if a not in item]
        if missing:
            return f"test {i}: missing {' and '.join(missing)}"
        extra = sorted(set(item) - set(ATTEMPT_KEYS))
        if extra:
            return f"test {i}: unexpected key {extra[0]!r} (only attempt_1 and attempt_2)"
        grids = []
        for a in ATTEMPT_KEYS:
            try:
                grids.append(check_grid(item[a]))
            except InvalidGrid as e:
                return f"test {i} {a}: {e}"
        out.append(grids)
    return out


def _split_of(task_id: str) -> str | None:
    return next((s for s in SPLITS if any(t.id == task_id for t in load_split(s))), None)


def parse_submission(obj: Any, tasks: Sequence[ArcTask], *, split: str, allow_missing: bool = False,
                     source: str = "submission", known: Sequence[ArcTask] | None = None) -> Attempts:
    """Validate a Kaggle-format submission (already parsed JSON) against `tasks`.

    Returns task id -> attempts per test input, or the reason the task is invalid. Raises a one-line
    PonderError for problems of the whole file: not an object, task ids not in the split, task ids of
    the split missing (unless `allow_missing`: then they score 0 as "no predictions"). `known` (default
    `tasks`): the whole split, when only some of its tasks are scored (predictions of the others are
    accepted and not looked at).
    """
    if not isinstance(obj, dict):
        raise PonderError(f"{source}: expected a JSON object {{task_id: [...]}}, got {_json_type(obj)}")
    ids = {t.id for t in tasks}
    known_ids = ids if known is None else {t.id for t in known}
    unknown = sorted(k for k in obj if k not in known_ids)
    if unknown:
        elsewhere = _split_of(unknown[0])
        hint = f" ({unknown[0]} belongs to {elsewhere})" if elsewhere else ""
        raise PonderError(f"{source}: {len(unknown)} task id{'s' * (len(unknown) != 1)} not in {split}, e.g. "
                          f"{unknown[0]!r}{hint}")
    missing = sorted(ids - set(obj))
    if missing and not allow_missing:
        raise PonderError(f"{source}: {len(missing)} of the {len(ids)} {split} tasks have no predictions, e.g. "
                          f"{missing[0]!r} (--allow-missing scores them 0)")
    return {t.id: _task_attempts(obj[t.id], len(t.test)) for t in tasks if t.id in obj}


def _json_type(v: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(v), type(v).__name__)


def read_submission(path: Path) -> Any:
    """Parse a submission file: one-line PonderError for a missing file, invalid JSON (NaN and
    Infinity included) or duplicate task ids."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PonderError(f"no such submission file: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PonderError(f"cannot read submission {path}: {type(e).__name__}: {e}") from None

    def pairs(items):
        keys = [k for k, _ in items]
        dup = next((k for k in keys if keys.count(k) > 1), None)
        if dup is not None:
            raise PonderError(f"{path}: key {dup!r} appears twice in one object")
        return dict(items)

    def constant(name):
        raise PonderError(f"{path}: invalid JSON: {name} is not a number")

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except json.JSONDecodeError as e:
        raise PonderError(f"{path}: invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise PonderError(f"{path}: invalid JSON: nested too deeply") from None


# ----------------------------------------------------------------------------- reports


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.2f}%"


def format_score_table(rows: list[tuple[str, ScoreReport]], *, k: int = 2) -> str:
    """A Markdown table: one row per (name, report), pass@1 and pass@k under both rules."""
    head = ("| | fractional pass@1 | fractional pass@{k} | all-or-nothing pass@1 | all-or-nothing pass@{k} | "
            "tasks solved (all tests, pass@{k}) | invalid |").format(k=k)
    lines = [head, "|---|---|---|---|---|---|---|"]
    for name, r in rows:
        kk = min(k, r.k)
        lines.append(f"| {name} | {_pct(r.rule('fractional', 1))} | {_pct(r.rule('fractional', kk))} | "
                     f"{_pct(r.rule('all_or_nothing', 1))} | {_pct(r.rule('all_or_nothing', kk))} | "
                     f"{len(r.solved_ids(kk))} of {len(r.tasks)} | {sum(t.invalid is not None for t in r.tasks)} |")
    return "\n".join(lines)
