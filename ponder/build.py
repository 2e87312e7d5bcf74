"""Build a model (with its halting head) for a task from a config."""
from __future__ import annotations

from ponder.data.base import TaskData
from ponder.models.halting import build_halting
from ponder.models.recursive import RecursiveReasoner


def build_model(cfg, task: TaskData) -> RecursiveReasoner:
    """The RecursiveReasoner of `cfg.model` with the halting head of `cfg.halt`, sized for `task`."""
    cfg.model.validate()
    head = build_halting(cfg.halt, cfg.model.d_model)
    return RecursiveReasoner(cfg.model, vocab_size=task.vocab_size, seq_len=task.seq_len, halting=head)
