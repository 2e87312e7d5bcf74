"""A task's curriculum (ponder.core.task.Curriculum) applied to a training run: a callback that
raises the sample stream's difficulty limit when the logged training figure reaches the
curriculum's threshold.

The limit lives in the stream's state (checkpointed with it), and the rise is decided from the
figures of a logged step, which a resumed run recomputes identically, so a resumed run follows
the same curriculum as an uninterrupted one. The training log records the limit in force
(`curriculum_limit`).
"""
from __future__ import annotations

from ponder.core.task import Curriculum
from ponder.training.loop import logged_step


class CurriculumCallback:
    """Raise `run.stream`'s limit by `curriculum.raised` whenever a logged step's figure reaches
    the curriculum's threshold (judged on logged steps only, whatever the objective computes on
    the others: the trajectory objective scores its answers only there)."""

    def __init__(self, curriculum: Curriculum):
        self.curriculum = curriculum

    def on_step_end(self, run, metrics: dict) -> None:
        c, stream = self.curriculum, run.stream
        value = metrics.get(c.figure) if logged_step(run.cfg.train, metrics["step"]) else None
        if value is None or metrics.get("skipped") or stream.limit is None or stream.limit >= c.top:
            return
        if value >= c.threshold:
            stream.set_limit(c.raised(stream.limit))
