"""Evaluation: the task's metric per step budget, adaptive halting with real early exit.

The task owns its metric (ponder.core.metrics; exact match and cell accuracy for puzzles, as in
TRM/HRM) and its trivial baselines; this module runs the model and asks the task to score.
A task whose samples are not answered one per sample (language models: one answer and one
depth per token) owns its evaluation too: its metric's `evaluate_split(model, split, **options)`
replaces the per-sample one below and returns the same keys (ponder.tasks.lm.task).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ponder.core.metrics import Metric, concat_scores
from ponder.core.progress import bar
from ponder.core.settings import check, setting
from ponder.core.stats import spearman_or_none
from ponder.core.task import Split
from ponder.core.types import Batch, State
from ponder.training.carry import batch_of
from ponder.training.distributed import SINGLE, Shard


@dataclass(kw_only=True)
class EvalConfig:
    """Evaluation settings.

    Attributes:
        batch_size: samples per inference batch.
        max_samples: cap on held-out samples for `ponder eval` (0 = the whole split).
        train_samples: training-split samples scored beside the held-out ones (0 = all of them).
        during_training_samples: held-out samples scored at each evaluation inside training, a
            fixed subset (0 = the whole split); the training split is scored on at most as many
            (and at most train_samples). Sized so that evaluating costs little of a run (each
            record logs its `time_eval_sec`); the run's final evaluation scores the whole split, and
            a `train.target` within the subset's sampling error is checked on the whole split, whose
            score decides the stop.
        use_ema: evaluate the EMA weights when the run keeps them.
        samples_drawn: held-out samples drawn as pictures by `ponder eval` (eval/samples.html).
    """

    batch_size: int = setting(256, ge=1)
    max_samples: int = setting(0, ge=0)
    train_samples: int = setting(512, ge=0)
    during_training_samples: int = setting(512, ge=0)
    use_ema: bool = True
    samples_drawn: int = setting(8, ge=0)

    def validate(self) -> None:
        check(self, "eval")


def _batches(split: Split, batch_size: int, device: torch.device, desc: str = ""):
    """(first row, batch) over `split`; with a `desc`, under a progress bar."""
    starts = range(0, len(split), batch_size)
    for lo in bar(starts, desc=desc, unit="batch") if desc else starts:
        yield lo, batch_of(split.slice(lo, lo + batch_size)).to(device)


@torch.no_grad()
def rollout_all_steps(model, split: Split, metric: Metric, *, max_steps: int, batch_size: int,
                      device: torch.device) -> dict:
    """Run every sample for `max_steps` steps (no early exit); budget t answers with the head's
    answer at step t (the readout, or ACT's mean-field output so far).

    Returns: by_budget, a list over budgets 1..M of per-sample score dicts (arrays (N,)), and
    halt_step (N,) the first step at which the head's rule says halt (M if never).
    """
    head = model.halting
    parts: list[list[dict[str, Tensor]]] = [[] for _ in range(max_steps)]
    halt_step = np.full(len(split), max_steps, dtype=np.int64)
    for lo, batch in _batches(split, batch_size, device, desc="every step budget"):
        b = len(batch)
        ctx = model.prepare(batch)
        state = model.init_state(b, device)
        memo = head.start(b, device)
        halted = torch.zeros(b, dtype=torch.bool, device=device)
        first = torch.full((b,), max_steps, dtype=torch.long, device=device)
        for t in range(1, max_steps + 1):
            state, out = model.step(state, ctx)
            decision, memo = head.decide(out, torch.full((b,), t, device=device), memo)
            parts[t - 1].append(metric.score(head.answer(out, memo), batch.labels))
            stop = decision & ~halted
            first[stop] = t
            halted |= stop
        halt_step[lo:lo + b] = first.cpu().numpy()
    return {"by_budget": [concat_scores(p) for p in parts], "halt_step": halt_step}


@torch.no_grad()
def adaptive_inference(model, batch: Batch, *, max_steps: int) -> tuple[Tensor, Tensor]:
    """Batched early exit: a sample leaves the active batch at the step its head halts.

    Args:
        batch: the samples (inputs (b, n) and their conditioning).
    Returns:
        answers (b, n, v): each sample's answer logits at its halting step; steps (b,) steps used.
    """
    head = model.halting
    b = len(batch)
    device = batch.inputs.device
    answers: Tensor | None = None
    steps = torch.full((b,), max_steps, dtype=torch.long, device=device)
    active = torch.arange(b, device=device)  # original row of each active sample
    ctx = model.prepare(batch)
    state: State = model.init_state(b, device)
    memo = head.start(b, device)
    for t in range(1, max_steps + 1):
        state, out = model.step(state, ctx)
        stop, memo = head.decide(out, torch.full((len(active),), t, device=device), memo)
        if t == max_steps:
            stop = torch.ones_like(stop)
        answer = head.answer(out, memo)  # (active, n, v)
        if answers is None:
            answers = answer.new_zeros((b, *answer.shape[1:]))
        done = active[stop]
        answers[done] = answer[stop]
        steps[done] = t
        keep = ~stop
        if not keep.any():
            break
        active = active[keep]
        state = state.index(keep)  # finished samples leave: later steps cost less
        ctx = ctx.index(keep)
        memo = {k: v[keep] for k, v in memo.items()}
    return answers, steps


def _gather(shard: Shard, part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-sample arrays of every rank's part of a split, concatenated in rank order (a rank
    with no samples contributes an empty dict)."""
    if not shard.active:
        return part
    parts = [p for p in shard.gather_objects(part) if p]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


def evaluate_split(model, split: Split, metric: Metric, *, max_steps: int, batch_size: int,
                   device: torch.device, budgets: bool = True, shard: Shard = SINGLE) -> dict:
    """Adaptive-halting scores (real early exit) and, optionally, scores per step budget.

    Returns a dict with keys: n, the metric's columns (e.g. exact, cell), mean_steps,
    steps_histogram (list, index s-1 -> count of samples that used s steps),
    spearman_steps_difficulty, halt_first_frac and halt_max_frac (fractions stopping at step 1 /
    running to M), wrong_halt_frac (of the samples the head stopped before M, the fraction the
    metric counts as not solved; None if none), seconds_adaptive, and with budgets: for each
    column c, c_by_budget (list over budgets 1..M), seconds_all_steps, halt_consistent (fraction
    of samples whose early-exit step equals the full rollout's), difficulty, steps, by_difficulty.

    Across processes (`shard`) each rank runs its contiguous part of the split, early exit
    included, with no collective inside the loops; the per-sample results are gathered in rank
    order afterwards, so every rank returns the report of the whole split (seconds: the slowest
    rank's).

    A metric with its own `evaluate_split` (module docstring) is asked instead.
    """
    own = getattr(metric, "evaluate_split", None)
    if own is not None:
        return own(model, split, max_steps=max_steps, batch_size=batch_size, device=device, budgets=budgets,
                   shard=shard)
    was_training = model.training
    model.eval()
    rows = shard.split_rows(len(split))
    mine = split.slice(rows.start, rows.stop)
    parts, steps_all = [], []
    t0 = time.perf_counter()
    for _, batch in _batches(mine, batch_size, device, desc="adaptive halting"):
        answers, steps = adaptive_inference(model, batch, max_steps=max_steps)
        parts.append({**metric.score(answers, batch.labels), "_steps": steps})
    seconds_adaptive = max(shard.gather_objects(time.perf_counter() - t0))
    scores = _gather(shard, concat_scores(parts))
    steps = scores.pop("_steps")
    solved = metric.correct({k: torch.as_tensor(v, device="cpu") for k, v in scores.items()}).numpy()
    halted_early = steps < max_steps  # halts decided by the head, not forced by the cap
    report = {
        "n": len(split),
        **metric.summarize(scores),
        "mean_steps": float(steps.mean()),
        "max_steps": max_steps,
        "steps_histogram": np.bincount(steps - 1, minlength=max_steps).tolist(),
        "spearman_steps_difficulty": spearman_or_none(steps, split.difficulty),
        "halt_first_frac": float((steps == 1).mean()),
        "halt_max_frac": float((steps == max_steps).mean()),
        "wrong_halt_frac": float((~solved[halted_early]).mean()) if halted_early.any() else None,
        "seconds_adaptive": seconds_adaptive,
    }
    if budgets:
        t0 = time.perf_counter()
        full = rollout_all_steps(model, mine, metric, max_steps=max_steps, batch_size=batch_size, device=device)
        report["seconds_all_steps"] = max(shard.gather_objects(time.perf_counter() - t0))
        by_budget = [_gather(shard, s) for s in full["by_budget"]]
        halt_step = _gather(shard, {"h": full["halt_step"]})["h"]
        summaries = [metric.summarize(s) for s in by_budget]
        for col in metric.columns:
            report[f"{col}_by_budget"] = [s[col] for s in summaries]
        report["halt_consistent"] = float((halt_step == steps).mean())
        report["difficulty"] = split.difficulty.tolist()
        report["steps"] = steps.tolist()
        report["by_difficulty"] = _by_difficulty(by_budget, metric, steps, scores, split.difficulty)
    model.train(was_training)
    return report


def _by_difficulty(by_budget: list[dict[str, np.ndarray]], metric: Metric, steps: np.ndarray,
                   adaptive: dict[str, np.ndarray], difficulty: np.ndarray, buckets: int = 3) -> list[dict]:
    """The headline figure per budget and at the adaptive point within difficulty terciles (or
    fewer if ties)."""
    head = metric.columns[0]
    edges = np.unique(np.quantile(difficulty, np.linspace(0, 1, buckets + 1)))
    out = []
    for i in range(len(edges) - 1):
        lo, hi = edges[i], edges[i + 1]
        sel = (difficulty >= lo) & ((difficulty <= hi) if i == len(edges) - 2 else (difficulty < hi))
        if sel.sum() == 0:
            continue
        pick = lambda s: {k: v[sel] for k, v in s.items()}  # noqa: E731
        out.append({"lo": float(lo), "hi": float(hi), "n": int(sel.sum()),
                    f"{head}_by_budget": [metric.summarize(pick(s))[head] for s in by_budget],
                    head: metric.summarize(pick(adaptive))[head], "mean_steps": float(steps[sel].mean())})
    return out


def describe_evaluation(about: dict | None) -> str:
    """One line saying what an evaluation measured: split, overrides, halting head and threshold,
    weights, checkpoint."""
    if not about:
        return ""
    halt = about.get("halt", {})
    parts = [f"split {about.get('split', 'test')}",
             f"halting {halt.get('kind', '?')}" + (f", threshold {halt['threshold']}" if "threshold" in halt else ""),
             f"overrides {' '.join(about['overrides'])}" if about.get("overrides") else "no overrides",
             f"{about.get('weights', '?')} weights of {about.get('checkpoint', '?')}"]
    return "Evaluated: " + "; ".join(parts) + "."
