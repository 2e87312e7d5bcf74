"""The one training loop: learned halting, evaluation, checkpoints, exact resume.

What one optimizer step computes is the objective's business (ponder.objectives): one ACT step of
every slot of the deep-supervision carry (Q-halt heads), or a whole unrolled trajectory (ACT,
PonderNet). The loop refuses non-finite steps, clips, steps the optimizer and EMA. Evaluation
runs every `eval_every` steps on held-out data (and a training subset, reported separately);
checkpoints are atomic and hold everything needed for a bit-exact resume on CPU.
"""
from __future__ import annotations

import copy
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from ponder.callbacks import Callbacks, MetricsLog
from ponder.carry import SampleStream
from ponder.checkpoint import (atomic_write_text, format_load_report, load_checkpoint, partial_load,
                               resolve_checkpoint, save_checkpoint)
from ponder.errors import PonderError
from ponder.evaluate import evaluate_split
from ponder.objectives import build_objective
from ponder.optim import ExponentialMovingAverage, build_optimizer, lr_factor

if TYPE_CHECKING:
    from ponder.config import Config


@dataclass(kw_only=True)
class TrainConfig:
    """Training settings.

    Attributes:
        seed: seeds weights, sample order, augmentation and exploration.
        batch_size: B, slots in the deep-supervision carry.
        steps: optimizer steps (each is one ACT step of every slot).
        optimizer: "adamw" or "adam_atan2".
        lr, beta1, beta2, weight_decay: optimizer settings (decay on matrices only).
        warmup_steps, schedule ("constant" | "cosine"), min_lr_ratio: learning-rate schedule.
        grad_clip: max global gradient norm (0 = off).
        ema_decay: EMA of weights used for evaluation (0 = off).
        loss: "softmax" cross-entropy or TRM's "stablemax" (computed in float64).
        log_every, eval_every, checkpoint_every: intervals in optimizer steps (0 = never).
        keep_checkpoints: newest checkpoints kept on disk.
        device: "cpu", "cuda", "mps" or "auto".
        threads: torch CPU threads (0 = torch's default).
        progress: show a progress bar with ETA.
        max_minutes: stop (checkpoint, final evaluation) after this much training wall time (0 = off).
        estimator: gradient of the recursion: "trm" (T-1 cycles without gradient, then one with) or
            a ponder.estimators name ("bptt", "truncated", "implicit", ...; ponder.estimator_hook).
        estimator_k, estimator_tol, estimator_max_iter, estimator_solver: settings passed to
            estimators that take them (truncation depth k; solver tolerance and iteration cap;
            the implicit forward solver, "fixed_point" or "anderson").
    """

    seed: int = 0
    batch_size: int = 64
    steps: int = 1000
    optimizer: str = "adamw"
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.1
    warmup_steps: int = 100
    schedule: str = "constant"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    loss: str = "softmax"
    log_every: int = 50
    eval_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    device: str = "cpu"
    threads: int = 0
    progress: bool = True
    max_minutes: float = 0.0
    estimator: str = "trm"
    estimator_k: int = 1
    estimator_tol: float = 1e-4
    estimator_max_iter: int = 50
    estimator_solver: str = "fixed_point"

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise PonderError("train.steps and train.batch_size must be >= 1")
        if self.schedule not in ("constant", "cosine"):
            raise PonderError(f"train.schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.loss not in ("softmax", "stablemax"):
            raise PonderError(f"train.loss must be 'softmax' or 'stablemax', got {self.loss!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise PonderError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        from ponder.estimator_hook import estimator_from_train_config

        estimator_from_train_config(self)  # an unknown name is a one-line PonderError


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; an unavailable device is a PonderError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise PonderError(f"train.device must be cpu, cuda, mps or auto, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PonderError("train.device=cuda but no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise PonderError("train.device=mps but MPS is not available")
    return torch.device(name)


class _Window:
    """Running sums of per-step metrics between two log records."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1

    def means(self) -> dict[str, float]:
        return {k: v / max(1, self.n) for k, v in self.sums.items()}

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "n": self.n}

    def load_state_dict(self, s: dict) -> None:
        self.sums, self.n = dict(s["sums"]), s["n"]


class _StopRequest:
    """Turns the first Ctrl-C / SIGTERM into a request honoured at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self):
        def handler(signum, frame):
            if self.requested:  # second press: stop now
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


def _check_compatible(saved: dict, cfg: "Config", run_dir: Path) -> None:
    from ponder.config import from_dict, to_dict

    now = to_dict(cfg)
    filled = to_dict(from_dict(saved))  # keys added since the run was saved take their defaults
    saved = {**saved, "task": filled["task"], "model": filled["model"]}
    if saved.get("preset") != now["preset"] or saved["task"] != now["task"] or saved["model"] != now["model"]:
        raise PonderError(f"{run_dir} holds a run of preset {saved.get('preset')!r} with another task or "
                          f"model; it cannot be resumed as {now['preset']!r}")


def train(cfg: "Config", run_dir: Path, *, resume: bool = False, callbacks: list | None = None,
          final_eval: bool = True, init_from: Path | None = None) -> dict:
    """Train (or resume) the run described by `cfg` in `run_dir`.

    Args:
        resume: continue the run in `run_dir` exactly from its latest checkpoint.
        init_from: a run or checkpoint whose matching weights start a NEW run (fine-tuning, e.g.
            to more steps or with new modules); a load report is printed and saved.
    Returns the final evaluation report (or the last metrics when `final_eval` is False).
    """
    from ponder.build import build_model
    from ponder.config import save_config, to_dict
    from ponder.data import build_task

    tc = cfg.train
    tc.validate()  # every section is checked before any data is generated
    cfg.halt.validate()
    cfg.model.validate()
    run_dir = Path(run_dir)
    device = resolve_device(tc.device)
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)

    if not resume and (run_dir / "checkpoints").exists():
        raise PonderError(f"{run_dir} already holds a run; continue it with --resume {run_dir}")
    task = build_task(cfg.task)
    model = build_model(cfg, task).to(device)
    opt = build_optimizer(model, name=tc.optimizer, lr=tc.lr, beta1=tc.beta1, beta2=tc.beta2,
                          weight_decay=tc.weight_decay, halting_lr_scale=cfg.halt.lr_scale)
    ema = ExponentialMovingAverage(model, tc.ema_decay) if tc.ema_decay > 0 else None
    stream = SampleStream(task.train, seed=tc.seed, augment=task.augment)
    from ponder.estimator_hook import estimator_from_train_config

    objective = build_objective(model, stream, batch_size=tc.batch_size, halt_cfg=cfg.halt, loss_kind=tc.loss,
                                device=device, seed=tc.seed, estimator=estimator_from_train_config(tc))
    log = MetricsLog(run_dir)
    from ponder.health import build_health_callbacks
    from ponder.monitors import HaltingHealthMonitor

    # halting health is always watched; training health per cfg.health (monitors on by default)
    cbs = Callbacks([HaltingHealthMonitor(), *build_health_callbacks(cfg), *(callbacks or [])])
    window = _Window()
    skipped_steps = 0
    start = 0

    if init_from is not None and not resume:
        source = resolve_checkpoint(Path(init_from))
        src = load_checkpoint(source)
        load_report = partial_load(model, src["ema"] if src["ema"] is not None else src["model"])
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "init_from.json", json.dumps({"source": str(source), **load_report}, indent=1))
        tqdm.write(format_load_report(load_report, source))
        if ema is not None:
            ema = ExponentialMovingAverage(model, tc.ema_decay)  # start the average at the loaded weights
    if resume:
        ckpt = load_checkpoint(resolve_checkpoint(run_dir))
        _check_compatible(ckpt["config"], cfg, run_dir)
        model.load_state_dict(ckpt["model"])
        if ema is not None and ckpt["ema"] is not None:
            ema.load_state_dict(ckpt["ema"])
        st = ckpt["state"]
        opt.load_state_dict(st["optimizer"])
        stream.load_state_dict(st["stream"])
        objective.load_state_dict(st["objective"])
        torch.set_rng_state(st["torch_rng"])
        window.load_state_dict(st["window"])
        skipped_steps = st["skipped_steps"]
        cbs.load_state_dict(st.get("callbacks", []))
        start = st["step"]
        log.truncate_after(start)  # drop records written after the checkpoint
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.json")
    config_dict = to_dict(cfg)

    def checkpoint(step: int) -> None:
        state = {"step": step, "optimizer": opt.state_dict(), "stream": stream.state_dict(),
                 "objective": objective.state_dict(), "torch_rng": torch.get_rng_state(),
                 "window": window.state_dict(), "skipped_steps": skipped_steps, "callbacks": cbs.state_dict()}
        save_checkpoint(run_dir, step, model_state=model.state_dict(),
                        ema_state=ema.state_dict() if ema else None, training_state=state,
                        config=config_dict, keep=tc.keep_checkpoints)
        log.write_csv()

    def eval_model():
        if ema is None or not cfg.eval.use_ema:
            return model
        shadow = copy.deepcopy(model)
        ema.copy_to(shadow)
        return shadow

    def evaluate_now(step: int) -> dict:
        m = eval_model()
        rng = np.random.default_rng(0)  # fixed subsets: comparable across evaluations and runs
        record: dict[str, Any] = {"step": step, "kind": "eval"}
        for name, split, k in (("test", task.test, cfg.eval.during_training_samples),
                               ("train", task.train, cfg.eval.train_samples)):
            sub = split if k <= 0 or k >= len(split) else split.subset(np.sort(rng.choice(len(split), k, replace=False)))
            r = evaluate_split(m, m.halting, sub, max_steps=cfg.halt.max_steps, batch_size=cfg.eval.batch_size,
                               device=device, budgets=False)
            record.update({f"{name}_{k}": r[k] for k in ("exact", "cell", "mean_steps", "halt_first_frac",
                                                          "halt_max_frac", "wrong_halt_frac", "steps_histogram")})
            record[f"{name}_spearman"] = r["spearman_steps_difficulty"]
        log.write(record)
        cbs.call("on_eval_end", run, record)
        return record

    run = {"config": cfg, "run_dir": run_dir, "model": model, "optimizer": opt, "task": task, "ema": ema,
           "objective": objective, "checkpoint": checkpoint}
    cbs.call("on_train_start", run)
    model.train()
    bar = tqdm(total=tc.steps, initial=start, disable=not tc.progress, desc="train", unit="step",
               dynamic_ncols=True)
    last_record: dict = {}
    t_window = time.perf_counter()
    interrupted = False
    t_start = time.perf_counter()
    with _StopRequest() as stop:
        for step in range(start, tc.steps):
            for group in opt.param_groups:  # schedule from the step index: resume-exact
                group["lr"] = tc.lr * group.get("lr_scale", 1.0) * lr_factor(step, warmup=tc.warmup_steps, total=tc.steps,
                                                schedule=tc.schedule, min_ratio=tc.min_lr_ratio)
            model.halting.train_step = step  # for the halting penalty's warm-up
            cbs.call("on_step_start", run, step)
            loss, metrics = objective.forward(step)
            aux = model.pop_aux_loss()  # e.g. the adapter's norm regulariser
            if aux is not None:
                loss = loss + aux
            opt.zero_grad(set_to_none=True)
            skipped = not torch.isfinite(loss).item()
            grad_norm = float("nan")
            if not skipped:
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf"))
                grad_norm = norm.item()
                skipped = not math.isfinite(grad_norm)
            if skipped:  # refuse a non-finite step before the optimizer sees it; count it
                skipped_steps += 1
                opt.zero_grad(set_to_none=True)
            else:
                opt.step()
                if ema is not None:
                    ema.update(model)
                window.add({"loss": loss.item(), **metrics, "grad_norm": grad_norm})
            objective.commit(not skipped)
            done = step + 1
            cbs.call("on_step_end", run, {**metrics, "step": done, "loss": loss.item(), "skipped": skipped,
                                          "grad_norm": grad_norm})  # grad_norm: before clipping
            bar.update(1)
            if tc.log_every and (done % tc.log_every == 0 or done == tc.steps):
                hs = objective.halt_steps
                counters = objective.counters
                record = {"step": done, "kind": "train", **window.means(), "lr": opt.param_groups[0]["lr"],
                          **counters, "skipped_steps": skipped_steps, "in_flight": objective.in_flight(),
                          "samples_dropped": counters["samples_taken"] - counters["samples_completed"]
                          - objective.in_flight(),
                          "halted_mean_steps": float(np.mean(hs)) if hs else None,
                          "time_sec_per_step": (time.perf_counter() - t_window) / max(1, window.n)}
                log.write(record)
                last_record = record
                bar.set_postfix(loss=f"{record.get('loss', float('nan')):.3f}",
                                exact=f"{record.get('step_exact', 0):.2f}",
                                steps=f"{record['halted_mean_steps'] or 0:.1f}")
                window = _Window()
                objective.halt_steps = []
                t_window = time.perf_counter()
            if tc.eval_every and (done % tc.eval_every == 0 or done == tc.steps):
                last_record = evaluate_now(done)
            out_of_time = tc.max_minutes > 0 and time.perf_counter() - t_start > 60 * tc.max_minutes
            if out_of_time and not (tc.eval_every and done % tc.eval_every == 0):
                last_record = evaluate_now(done)
            if (tc.checkpoint_every and done % tc.checkpoint_every == 0) or done == tc.steps or stop.requested \
                    or out_of_time:
                checkpoint(done)
            if out_of_time:
                tqdm.write(f"time limit of {tc.max_minutes:g} min reached at step {done}")
                break
            if stop.requested:
                interrupted = True
                break
    bar.close()
    if interrupted:
        raise PonderError(f"interrupted at step {done}; checkpoint saved, continue with: ponder train "
                          f"{cfg.preset or 'PRESET'} --resume {run_dir}")
    cbs.call("on_train_end", run)
    log.write_csv()
    if not final_eval:
        return last_record
    from ponder.report import evaluate_run

    return evaluate_run(eval_model(), task, cfg, run_dir, device=device)
