"""Callbacks and the metrics log.

A callback is any object with some of `on_train_start(run)`, `on_step_start(run, step)` (after the
scheduled LR is set, before the forward pass), `on_step_end(run, metrics)`, `on_eval_end(run,
metrics)`, `on_train_end(run)` and optionally `state_dict()` / `load_state_dict()` (saved in
checkpoints); `run` is the ponder.training.loop.Run being trained. `Callbacks` calls them in list order.
`step_tensors(run) -> {name: tensor}` hands the loop device values to read in the step's one host
transfer; they come back as numbers in `on_step_end`'s metrics.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from ponder.core.errors import PonderError
from ponder.core.files import append_text, atomic_write_text

HOOKS = ("on_train_start", "on_step_start", "on_step_end", "on_eval_end", "on_train_end", "step_tensors")


class Callbacks:
    """Ordered dispatch of training hooks to a list of callback objects."""

    def __init__(self, items: list[Any]):
        self.items = list(items)

    def call(self, hook: str, *args: Any) -> None:
        assert hook in HOOKS, hook
        for cb in self.items:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(*args)

    def collect(self, hook: str, *args: Any) -> dict[str, Any]:
        """The merged dicts a hook returns (e.g. `step_tensors`)."""
        assert hook in HOOKS, hook
        out: dict[str, Any] = {}
        for cb in self.items:
            fn = getattr(cb, hook, None)
            if fn is not None:
                out.update(fn(*args))
        return out

    def state_dict(self) -> list[Any]:
        return [cb.state_dict() if hasattr(cb, "state_dict") else None for cb in self.items]

    def load_state_dict(self, states: list[Any]) -> None:
        for cb, s in zip(self.items, states):
            if s is not None and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(s)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf; null says "not a number" honestly
    return v


class MetricsLog:
    """Append-only JSONL of metric records (each with `step` and `kind`), mirrored to CSV.

    The CSV is rebuilt from the JSONL at every checkpoint and at the end. On resume the log is cut
    back to the checkpoint's step so a resumed run's log equals an uninterrupted one. Only one
    process writes a run's log (`writes=False` on the other data-parallel ranks).
    """

    def __init__(self, run_dir: Path, *, writes: bool = True, mirror: Any = None):
        self.jsonl = Path(run_dir) / "metrics.jsonl"
        self.csv = Path(run_dir) / "metrics.csv"
        self.writes = writes
        self.mirror = mirror  # e.g. ponder.training.tensorboard.TensorBoardMirror: gets every record too

    def records(self) -> list[dict]:
        """Every record; a last line cut short by a crash is dropped, any other damage is a
        PonderError naming the line."""
        if not self.jsonl.exists():
            return []
        try:
            lines = self.jsonl.read_bytes().decode("utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise PonderError(f"{self.jsonl} is corrupt (not UTF-8 text at byte {e.start})") from None
        out = []
        for i, line in enumerate(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    continue  # a line cut short by a crash
                raise PonderError(f"{self.jsonl} line {i + 1} is corrupt (not a JSON record)") from None
            if not isinstance(record, dict) or not isinstance(record.get("step", 0), int):
                raise PonderError(f"{self.jsonl} line {i + 1} is not a metrics record")
            out.append(record)
        return out

    def truncate_after(self, step: int) -> None:
        if not self.writes:
            return
        kept = [r for r in self.records() if r.get("step", 0) <= step]
        atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in kept), what="the metrics log")

    def write(self, record: dict) -> None:
        if not self.writes:
            return
        append_text(self.jsonl, json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n", what="the metrics log")
        if self.mirror is not None:
            self.mirror.write(record)

    def write_csv(self) -> None:
        if not self.writes:
            return
        if self.mirror is not None:
            self.mirror.flush()
        records = self.records()
        if not records:  # nothing logged yet: no table rather than an empty one
            return
        keys: list[str] = []
        for r in records:
            keys.extend(k for k in r if k not in keys and not isinstance(r[k], (list, dict)))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
        atomic_write_text(self.csv, buf.getvalue(), what="the metrics table")
