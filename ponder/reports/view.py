"""What the report page shows of one run directory (`RunView`), read from its files: config,
metrics log, evaluation reports and the health report (refreshed on reading)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ponder.core.errors import PonderError
from ponder.core.metrics import FRACTION, ExactMatch, figure_formats, figure_text, lower_is_better
from ponder.runs.trained import health_report
from ponder.tasks import TASKS
from ponder.training.callbacks import MetricsLog


class RunView:
    """What the page shows of one run directory, read from its files. The run's task says how its
    figures read (its metric's columns, formats and direction) and adds its own sections (ARC)."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        if not self.dir.is_dir():
            raise PonderError(f"no such run directory: {self.dir}")
        if not (self.dir / "config.json").exists():
            raise PonderError(f"{self.dir} is not a run directory (no config.json)")
        self.name = self.dir.name
        self.health = health_report(self.dir)  # also refreshes health.md / health.json
        self.config = _read_json(self.dir / "config.json")
        self.records = MetricsLog(self.dir).records()  # none yet for a run stopped before its first log line
        task_name = (self.config.get("task") or {}).get("name")
        self.entry = TASKS.get(task_name) if task_name in TASKS.names() else None
        metric = self.entry.metric if self.entry else ExactMatch
        eval_file = self.dir / "eval" / "report.json"
        report = _read_json(eval_file) if eval_file.exists() else None
        self.report = report if isinstance(report, dict) else None  # the run's own evaluation, any task
        # per-sample evaluations (puzzles, language models) have "held_out"; ARC's is by task and view
        self.eval = self.report if self.report and "held_out" in self.report else None
        self.columns = list((self.eval or {}).get("columns") or metric.columns)
        self.formats = {**figure_formats(metric), **(self.eval or {}).get("formats", {})}
        self.lower = set(lower_is_better(metric)) | set((self.eval or {}).get("lower_is_better", []))
        self.others = {p.parent.name: r for p in sorted((self.dir / "eval").glob("*/report.json"))
                       if isinstance(r := _read_json(p), dict)}  # evaluations with overrides or another split

    def fmt(self, column: str):
        kind = self.formats.get(column, FRACTION)
        return lambda x: figure_text(x, kind)

    def series(self, kind: str, key: str) -> tuple[list[int], list[float]]:
        rows = [(r["step"], r[key]) for r in self.records if r.get("kind") == kind and isinstance(r.get(key), (int, float))]
        return [s for s, _ in rows], [float(v) for _, v in rows]

    def actions(self) -> list[dict]:
        return [r for r in self.records if r.get("kind") == "action"]

    def flags(self) -> list[dict]:
        return [r for r in self.records if r.get("kind") == "halting_flag"]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PonderError(f"{path} is unreadable or corrupt ({type(e).__name__})") from None


def headline_column(v: RunView) -> str:
    """The run's headline figure (its task's first metric column)."""
    return v.columns[0]
