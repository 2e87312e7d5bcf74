"""A trained ARC run's answers on views of test inputs: the samples of any split, adaptive halting
(ponder.training.evaluate.adaptive_inference, real early exit) and always-M steps, with each answer's
halting confidence (sigmoid of the halt logit at the step the sample answered).

The views of a split are made exactly as the `arc` task makes its test split (ponder.tasks.arc.task):
the same seeded generator drawn in the same order, so on the run's own evaluation split they are
its test samples, and in the embedding mode each (task, view) gets the puzzle id it was trained
with.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ponder.core.errors import PonderError
from ponder.core.progress import bar
from ponder.core.task import Split
from ponder.core.types import IGNORE
from ponder.tasks.arc.augment import task_views
from ponder.tasks.arc.canvas import encode
from ponder.tasks.arc.data import ArcTask, load_split, small_tasks
from ponder.tasks.arc.task import EVAL_DEMOS_LABEL, ArcConfig, _demo_sample, _difficulty, _tasks
from ponder.tasks.arc.vote import View
from ponder.training.carry import batch_of
from ponder.training.evaluate import adaptive_inference

__all__ = ["ViewSamples", "Predictions", "view_samples", "predict", "split_label"]

_NO_LABEL = 255


@dataclass
class ViewSamples:
    """The views of the test inputs of `tasks` as model samples (one row per view)."""

    tasks: tuple[ArcTask, ...]
    split: Split
    views: list[View]


@dataclass
class Predictions:
    """Answers of every sample: tokens (N, n) and halting confidence (N,); steps (N,) used."""

    tokens: np.ndarray
    confidence: np.ndarray
    steps: np.ndarray
    seconds: float


def split_label(cfg: ArcConfig, split: str) -> str:
    """What the run saw of the tasks of `split` before test time (printed beside every score)."""
    dataset, part = split.split("-")
    if cfg.conditioning == "embedding":
        if part == "eval":
            return EVAL_DEMOS_LABEL
        return "training tasks: their test pairs were trained on"
    if dataset != cfg.dataset or part == "eval":
        return "never trained on these tasks"
    return "training tasks: every pair was trained on"


def _scope(cfg: ArcConfig, split: str) -> tuple[ArcTask, ...]:
    dataset, part = split.split("-")
    if dataset == cfg.dataset:
        train, evaluation = _tasks(cfg)
        return train if part == "train" else evaluation
    tasks = small_tasks(load_split(split), cfg.max_side)
    tasks = tasks[:cfg.max_tasks] if cfg.max_tasks else tasks
    if not tasks:
        raise PonderError(f"no {split} task has all its grids within {cfg.max_side}x{cfg.max_side}")
    return tasks


def view_samples(cfg: ArcConfig, split: str, max_tasks: int = 0) -> ViewSamples:
    """Samples of every view of every test input of the split's tasks (those fitting the run's
    canvas, the run's `max_tasks` cap, then `max_tasks` more if given)."""
    dataset = split.split("-")[0]
    if cfg.conditioning == "embedding" and dataset != cfg.dataset:
        raise PonderError(f"an embedding-mode run has puzzle ids only for {cfg.dataset} tasks, not {split}")
    tasks = _scope(cfg, split)
    s = cfg.max_side
    rng = np.random.default_rng(cfg.seed)
    pids: dict[str, list[int]] = {}
    if cfg.conditioning == "embedding":  # replay the task's draws: every (task, view) -> its puzzle id
        pid, transforms_of = 0, {}
        groups = _tasks(cfg)
        for group in groups:
            mine = group is groups[split.endswith("-eval")]
            for task in group:
                transforms = task_views(task, cfg.views, rng)
                if mine:
                    transforms_of[task.id] = transforms
                    pids[task.id] = list(range(pid, pid + len(transforms)))
                pid += len(transforms)
    else:
        transforms_of = {task.id: task_views(task, cfg.views, rng) for task in tasks}
    if max_tasks:
        tasks = tasks[:max_tasks]
    inputs, labels, pid_rows, views = [], [], [], []
    for task in tasks:
        for v, t in enumerate(transforms_of[task.id]):
            tt = t.apply_task(task)
            for i, (x, y) in enumerate(tt.test):
                if cfg.conditioning == "embedding":
                    xs, ys = encode(x, s).ravel(), encode(y, s).ravel()
                    pid_rows.append(pids[task.id][v])
                else:
                    xs, ys = _demo_sample(tt.train[:cfg.max_demos], x, y, cfg)
                inputs.append(xs), labels.append(ys), views.append(View(task.id, i, t))
    lab = np.stack(labels).astype(np.int64)
    lab[lab == _NO_LABEL] = IGNORE
    split_ = Split(np.stack(inputs).astype(np.int64), lab, _difficulty(lab),
                   np.array(pid_rows, dtype=np.int64) if cfg.conditioning == "embedding" else None)
    return ViewSamples(tuple(tasks), split_, views)


class _Recorder:
    """The model's halting head, recording sigmoid(halt logit) of each sample at the step it stops.
    It mirrors adaptive_inference's bookkeeping: the rows that stop leave the active set."""

    def __init__(self, head, batch_size: int, max_steps: int):
        self.head, self.max_steps = head, max_steps
        self.active = torch.arange(batch_size, device="cpu")  # bookkeeping on the host, as the .cpu() reads below
        self.confidence = torch.zeros(batch_size, device="cpu")
        self.t = 0

    def __getattr__(self, name):
        return getattr(self.head, name)

    def decide(self, out, steps, memo):
        stop, memo = self.head.decide(out, steps, memo)
        self.t += 1
        stop_all = torch.ones_like(stop) if self.t == self.max_steps else stop
        conf = torch.sigmoid(out.halt_logits.detach().float()).cpu()
        rows = self.active[stop_all.cpu()]
        self.confidence[rows] = conf[stop_all.cpu()]
        self.active = self.active[~stop_all.cpu()]
        return stop, memo


class _Recording:
    """The model with a recording halting head (everything else delegated)."""

    def __init__(self, model, head):
        self._model, self.halting = model, head

    def __getattr__(self, name):
        return getattr(self._model, name)


@torch.no_grad()
def _all_steps(model, batch, max_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Answers and halting confidence after exactly max_steps steps (no early exit)."""
    head = model.halting
    b, device = len(batch), batch.inputs.device
    ctx = model.prepare(batch)
    state = model.init_state(b, device)
    memo = head.start(b, device)
    out = None
    for t in range(1, max_steps + 1):
        state, out = model.step(state, ctx)
        _, memo = head.decide(out, torch.full((b,), t, device=device), memo)
    return head.answer(out, memo), torch.sigmoid(out.halt_logits.float())


@torch.no_grad()
def predict(model, split: Split, *, max_steps: int, batch_size: int, device: torch.device,
            adaptive: bool = True) -> Predictions:
    """Every sample's answer: with adaptive halting (real early exit) or after always max_steps steps."""
    was_training = model.training
    model.eval()
    tokens, conf, steps = [], [], []
    t0 = time.perf_counter()
    for lo in bar(range(0, len(split), batch_size), desc=f"ARC views ({'adaptive' if adaptive else 'always M'})",
                  unit="batch"):
        batch = batch_of(split.slice(lo, lo + batch_size)).to(device)
        if adaptive:
            rec = _Recorder(model.halting, len(batch), max_steps)
            answers, used = adaptive_inference(_Recording(model, rec), batch, max_steps=max_steps)
            c = rec.confidence
        else:
            answers, c = _all_steps(model, batch, max_steps)
            used = torch.full((len(batch),), max_steps, device="cpu")
        tokens.append(answers.argmax(-1).cpu().numpy()), conf.append(c.cpu().numpy()), steps.append(used.cpu().numpy())
    seconds = time.perf_counter() - t0
    model.train(was_training)
    return Predictions(np.concatenate(tokens), np.concatenate(conf).astype(np.float64), np.concatenate(steps), seconds)
