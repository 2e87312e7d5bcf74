"""Test-time fine-tuning for the demonstrations mode: per task, a copy of the model is fine-tuned on
that task's demonstration pairs alone, then predicts the task's test inputs; the base model is
never changed, so every task starts from the same weights.

The fine-tuning samples are leave-one-out over the demonstrations: each demonstration in turn is
the query and the others (up to `max_demos`) are its context; each draw is augmented as in
training (ponder.tasks.arc.augment: a random dihedral transform and colour permutation of the whole
sample, a random order of its demonstrations and, with `translate`, a random offset per pair).
The objective is the run's own: deep supervision (one optimizer step per ACT step, the halting
head's loss with the task loss) for heads trained one step at a time, the whole trajectory for the
others. No update starts once the budget is spent or when the slowest update so far would overrun
it, so a task's fine-tuning exceeds `seconds` by at most one update (the first one's duration is
not known in advance); the log records the slowest update.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch

from ponder.core.errors import PonderError
from ponder.core.metrics import Metric
from ponder.core.task import Split
from ponder.core.types import IGNORE
from ponder.models.halting.base import Segment
from ponder.tasks.arc.data import ArcTask
from ponder.tasks.arc.task import ArcConfig, _demo_sample, _difficulty, _make_augment
from ponder.training.carry import batch_of
from ponder.training.objectives import per_sample_task_loss

__all__ = ["TTFTSettings", "TTFTLog", "loo_split", "finetune", "finetuned"]

_NO_LABEL = 255


@dataclass
class TTFTSettings:
    seconds: float  # fine-tuning wall time per task
    lr: float = 1e-4
    batch_size: int = 8
    max_updates: int = 0  # 0 = only the time budget ends fine-tuning
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not self.seconds >= 0:
            raise PonderError(f"--ttft-seconds must be >= 0, got {self.seconds}")
        if not self.lr > 0:
            raise PonderError(f"--ttft-lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise PonderError(f"--ttft-batch must be >= 1, got {self.batch_size}")


@dataclass
class TTFTLog:
    task: str
    updates: int
    seconds: float
    first_loss: float | None
    last_loss: float | None
    slowest_update: float  # seconds; the budget can be overrun by at most one update


def loo_split(task: ArcTask, cfg: ArcConfig) -> Split:
    """One sample per demonstration: it is the query, the other demonstrations (the following
    ones, cyclically, at most max_demos) its context. A task with one demonstration gets a
    sample with an empty context."""
    demos = task.train
    inputs, labels = [], []
    for q in range(len(demos)):
        ctx = [demos[(q + j) % len(demos)] for j in range(1, min(cfg.max_demos, len(demos) - 1) + 1)]
        x, y = _demo_sample(ctx, *demos[q], cfg)
        inputs.append(x), labels.append(y)
    lab = np.stack(labels).astype(np.int64)
    lab[lab == _NO_LABEL] = IGNORE
    return Split(np.stack(inputs).astype(np.int64), lab, _difficulty(lab))


def finetune(model, samples: Split, cfg: ArcConfig, settings: TTFTSettings, *, max_steps: int, metric: Metric,
             loss_kind: str, device: torch.device, task_id: str = "") -> TTFTLog:
    """Fine-tune `model` in place on `samples` (augmented draws) for at most settings.seconds."""
    augment = _make_augment(cfg)
    rng = np.random.default_rng(settings.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.95), weight_decay=0.0)
    head = model.halting
    loss_fn = lambda logits, labels: per_sample_task_loss(logits, labels, loss_kind)  # noqa: E731
    model.train()
    t0 = time.perf_counter()
    slowest, updates, first, last = 0.0, 0, None, None
    checked = t0

    def room() -> bool:
        """Is there time for one more update? (judged by the longest stretch between two checks)"""
        nonlocal slowest, checked
        now = time.perf_counter()
        slowest, checked = max(slowest, now - checked), now
        if settings.max_updates and updates >= settings.max_updates:
            return False
        return now - t0 + slowest <= settings.seconds

    def update(loss: torch.Tensor) -> None:
        nonlocal updates, first, last
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        opt.step()
        updates += 1
        last = float(loss.detach())
        first = last if first is None else first

    while room():
        idx = rng.integers(len(samples), size=settings.batch_size)
        batch = batch_of(augment(samples.subset(idx), rng)).to(device)
        b = len(batch)
        state = model.init_state(b, device)
        if head.trains_on == "step":  # deep supervision: an optimizer step per ACT step
            for t in range(1, max_steps + 1):
                if not room():
                    break
                ctx = model.prepare(batch)
                state, out = model.step(state, ctx)
                next_out = None
                if head.needs_next_step:
                    with torch.no_grad():
                        _, next_out = model.step(state, ctx)
                with torch.no_grad():
                    correct = metric.correct(metric.score(out.logits, batch.labels))
                loss, _ = head.loss(Segment([out], torch.full((b,), t, device=device), batch.labels, loss_fn,
                                            [correct], train_step=updates, next_out=next_out))
                if ctx.aux_loss is not None:
                    loss = loss + ctx.aux_loss
                update(loss)
        else:  # whole trajectories
            outs = []
            for _ in range(max_steps):
                state, out = model.step(state, model.prepare(batch))
                outs.append(out)
            with torch.no_grad():
                correct = [metric.correct(metric.score(o.logits, batch.labels)) for o in outs]
            loss, _ = head.loss(Segment(outs, torch.ones(b, dtype=torch.long, device=device), batch.labels, loss_fn,
                                        correct, train_step=updates))
            update(loss)
    model.eval()
    end = time.perf_counter()
    return TTFTLog(task_id, updates, end - t0, first, last, max(slowest, end - checked))


def finetuned(base, task: ArcTask, cfg: ArcConfig, settings: TTFTSettings, **kw):
    """A fine-tuned copy of `base` for one task (the base model is not touched) and its log."""
    if cfg.conditioning != "demonstrations":
        raise PonderError("test-time fine-tuning needs a demonstrations-mode run (task.conditioning=demonstrations); "
                          "an embedding-mode run has already trained on the evaluation demonstrations")
    model = copy.deepcopy(base)
    log = finetune(model, loo_split(task, cfg), cfg, settings, task_id=task.id, **kw)
    return model, log
