"""Evaluation inside training: fixed subsets of the held-out and training splits scored with
adaptive halting, what it cost (`time_eval_sec`, summed over the sessions of a resumed run), and
whether an evaluation stops training at `train.target` (decided on the whole held-out split).
`run` below is the loop's `Run` (this module sits under the loop, which imports it)."""
from __future__ import annotations

import time
from functools import partial
from typing import Any

import numpy as np

from ponder.core.stats import wilson_upper
from ponder.training.calibrate import calibrate
from ponder.training.evaluate import evaluate_split
from ponder.training.precision import autocast


EVAL_KEYS = ("mean_steps", "halt_first_frac", "halt_max_frac", "wrong_halt_frac", "steps_histogram")


def in_training_subset(split, k: int, rng: np.random.Generator):
    """A fixed subset of `k` rows of `split` (all of it when k is 0 or covers it), drawn from `rng`."""
    return split if k <= 0 or k >= len(split) else split.subset(np.sort(rng.choice(len(split), k, replace=False)))


def evaluate_during_training(run, step: int, seconds: float | None = None) -> dict:
    """Score fixed subsets of the held-out and training splits with adaptive halting (early exit,
    at the inference batch size) and log the record.

    The held-out subset has `eval.during_training_samples` samples, the training subset at most
    as many (and at most `eval.train_samples`); both are drawn once from a fixed seed, so every
    evaluation of every run scores the same samples. When `train.target` is set, the subset is
    smaller than the held-out split and its headline score may reach the target (`_may_reach`:
    it does, or its 95% upper bound does), the whole held-out split is scored too
    (`full_test_*`), and that score decides the stop. The record carries
    `time_eval_sec` (this evaluation's wall time, calibration and the target's confirmation
    included) and `time_since_start` (the loop's wall time before it, when given).
    With halt.threshold=auto the threshold is calibrated on these weights first and logged as
    `halt_threshold`."""
    t0 = time.perf_counter()
    with autocast(run.device, run.cfg.train.precision):  # evaluated in the arithmetic it trains with
        record = _evaluate_during_training(run, step)
    if seconds is not None:
        record["time_since_start"] = seconds
    record["time_eval_sec"] = time.perf_counter() - t0
    run.log.write(record)
    run.callbacks.call("on_eval_end", run, record)
    return record


def _evaluate_during_training(run, step: int) -> dict:
    cfg, task = run.cfg, run.task
    model = run.eval_model()
    calibration = calibrate(model, task, cfg, device=run.device, shard=run.shard)
    rng = np.random.default_rng(0)  # fixed subsets: comparable across evaluations and runs
    record: dict[str, Any] = {"step": step, "kind": "eval"}
    if calibration is not None:
        record["halt_threshold"] = calibration["threshold"]
    k_test = cfg.eval.during_training_samples
    k_train = min(k for k in (k_test, cfg.eval.train_samples) if k > 0) if k_test or cfg.eval.train_samples else 0
    score = partial(evaluate_split, model, metric=task.metric, max_steps=cfg.halt.max_steps,
                    batch_size=cfg.eval.batch_size, device=run.device, budgets=False, shard=run.shard)
    scored = {}
    for name, split, k in (("test", task.test, k_test), ("train", task.train, k_train)):
        sub = in_training_subset(split, k, rng)
        r = score(sub)
        record.update({f"{name}_{c}": r[c] for c in (*task.metric.columns, *EVAL_KEYS)})
        record[f"{name}_spearman"] = r["spearman_steps_difficulty"]
        scored[name] = len(sub)
    headline = task.metric.columns[0]
    if cfg.train.target > 0 and scored["test"] < len(task.test) and _may_reach(record[f"test_{headline}"],
                                                                                  scored["test"], cfg):
        full = score(task.test)  # the subset says the target may be reached: the whole split decides
        record.update({f"full_test_{c}": full[c] for c in (*task.metric.columns, "mean_steps")})
        record["full_test_n"] = len(task.test)
    return record


def _may_reach(value: float | None, n: int, cfg) -> bool:
    """Whether a subset of `n` samples scoring `value` leaves the target within reach of the whole
    split: the score reaches it, or (a fraction of the samples) the one-sided 95% upper bound of
    the proportion does. A subset of 100 at 98% does not rule out 99% on the split; at 90% it does."""
    if value is None:
        return False
    return _reaches(value, cfg) or (0 <= value <= 1 and _reaches(wilson_upper(value * n, n), cfg))


def _reaches(value: float | None, cfg) -> bool:
    """Whether a headline score reaches `train.target` (at or above it)."""
    return value is not None and value >= cfg.train.target


def target_reached(record: dict, headline: str, cfg) -> bool:
    """Whether an evaluation record stops training at `train.target`: the whole held-out split's
    headline score reaches it (the whole split's, `full_test_*`, when the subset was smaller and
    came within reach; else the subset's, which is then the whole split or out of reach)."""
    full = record.get(f"full_test_{headline}")
    return cfg.train.target > 0 and _reaches(full if full is not None else record.get(f"test_{headline}"), cfg)


def wall_seconds(records: list[dict]) -> list[float | None]:
    """The training loop's wall time at each record (its `time_since_start`), the sessions of a
    resumed run summed: a session is the records up to a fall of `time_since_start`, and a closed
    session counts to the end of its last timed record (its time plus its evaluation's seconds).
    The time between a session's last record and its interruption is not in the log and is not
    counted. None for records without a time."""
    out: list[float | None] = []
    offset, last = 0.0, None
    for r in records:
        t = r.get("time_since_start")
        if not isinstance(t, (int, float)):
            out.append(None)
            continue
        if last is not None and t < last[0]:  # a new session began: close the last one
            offset += last[0] + last[1]
        last = (t, r.get("time_eval_sec") or 0.0)
        out.append(offset + t)
    return out


def evaluation_cost(records: list[dict]) -> dict | None:
    """What evaluation inside training cost, from a run's records: evaluations, their seconds
    (`time_eval_sec`) and the share of the loop's wall time they took (`wall_seconds`: sessions
    of a resumed run summed). None without timed evaluations (a run logged before they were
    timed, or none evaluated)."""
    evals = [r for r in records if r.get("kind") == "eval" and isinstance(r.get("time_eval_sec"), (int, float))]
    if not evals:
        return None
    spent = sum(r["time_eval_sec"] for r in evals)
    timed = [(t, r) for t, r in zip(wall_seconds(evals), evals) if t is not None]
    wall = timed[-1][0] + timed[-1][1]["time_eval_sec"] if timed else 0.0
    return {"evaluations": len(evals), "seconds": spent, "loop_seconds": wall or None,
            "share": spent / wall if wall > 0 else None}
