"""TensorBoard event files beside the JSONL and CSV logs (when the `tensorboard` extra is installed).

Every record the run's MetricsLog writes is mirrored here, under RUN_DIR/tensorboard/: numbers
as scalars named `KIND/KEY` (train/loss, eval/test_exact, health/grad_norm_mean, ...), nested
figures (per-layer attention) as `KIND/KEY/PART/...`, step-count histograms (`*steps_histogram`)
as histograms of steps used, and the controller's actions and halting flags as text. On resume,
events after the checkpoint's step are purged, as the JSONL is cut back.
"""
from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ponder.core.errors import PonderError
from ponder.core.files import writing

try:
    from torch.utils.tensorboard import SummaryWriter
except ImportError:  # the extra is not installed
    SummaryWriter = None

TENSORBOARD_DIR = "tensorboard"


def _quiet_event_writer_thread() -> None:
    """TensorBoard's event writer runs in a thread of its own; a write that fails there (a full
    disk) is printed as a thread traceback and raised again at the writer's next call, where it
    becomes one `WriteFailed` line. Silence the thread's copy (OSErrors of that thread only)."""
    previous = threading.excepthook
    if getattr(previous, "ponder_quiet", False):
        return

    def hook(args) -> None:
        if isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard."):
            return
        previous(args)

    hook.ponder_quiet = True
    threading.excepthook = hook


def tensorboard_available() -> bool:
    return SummaryWriter is not None


class TensorBoardMirror:
    """Writes metric records as TensorBoard events in RUN_DIR/tensorboard/."""

    def __init__(self, run_dir: Path, *, purge_step: int | None = None):
        if SummaryWriter is None:
            raise PonderError("train.tensorboard=on but the tensorboard package is not installed "
                              "(pip install 'ponder[tensorboard]')")
        self.dir = Path(run_dir) / TENSORBOARD_DIR
        _quiet_event_writer_thread()
        with writing("TensorBoard events", self.dir):
            self.writer = SummaryWriter(log_dir=str(self.dir), purge_step=purge_step, flush_secs=30)

    def write(self, record: dict[str, Any]) -> None:
        # the event writer works in a thread of its own and raises a failed write at the next call
        with writing("TensorBoard events", self.dir):
            self._write(record)

    def _write(self, record: dict[str, Any]) -> None:
        step, kind = int(record.get("step", 0)), record.get("kind", "train")
        if kind == "action":
            self.writer.add_text("controller", f"**{record.get('action')}** ({', '.join(record.get('causes', []))}): "
                                               f"{record.get('reason', '')}", step)
        elif kind == "halting_flag":
            self.writer.add_text("halting", f"**{record.get('verdict')}** flagged: {record.get('reason', '')}", step)
        self._scalars(f"{kind}", {k: v for k, v in record.items() if k not in ("step", "kind")}, step)

    def _scalars(self, prefix: str, values: dict[str, Any], step: int) -> None:
        for key, v in values.items():
            tag = f"{prefix}/{key}"
            if isinstance(v, bool):
                v = float(v)
            if isinstance(v, (int, float)):
                if math.isfinite(v):
                    self.writer.add_scalar(tag, v, step)
            elif isinstance(v, dict):
                self._scalars(tag, v, step)
            elif key.endswith("steps_histogram") and isinstance(v, list) and sum(v) > 0:
                counts = np.asarray(v, dtype=np.int64)  # index s-1 -> samples that used s steps
                self.writer.add_histogram(tag, np.repeat(np.arange(1, len(counts) + 1), counts), step,
                                          bins=np.arange(0.5, len(counts) + 1.5))

    def flush(self) -> None:
        with writing("TensorBoard events", self.dir):
            self.writer.flush()

    def close(self) -> None:
        with writing("TensorBoard events", self.dir):
            self.writer.close()


def make_mirror(setting: str, run_dir: Path, *, purge_step: int | None) -> TensorBoardMirror | None:
    """The mirror `train.tensorboard` asks for: "auto" (when installed), "on" (required), "off"."""
    if setting == "off" or (setting == "auto" and not tensorboard_available()):
        return None
    return TensorBoardMirror(run_dir, purge_step=purge_step)
