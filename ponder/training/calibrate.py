"""`halt.threshold=auto`: the halting threshold calibrated on training data at every evaluation.

What is calibrated on: a validation slice of the training data, the LAST
`halt.calibration_samples` samples of the task's training split (`calibration_split`), never the
held-out split. A run trained with halt.threshold=auto never trains on them (`training_split`:
the sample stream reads the rest), so they are unseen. A run trained with a fixed threshold and
evaluated with `--halt.threshold=auto` did train on them, and the record says so ("seen in
training"): a model is more confident on samples it was trained on, so that choice is optimistic
(BENCHMARKS.md, thresholds).

How (`calibrate`): one rollout of the slice at M = halt.max_steps steps with the model in eval
mode keeps, per step, the head's halting outputs (halt logits and its further outputs, not the
answer logits) and whether that step's answer solves each sample (the task metric's `correct`,
the fraction its headline figure counts). Then for every candidate of `GRID` the head's OWN
`decide` is replayed on those outputs with the candidate as its threshold (`replay`), giving the
step each sample halts at, hence its solved fraction and mean steps; the decision rule lives in
the head alone. The choice (`choose`) is the lowest candidate whose solved fraction is at least
the solved fraction at M minus `halt.auto_margin`; 1.0 (never halt before M) always qualifies.
The replay reads each sample's answer at the step it halts at as that step's readout, which is
what the threshold heads answer with (Q-halt, PonderNet: `answer` is the step's logits).

The chosen value is held by the head (`head.calibrated`, with the record in `head.calibration`);
the head's `decide` uses it whenever the model is in eval mode, and 0.5 while it trains.
Across processes every rank calibrates the same whole slice (it is small) and then adopts rank
0's record, so every rank halts alike.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor

from ponder.core.errors import PonderError
from ponder.core.metrics import Metric
from ponder.core.task import Split, TaskData
from ponder.core.types import StepOutput
from ponder.models.halting.base import AUTO, ThresholdRule
from ponder.training.carry import batch_of
from ponder.training.distributed import SINGLE, Shard

# candidate thresholds, lowest first; 1.0 never halts before M (the always-M reference)
GRID = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)
TOLERANCE = 1e-9  # solved fractions are ratios of counts: equal ones may differ in the last bit

Trace = tuple[list[StepOutput], Tensor]  # one batch: per-step halting outputs, solved (b, M) bool


def wants_calibration(cfg) -> bool:
    """Whether the run's halting head has threshold "auto"."""
    return getattr(cfg.halt, "threshold", None) == AUTO


def calibration_split(train: Split, samples: int) -> Split:
    """The calibration slice: the last `samples` samples of the training split."""
    return train.slice(max(0, len(train) - samples), len(train))


def slice_size(train: Split, cfg) -> int:
    """Samples in the calibration slice: halt.calibration_samples, at most a quarter of the training
    split (so a small task keeps three quarters to train on)."""
    return min(cfg.halt.calibration_samples, len(train) // 4)


def training_split(train: Split, cfg) -> Split:
    """The samples a run trains on: with halt.threshold=auto the training split without its
    calibration slice, else all of it."""
    if not wants_calibration(cfg):
        return train
    return train.slice(0, len(train) - slice_size(train, cfg))


@torch.no_grad()
def trace(model, split: Split, metric: Metric, *, max_steps: int, batch_size: int,
          device: torch.device) -> list[Trace]:
    """Roll every sample of `split` out for `max_steps` steps (model in eval mode); per batch, the
    per-step halting outputs (without the answer logits) and solved (b, M): does step t's answer
    solve the sample."""
    was_training = model.training
    model.eval()
    traces = []
    try:
        for lo in range(0, len(split), batch_size):
            batch = batch_of(split.slice(lo, lo + batch_size)).to(device)
            ctx = model.prepare(batch)
            state = model.init_state(len(batch), device)
            outs, solved = [], []
            for _ in range(max_steps):
                state, out = model.step(state, ctx)
                solved.append(metric.correct(metric.score(out.logits, batch.labels)).bool())
                outs.append(StepOutput(out.halt_logits.new_empty(0), out.halt_logits, dict(out.aux)))
            traces.append((outs, torch.stack(solved, 1)))
    finally:
        model.train(was_training)
    return traces


@torch.no_grad()
def replay(head: ThresholdRule, traces: list[Trace], threshold: float, max_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The head's own `decide` on the traced outputs with `threshold` as its threshold (head in
    eval mode). Returns (step each sample halts at (N,), whether its answer there solves it (N,))."""
    was_training, old = head.training, head.calibrated
    head.eval()
    head.calibrated = threshold
    steps_all, solved_all = [], []
    try:
        for outs, solved in traces:
            b = solved.shape[0]
            device = solved.device
            memo = head.start(b, device)
            stop = torch.full((b,), max_steps, dtype=torch.long, device=device)
            halted = torch.zeros(b, dtype=torch.bool, device=device)
            for t, out in enumerate(outs, start=1):
                decision, memo = head.decide(out, torch.full((b,), t, device=device), memo)
                new = decision & ~halted
                stop[new] = t
                halted |= new
            steps_all.append(stop)
            solved_all.append(solved.gather(1, (stop - 1).view(-1, 1)).squeeze(1))
    finally:
        head.calibrated = old
        head.train(was_training)
    return torch.cat(steps_all).cpu().numpy(), torch.cat(solved_all).cpu().numpy()


def choose(candidates: list[dict], at_max: float, margin: float) -> float:
    """The lowest candidate threshold whose solved fraction is >= `at_max` - `margin`
    (candidates: dicts with "threshold" and "solved"); 1.0 when none is."""
    ok = [c["threshold"] for c in candidates if c["solved"] >= at_max - margin - TOLERANCE]
    return min(ok) if ok else 1.0


def calibrate_traces(head: ThresholdRule, traces: list[Trace], *, max_steps: int, margin: float,
                     grid: tuple[float, ...] = GRID) -> dict:
    """Replay every threshold of `grid` on `traces` and choose; returns the record's figures:
    threshold, solved_at_max, solved_at_choice, mean_steps_at_choice, candidates."""
    at_max = float(torch.cat([s[:, -1] for _, s in traces]).float().mean())
    candidates = []
    for t in grid:
        steps, solved = replay(head, traces, t, max_steps)
        candidates.append({"threshold": t, "solved": float(solved.mean()), "mean_steps": float(steps.mean())})
    chosen = choose(candidates, at_max, margin)
    pick = next((c for c in candidates if c["threshold"] == chosen), None)
    if pick is None:  # no candidate within the margin and 1.0 not in the grid: always M
        pick = {"threshold": 1.0, "solved": at_max, "mean_steps": float(max_steps)}
    return {"threshold": chosen, "solved_at_max": at_max, "solved_at_choice": pick["solved"],
            "mean_steps_at_choice": pick["mean_steps"], "candidates": candidates}


def calibrate(model, task: TaskData, cfg, *, device: torch.device, shard: Shard = SINGLE,
              held_out: bool = True) -> dict | None:
    """Calibrate `model`'s halting threshold when `cfg.halt.threshold` is "auto" (else None,
    nothing done): sets `model.halting.calibrated` and `.calibration` and returns the record
    (threshold, margin, samples, source, split, rows, max_steps, solved_at_max, solved_at_choice,
    mean_steps_at_choice, candidates, seconds). Call it wherever an evaluation starts; across
    processes every rank must call it (rank 0's record is adopted by all). `held_out`: the run
    was trained with halt.threshold=auto, so the slice was kept out of its training."""
    if not wants_calibration(cfg):
        return None
    head = getattr(model, "halting", None)
    if getattr(task.metric, "evaluate_split", None) is not None or not isinstance(head, ThresholdRule):
        raise PonderError(f"halt.threshold=auto is calibrated per sample; task {task.name!r} with model kind "
                          f"{cfg.kind('model')!r} is not evaluated per sample: give halt.threshold a number")
    hc = cfg.halt
    n = slice_size(task.train, cfg)
    if n == 0:
        raise PonderError("halt.threshold=auto needs training samples to calibrate on; the training split is empty")
    t0 = time.perf_counter()
    lo = len(task.train) - n
    traces = trace(model, calibration_split(task.train, n), task.metric, max_steps=hc.max_steps,
                   batch_size=cfg.eval.batch_size, device=device)
    figures = calibrate_traces(head, traces, max_steps=hc.max_steps, margin=hc.auto_margin)
    record = {"threshold": figures["threshold"], "margin": hc.auto_margin, "samples": n,
              "source": f"last {n} training samples ({'held out of training' if held_out else 'seen in training'})",
              "held_out": held_out, "split": "train", "rows": [lo, lo + n],
              "max_steps": hc.max_steps, **{k: v for k, v in figures.items() if k != "threshold"},
              "seconds": time.perf_counter() - t0}
    record = shard.gather_objects(record)[0]  # every rank halts as rank 0 chose
    head.calibrated = record["threshold"]
    head.calibration = record
    return record


def describe(record: dict) -> str:
    """One line about a calibration record (for reports)."""
    return (f"halt.threshold=auto chose {record['threshold']:g} on the {record['source']}: solved "
            f"{100 * record['solved_at_choice']:.1f}% at {record['mean_steps_at_choice']:.2f} mean steps vs "
            f"{100 * record['solved_at_max']:.1f}% always {record['max_steps']} steps "
            f"(margin {100 * record['margin']:g} points)")
