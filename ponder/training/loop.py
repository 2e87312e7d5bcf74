"""The one training loop. It receives built parts (ponder.runs.run builds them) and runs them.

What one optimizer step computes is the objective's business (ponder.training.objectives). The loop sets
the scheduled LR, refuses non-finite steps (and counts them), clips, steps the optimizer and
EMA, logs, evaluates on held-out data (and a training subset, reported separately) every
`eval_every` steps, stops early at `train.target`, and writes atomic checkpoints that hold
everything needed for a bit-exact resume.
"""
from __future__ import annotations

import contextlib
import copy
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ponder.core.errors import PonderError
from ponder.core.files import WriteFailed
from ponder.core.progress import silenced
from ponder.core.task import TaskData
from ponder.training.callbacks import Callbacks, MetricsLog
from ponder.training.carry import SampleStream
from ponder.training.checkpoint import save_checkpoint, stopped_by_write
from ponder.training.distributed import SINGLE, Shard
from ponder.training.host import device_rng_state, set_device_rng_state
from ponder.training.in_training import evaluate_during_training, evaluation_cost, target_reached
from ponder.training.optim import ExponentialMovingAverage, lr_factor
from ponder.training.precision import autocast
from ponder.training.train_config import TrainConfig
from ponder.training.transfer import fetch


class Window:
    """Running sums of per-step metrics between two log records; each figure is averaged over
    the steps that reported it (some are computed only on the logged step: the objective's
    `detailed` figures)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.n = 0

    def add(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1
        self.n += 1

    def means(self) -> dict[str, float]:
        return {k: v / max(1, self.counts.get(k, self.n)) for k, v in self.sums.items()}

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "counts": dict(self.counts), "n": self.n}

    def load_state_dict(self, s: dict) -> None:
        self.sums, self.n = dict(s["sums"]), s["n"]
        self.counts = dict(s.get("counts") or {k: self.n for k in self.sums})  # before: every figure every step


@dataclass
class Run:
    """Everything one training run uses, built by ponder.runs.run; callbacks receive it.

    Attributes:
        cfg: the run's Config; config_dict: its JSON form (saved in every checkpoint).
        run_dir, task, model, optimizer, ema (or None), stream, objective, callbacks, log, device.
        shard: this process among the data-parallel ones (ponder.training.distributed; rank 0 writes files).
        step: optimizer steps taken; skipped_steps: non-finite steps refused; window: log sums.
        lock: the run directory's writer lock (ponder.core.lock; rank 0 holds it), released by close().
    """

    cfg: Any
    config_dict: dict
    run_dir: Path
    task: TaskData
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    ema: ExponentialMovingAverage | None
    stream: SampleStream
    objective: Any
    callbacks: Callbacks
    log: MetricsLog
    device: torch.device
    shard: Shard = SINGLE
    step: int = 0
    skipped_steps: int = 0
    window: Window = field(default_factory=Window)
    lock: Any = None

    def close(self) -> None:
        """Let another writer have the run directory (the lock also dies with the process)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def training_state(self) -> dict:
        """Everything besides the weights that a bit-exact resume needs (the device's own RNG
        too: PonderNet's eval_rule=sample draws on it on a GPU)."""
        return {"step": self.step, "optimizer": self.optimizer.state_dict(), "stream": self.stream.state_dict(),
                "objective": self.objective.state_dict(), "torch_rng": torch.get_rng_state(),
                "device_rng": device_rng_state(self.device),
                "window": self.window.state_dict(), "skipped_steps": self.skipped_steps,
                "callbacks": self.callbacks.state_dict()}

    def load_training_state(self, st: dict) -> None:
        self.optimizer.load_state_dict(st["optimizer"])
        self.stream.load_state_dict(st["stream"])
        self.objective.load_state_dict(st["objective"])
        torch.set_rng_state(st["torch_rng"])
        set_device_rng_state(self.device, st.get("device_rng"))
        self.window.load_state_dict(st["window"])
        self.skipped_steps = st["skipped_steps"]
        self.callbacks.load_state_dict(st.get("callbacks", []))
        self.step = st["step"]

    def save_checkpoint(self, step: int) -> None:
        """Every rank gathers the global training state; rank 0 alone writes it."""
        state = self.training_state()
        if self.shard.main:
            save_checkpoint(self.run_dir, step, model_state=self.model.state_dict(),
                            ema_state=self.ema.state_dict() if self.ema else None, training_state=state,
                            config=self.config_dict, keep=self.cfg.train.keep_checkpoints)
            self.log.write_csv()
        self.shard.barrier()  # no rank reads or moves on before the checkpoint exists

    def eval_model(self) -> torch.nn.Module:
        """The weights evaluation uses: the EMA's when the run keeps one and eval.use_ema."""
        if self.ema is None or not self.cfg.eval.use_ema:
            return self.model
        shadow = copy.deepcopy(self.model)
        self.ema.copy_to(shadow)
        return shadow


class _StopRequest:
    """Turns the first Ctrl-C / SIGTERM into a request honoured at the next step boundary; a
    second one stops at once, except inside `critical()` (a checkpoint being written), where it
    waits for the write to finish, so a signal never leaves half a checkpoint or a log that runs
    past it."""

    def __init__(self):
        self.requested = False
        self.pending = False  # a second signal arrived inside a critical section
        self._depth = 0
        self._old: dict[int, Any] = {}

    @contextlib.contextmanager
    def critical(self):
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self.pending and self._depth == 0:
            self.pending = False
            raise KeyboardInterrupt

    def __enter__(self):
        def handler(signum, frame):
            if self.requested:  # second press: stop now (after a checkpoint write under way)
                if self._depth:
                    self.pending = True
                    return
                raise KeyboardInterrupt
            self.requested = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _set_lr(run: Run, step: int) -> None:
    tc = run.cfg.train
    for group in run.optimizer.param_groups:  # schedule from the step index: resume-exact
        group["lr"] = tc.lr * group.get("lr_scale", 1.0) * lr_factor(step, warmup=tc.warmup_steps, total=tc.steps,
                                                                      schedule=tc.schedule, min_ratio=tc.min_lr_ratio)


def _optimizer_step(run: Run, loss: torch.Tensor, metrics: dict) -> tuple[bool, float, dict, dict]:
    """Backward, clip, then the step's one host transfer (the loss, its figures, the pre-clip
    gradient norm, what the objective's commit and the callbacks need), then step or refuse: a
    non-finite loss or gradient never reaches the optimizer. The backward runs on a non-finite
    loss too (deciding to skip it would be a host read of its own); its gradients are refused
    with it. Returns (skipped, pre-clip gradient norm, the fetched values, the global batch's
    figures: each rank computed its share's)."""
    clip = run.cfg.train.grad_clip
    params = list(run.model.parameters())
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # one all-reduce averages the gradients across processes and tells every rank whether any
    # rank's loss was not finite (then all refuse the step together); one process: the flag itself
    bad = run.shard.average_gradients(params, ~torch.isfinite(loss.detach()))
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
    host = fetch({"_ok": ~bad & torch.isfinite(grad_norm), "_grad_norm": grad_norm, "loss": loss, **metrics,
                  **run.objective.pending(), **run.callbacks.collect("step_tensors", run)})
    skipped, grad_norm = not host.pop("_ok"), host.pop("_grad_norm")
    figures = run.shard.mean_metrics({k: v for k, v in host.items() if _loggable(k, v)},
                                     run.shard.local_size(run.cfg.train.batch_size))
    if skipped:
        run.skipped_steps += 1
        run.optimizer.zero_grad(set_to_none=True)
        grad_norm = float("nan") if not math.isfinite(host["loss"]) else grad_norm
    else:
        run.optimizer.step()
        if run.ema is not None:
            run.ema.update(run.model)
        run.window.add({**figures, "grad_norm": grad_norm})
    return skipped, grad_norm, host, figures


def _loggable(key: str, value: Any) -> bool:
    """A figure of the training log: a number whose key is not private (a leading underscore marks
    what the objective or a callback fetched for itself)."""
    return not key.startswith("_") and isinstance(value, (int, float)) and not isinstance(value, bool)


def _log_train(run: Run, done: int, seconds: float) -> dict:
    obj = run.objective
    hs, counters = obj.halt_steps, obj.counters
    record = {"step": done, "kind": "train", **run.window.means(), "lr": run.optimizer.param_groups[0]["lr"],
              **counters, "skipped_steps": run.skipped_steps, "in_flight": obj.in_flight(),
              "samples_dropped": counters["samples_taken"] - counters["samples_completed"] - obj.in_flight(),
              "halted_mean_steps": float(np.mean(hs)) if hs else None,
              **({} if getattr(run.stream, "limit", None) is None else {"curriculum_limit": run.stream.limit}),
              "time_sec_per_step": seconds / max(1, run.window.n)}
    run.log.write(record)
    run.window = Window()
    obj.halt_steps = []
    return record


def logged_step(tc: TrainConfig, done: int) -> bool:
    """Is the step that makes `done` steps written to the training log?"""
    return bool(tc.log_every) and (done % tc.log_every == 0 or done == tc.steps)


def train_step(run: Run) -> dict:
    """One optimizer step of the run (the loop's body): scheduled LR, callbacks, the objective's
    forward, backward, clip, step (or refusal), commit. Returns the step's metrics as the
    callbacks saw them (step, loss, skipped, pre-clip grad_norm and the objective's figures)."""
    step = run.step
    _set_lr(run, step)
    if hasattr(run.objective, "detailed"):  # the figures that only logged steps need
        run.objective.detailed = logged_step(run.cfg.train, step + 1)
    run.callbacks.call("on_step_start", run, step)
    with autocast(run.device, run.cfg.train.precision):  # one region: each weight is cast once per step
        loss, metrics = run.objective.forward(step)
    skipped, grad_norm, host, figures = _optimizer_step(run, loss, metrics)
    run.objective.commit(not skipped, host)
    run.step = step + 1
    metrics = {**host, **figures, "step": run.step, "skipped": skipped, "grad_norm": grad_norm}
    run.callbacks.call("on_step_end", run, metrics)  # grad_norm: before clipping
    return {k: v for k, v in metrics.items() if not k.startswith("_")}


def train(run: Run) -> str:
    """Run the loop from `run.step` to `train.steps` (or an earlier stop).

    Returns why it stopped: "done", "target" (train.target reached), "time" (train.max_minutes).
    An interrupt (Ctrl-C, SIGTERM) checkpoints and raises a PonderError saying how to resume.
    """
    try:
        return _train(run)
    except WriteFailed as e:  # a full disk, a read-only file system: one line, and where to resume
        raise stopped_by_write(e, run.run_dir, run.step) from None


def _train(run: Run) -> str:
    tc = run.cfg.train
    run.callbacks.call("on_train_start", run)
    run.model.train()
    bar = tqdm(total=tc.steps, initial=run.step, disable=not tc.progress or not run.shard.main, desc="train",
               unit="step", dynamic_ncols=True)
    t_window = t_start = time.perf_counter()
    start = run.step
    why = "done"
    with _StopRequest() as stop:
        while run.step < tc.steps:
            train_step(run)
            done = run.step
            bar.update(1)
            if logged_step(tc, done):
                record = _log_train(run, done, time.perf_counter() - t_window)
                t_window = time.perf_counter()
                bar.set_postfix(loss=f"{record.get('loss', float('nan')):.3f}",
                                exact=f"{record.get('step_exact', 0):.2f}",
                                steps=f"{record['halted_mean_steps'] or 0:.1f}")
            evaluated = None
            if tc.eval_every and (done % tc.eval_every == 0 or done == tc.steps):
                with silenced():  # the training bar stays the one line on the terminal
                    evaluated = evaluate_during_training(run, done, time.perf_counter() - t_start)
                t_window += evaluated["time_eval_sec"]  # time_sec_per_step counts training alone
            out_of_time = tc.max_minutes > 0 and time.perf_counter() - t_start > 60 * tc.max_minutes
            # every rank must stop at the same step: a signal or a clock seen by any rank counts for all
            stopping, out_of_time = run.shard.any_flags([stop.requested, out_of_time])
            if out_of_time:
                why = "time"
            headline = run.task.metric.columns[0]
            if evaluated is not None and target_reached(evaluated, headline, run.cfg):
                why = "target"
            if why == "time" and evaluated is None:
                with silenced():
                    evaluate_during_training(run, done, time.perf_counter() - t_start)
            if (tc.checkpoint_every and done % tc.checkpoint_every == 0) or done == tc.steps or stopping \
                    or why != "done":
                with stop.critical():
                    run.save_checkpoint(done)
            if why != "done":
                if run.shard.main:
                    tqdm.write(f"time limit of {tc.max_minutes:g} min reached at step {done}" if why == "time" else
                               f"target {tc.target:g} held-out {headline} reached at step {done}"
                               + (" (subset, confirmed on the whole split)" if "full_test_n" in evaluated else ""))
                break
            if stopping:
                bar.close()
                raise PonderError(f"interrupted at step {done}; checkpoint saved, continue with: ponder train "
                                  f"{run.cfg.preset or 'PRESET'} --resume {run.run_dir}")
    bar.close()
    cost = evaluation_cost([r for r in run.log.records() if r.get("step", 0) > start]) if (
        run.shard.main and tc.progress) else None
    if cost and cost["share"] is not None:
        tqdm.write(f"evaluation during training: {cost['evaluations']} evaluations, {cost['seconds']:.1f} s, "
                   f"{100 * cost['share']:.0f}% of the loop's {cost['loop_seconds']:.0f} s")
    run.callbacks.call("on_train_end", run)
    run.log.write_csv()
    if run.log.mirror is not None:
        run.log.mirror.close()
    return why
