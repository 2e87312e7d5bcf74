"""Evaluation: exact-match metrics per step budget, adaptive halting with real early exit,
trivial baselines on the same split.

Definitions (as in TRM/HRM): a sample is *exact* when every supervised position's argmax equals
its label; *cell accuracy* is correct supervised positions / all supervised positions.
Baselines printed beside every score, on the same split:
- copy input: predict the input token at every position (shows what copying givens is worth);
- most frequent label per position: the training split's most common label at each position.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ponder.data.base import Split
from ponder.stats import spearman_or_none
from ponder.types import IGNORE, State


@dataclass(kw_only=True)
class EvalConfig:
    """Evaluation settings.

    Attributes:
        batch_size: samples per inference batch.
        max_samples: cap on held-out samples for `ponder eval` (0 = the whole split).
        train_samples: training-split samples scored beside the held-out ones.
        during_training_samples: held-out samples scored at each evaluation inside training.
        use_ema: evaluate the EMA weights when the run keeps them.
    """

    batch_size: int = 256
    max_samples: int = 0
    train_samples: int = 512
    during_training_samples: int = 512
    use_ema: bool = True


def exact_and_cells(preds: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(b, n) predictions and labels -> (b,) exact, (b,) correct cells, (b,) supervised cells."""
    mask = labels != IGNORE  # (b, n)
    hit = (preds == labels) & mask
    correct = hit.sum(1)
    total = mask.sum(1)
    return correct == total, correct, total


@torch.no_grad()
def rollout_all_steps(model, head, split: Split, *, max_steps: int, batch_size: int,
                      device: torch.device) -> dict[str, np.ndarray]:
    """Run every sample for `max_steps` steps (no early exit); budget t answers with the head's
    answer at step t (the readout, or ACT's mean-field output so far).

    Returns arrays: exact (N, M) bool, cells (N, M) correct counts, total (N,) supervised counts,
    halt_step (N,) the first step at which the head's rule says halt (M if never).
    """
    n = len(split)
    exact = np.zeros((n, max_steps), dtype=bool)
    cells = np.zeros((n, max_steps), dtype=np.int64)
    total = np.zeros(n, dtype=np.int64)
    halt_step = np.full(n, max_steps, dtype=np.int64)
    for lo in range(0, n, batch_size):
        inputs = torch.as_tensor(split.inputs[lo:lo + batch_size], device=device)
        labels = torch.as_tensor(split.labels[lo:lo + batch_size], device=device)
        b = inputs.shape[0]
        state = model.init_state(b, device)
        memo = head.start(b, device)
        halted = torch.zeros(b, dtype=torch.bool, device=device)
        first = torch.full((b,), max_steps, dtype=torch.long, device=device)
        for t in range(1, max_steps + 1):
            state, out = model.step(state, inputs)
            decision, memo = head.decide(out, torch.full((b,), t, device=device), memo)
            ex, corr, tot = exact_and_cells(head.answer(out, memo).argmax(-1), labels)
            exact[lo:lo + b, t - 1] = ex.cpu().numpy()
            cells[lo:lo + b, t - 1] = corr.cpu().numpy()
            total[lo:lo + b] = tot.cpu().numpy()
            stop = decision & ~halted
            first[stop] = t
            halted |= stop
        halt_step[lo:lo + b] = first.cpu().numpy()
    return {"exact": exact, "cells": cells, "total": total, "halt_step": halt_step}


@torch.no_grad()
def adaptive_inference(model, head, inputs: Tensor, *, max_steps: int) -> tuple[Tensor, Tensor]:
    """Batched early exit: a sample leaves the active batch at the step its head halts.

    Args:
        inputs: (b, n) tokens.
    Returns:
        preds (b, n) argmax at each sample's halting step, steps (b,) steps used.
    """
    b = inputs.shape[0]
    device = inputs.device
    preds = torch.empty_like(inputs)
    steps = torch.full((b,), max_steps, dtype=torch.long, device=device)
    active = torch.arange(b, device=device)  # original row of each active sample
    state: State = model.init_state(b, device)
    memo = head.start(b, device)
    for t in range(1, max_steps + 1):
        state, out = model.step(state, inputs[active])
        stop, memo = head.decide(out, torch.full((len(active),), t, device=device), memo)
        if t == max_steps:
            stop = torch.ones_like(stop)
        done = active[stop]
        preds[done] = head.answer(out, memo)[stop].argmax(-1)
        steps[done] = t
        keep = ~stop
        if not keep.any():
            break
        active = active[keep]
        state = state.index(keep)  # finished samples leave: later steps cost less
        memo = {k: v[keep] for k, v in memo.items()}
    return preds, steps


def baselines(split: Split, train: Split) -> dict[str, dict[str, float]]:
    """Trivial baselines on `split`: copy the input; most frequent training label per position."""
    labels = torch.as_tensor(split.labels)
    out = {}
    copy_ex, copy_c, tot = exact_and_cells(torch.as_tensor(split.inputs), labels)
    out["copy input"] = {"exact": copy_ex.float().mean().item(), "cell": (copy_c.sum() / tot.sum()).item()}
    train_labels = np.where(train.labels == IGNORE, 0, train.labels)
    vocab = int(max(train_labels.max(), split.labels.max())) + 1
    counts = np.stack([np.bincount(col, minlength=vocab) for col in train_labels.T])  # (n, v)
    counts[:, 0] = np.where(counts[:, 1:].sum(1) > 0, 0, counts[:, 0])  # never prefer PAD/IGNORE
    modal = torch.as_tensor(counts.argmax(1)).expand_as(labels)
    mf_ex, mf_c, tot = exact_and_cells(modal, labels)
    out["most frequent label"] = {"exact": mf_ex.float().mean().item(), "cell": (mf_c.sum() / tot.sum()).item()}
    return out


def evaluate_split(model, head, split: Split, *, max_steps: int, batch_size: int,
                   device: torch.device, budgets: bool = True) -> dict:
    """Adaptive-halting accuracy (real early exit) and, optionally, accuracy per step budget.

    Returns a dict with keys: n, exact, cell, mean_steps, steps_histogram (list, index s-1 ->
    count of samples that used s steps), spearman_steps_difficulty, halt_first_frac and
    halt_max_frac (fractions stopping at step 1 / running to M), wrong_halt_frac (of the samples
    the head stopped before M, the fraction answered wrongly; None if none), seconds_adaptive, and with
    budgets: exact_by_budget, cell_by_budget (lists over budgets 1..M), seconds_all_steps,
    halt_consistent (fraction of samples whose early-exit step equals the full rollout's).
    """
    was_training = model.training
    model.eval()
    n = len(split)
    ex_all, cells_all, tot_all, steps_all = [], [], [], []
    t0 = time.perf_counter()
    for lo in range(0, n, batch_size):
        inputs = torch.as_tensor(split.inputs[lo:lo + batch_size], device=device)
        labels = torch.as_tensor(split.labels[lo:lo + batch_size], device=device)
        preds, steps = adaptive_inference(model, head, inputs, max_steps=max_steps)
        ex, corr, tot = exact_and_cells(preds, labels)
        ex_all.append(ex.cpu()), cells_all.append(corr.cpu()), tot_all.append(tot.cpu()), steps_all.append(steps.cpu())
    seconds_adaptive = time.perf_counter() - t0
    ex = torch.cat(ex_all).numpy()
    steps = torch.cat(steps_all).numpy()
    halted_early = steps < max_steps  # halts decided by the head, not forced by the cap
    report = {
        "n": n,
        "exact": float(ex.mean()),
        "cell": float(torch.cat(cells_all).sum() / torch.cat(tot_all).sum()),
        "mean_steps": float(steps.mean()),
        "max_steps": max_steps,
        "steps_histogram": np.bincount(steps - 1, minlength=max_steps).tolist(),
        "spearman_steps_difficulty": spearman_or_none(steps, split.difficulty),
        "halt_first_frac": float((steps == 1).mean()),
        "halt_max_frac": float((steps == max_steps).mean()),
        "wrong_halt_frac": float((~ex[halted_early]).mean()) if halted_early.any() else None,
        "seconds_adaptive": seconds_adaptive,
    }
    if budgets:
        t0 = time.perf_counter()
        full = rollout_all_steps(model, head, split, max_steps=max_steps, batch_size=batch_size, device=device)
        report["seconds_all_steps"] = time.perf_counter() - t0
        report["exact_by_budget"] = full["exact"].mean(0).tolist()
        report["cell_by_budget"] = (full["cells"].sum(0) / max(1, full["total"].sum())).tolist()
        report["halt_consistent"] = float((full["halt_step"] == steps).mean())
        report["difficulty"] = split.difficulty.tolist()
        report["steps"] = steps.tolist()
        report["by_difficulty"] = _by_difficulty(full["exact"], steps, ex, split.difficulty)
    model.train(was_training)
    return report


def _by_difficulty(exact_budget: np.ndarray, steps: np.ndarray, exact_adaptive: np.ndarray,
                   difficulty: np.ndarray, buckets: int = 3) -> list[dict]:
    """Accuracy per budget and adaptive point within difficulty terciles (or fewer if ties)."""
    edges = np.unique(np.quantile(difficulty, np.linspace(0, 1, buckets + 1)))
    out = []
    for i in range(len(edges) - 1):
        lo, hi = edges[i], edges[i + 1]
        sel = (difficulty >= lo) & ((difficulty <= hi) if i == len(edges) - 2 else (difficulty < hi))
        if sel.sum() == 0:
            continue
        out.append({"lo": float(lo), "hi": float(hi), "n": int(sel.sum()),
                    "exact_by_budget": exact_budget[sel].mean(0).tolist(),
                    "exact": float(exact_adaptive[sel].mean()), "mean_steps": float(steps[sel].mean())})
    return out
