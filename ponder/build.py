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


def load_trained(path, overrides: list[str] | None = None, *, use_ema: bool | None = None):
    """Model, task and config of a run directory or checkpoint, ready to evaluate.

    Args:
        path: RUN_DIR (its latest checkpoint) or a checkpoint directory.
        overrides: `--section.key=value` changes to the saved config (e.g. a halting threshold).
        use_ema: load the EMA weights (default: `cfg.eval.use_ema`, when the run kept an EMA).
    Returns:
        (model, task, cfg, checkpoint directory). A checkpoint that does not fit its own config's
        model is a PonderError.
    """
    from pathlib import Path

    from ponder.checkpoint import load_checkpoint, resolve_checkpoint
    from ponder.config import apply_overrides, from_dict
    from ponder.data import build_task
    from ponder.errors import PonderError

    ckpt_dir = resolve_checkpoint(Path(path))
    ckpt = load_checkpoint(ckpt_dir)
    cfg = apply_overrides(from_dict(ckpt["config"]), overrides or [])
    task = build_task(cfg.task)
    model = build_model(cfg, task)
    ema = cfg.eval.use_ema if use_ema is None else use_ema
    weights = ckpt["ema"] if (ckpt["ema"] is not None and ema) else ckpt["model"]
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or missing:
        raise PonderError(f"checkpoint {ckpt_dir} does not match its config's model "
                          f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    return model, task, cfg, ckpt_dir
