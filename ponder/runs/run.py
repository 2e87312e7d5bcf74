"""The run layer: run directories, building the parts, resume, init-from.

- `build_model(cfg, task)`: the model of `cfg.model`'s kind (the recursive reasoner or the
  recurrent-cell reasoner with its halting head, sized for the task; or a language model,
  ponder.models.lm), by `MODEL_BUILDERS`.
- `open_run(cfg, run_dir, resume=..., init_from=...)`: a `ponder.training.loop.Run` ready for the loop:
  every part built, a checkpoint resumed (after checking that it is this run's and that every
  file of it fits) or another run's matching weights loaded, the config saved.
- `train_run(...)`: open, train, write the health report and the final evaluation.

Using a trained run (`load_trained`, `health_report`, `ponder eval`) lives in ponder.runs.trained.

Every way a run directory can be unusable (a file missing, truncated, overwritten, or from a run
of another size) ends here in one PonderError line naming the file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ponder.core.errors import PonderError
from ponder.core.files import WriteFailed, atomic_write_text
from ponder.core.lock import DirectoryLock, command_line
from ponder.core.progress import silenced
from ponder.core.types import IGNORE
from ponder.health import build_health_callbacks
from ponder.health.report import write_health_report
from ponder.models.cell import CellReasoner
from ponder.models.halting import build_halting
from ponder.models.lm.hybrid import HybridLM
from ponder.models.lm.recursive_lm import RecursiveLM
from ponder.models.recursive import RecursiveReasoner
from ponder.runs.config import Config, from_dict, save_config, to_dict
from ponder.runs.report import about_evaluation, evaluate_run
from ponder.tasks import TaskData, build_task
from ponder.training.calibrate import calibrate, training_split, wants_calibration
from ponder.training.callbacks import Callbacks, MetricsLog
from ponder.training.carry import SampleStream
from ponder.training.checkpoint import (format_load_report, nonfinite_tensors, partial_load, read_config,
                                        read_training_state, read_weights, remove_stale_temporaries, resolve_checkpoint,
                                        stopped_by_write)
from ponder.training.compiling import settle
from ponder.training.curriculum import CurriculumCallback
from ponder.training.distributed import join, leave
from ponder.training.estimator_hook import TRMRule
from ponder.training.host import resolve_device, set_flush_denormal, set_threads
from ponder.training.loop import Run, train
from ponder.training.objectives import build_objective
from ponder.training.optim import ExponentialMovingAverage, build_optimizer
from ponder.training.precision import autocast, check_precision, record_setup
from ponder.training.tensorboard import make_mirror


def _build_reasoner(cfg: Config, task: TaskData) -> RecursiveReasoner:
    """The RecursiveReasoner of `cfg.model` with the halting head of `cfg.halt`, sized for `task`."""
    cfg.model.validate()
    head = build_halting(cfg.halt, cfg.model.d_model)
    return RecursiveReasoner(cfg.model, vocab_size=task.vocab_size, seq_len=task.seq_len, halting=head,
                             num_puzzle_ids=task.num_puzzle_ids, context_len=task.context_len,
                             grid_shape=task.grid_shape)


def _build_cell(cfg: Config, task: TaskData) -> CellReasoner:
    """The recurrent-cell reasoner of `cfg.model` with the halting head of `cfg.halt`, sized for `task`
    (which must need no conditioning: the cell reads only the inputs)."""
    cfg.model.validate()
    if task.num_puzzle_ids > 0 or task.context_len > 0:
        what = "puzzle identifiers" if task.num_puzzle_ids > 0 else "context tokens"
        raise PonderError(f"model.kind=cell reads only a sample's inputs; task {cfg.task.name!r} conditions on "
                          f"{what} (use model.kind=recursive)")
    head = build_halting(cfg.halt, cfg.model.d_model)
    return CellReasoner(cfg.model, vocab_size=task.vocab_size, seq_len=task.seq_len, halting=head,
                        answer_positions=supervised_positions(task))


def supervised_positions(task: TaskData) -> list[int] | None:
    """The positions whose label is not IGNORE in some sample of either split (parity: position 0
    only); None when that is every position."""
    used = np.zeros(task.seq_len, dtype=bool)
    for split in (task.train, task.test):
        if len(split):
            used |= (np.asarray(split.labels) != IGNORE).any(0)
    return None if used.all() else np.flatnonzero(used).tolist()


# model kind -> build(cfg, task); the language models take their vocabulary and length from
# their own section, which Config.validate checks against the task's
MODEL_BUILDERS = {
    "recursive": _build_reasoner,
    "cell": _build_cell,
    "hybrid_lm": lambda cfg, task: HybridLM(cfg.model),
    "recursive_lm": lambda cfg, task: RecursiveLM(cfg.model, cfg.halt),
}


def build_model(cfg: Config, task: TaskData | None) -> torch.nn.Module:
    """The model of `cfg.model`'s kind for `task` (a language model needs no task: None), built on
    the CPU whatever the default device: its initial weights come from the CPU generator, the same
    on every device, and the caller moves it."""
    with torch.device("cpu"):
        return MODEL_BUILDERS[cfg.kind("model")](cfg, task)


def refuse_nonfinite(weights: dict[str, torch.Tensor], source: Path) -> None:
    """Weights with NaN or inf are refused (one line naming the file and a tensor)."""
    bad = nonfinite_tensors(weights)
    if bad:
        raise PonderError(f"{source} holds non-finite weights (NaN or inf in {len(bad)} of {len(weights)} tensors, "
                          f"e.g. {bad[0]})")


def read_run_config(ckpt: Path) -> Config:
    """The config saved in a checkpoint, migrated and validated; damage is an error naming it."""
    try:
        return from_dict(read_config(ckpt))
    except PonderError as e:
        raise PonderError(f"checkpoint {ckpt}: config.json: {e}") from None


def check_fit(own: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], source: Path) -> None:
    """Refuse (one line) `weights` whose names or shapes differ from `own`, or that are not finite."""
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    wrong = [f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in weights and weights[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what} {items[:2]}" for what, items in
                           (("missing", missing), ("unexpected", unexpected), ("other shape", wrong)) if items)
        raise PonderError(f"{source} does not fit this run's model ({detail}): a run of another size?")
    refuse_nonfinite(weights, source)


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    """Load `weights` into `model` exactly (names and shapes), refusing non-finite values."""
    check_fit(model.state_dict(), weights, source)
    model.load_state_dict(weights)


def read_trained_weights(ckpt: Path, cfg: Config, *, use_ema: bool) -> tuple[dict, Path]:
    """The weights a trained run is used with: the EMA's when the run kept one and `use_ema`,
    else the raw ones. A run that kept an EMA whose file is gone is incomplete, not silently
    evaluated with other weights. Returns (weights, the file they came from)."""
    if use_ema and cfg.train.ema_decay > 0:
        weights = read_weights(ckpt, "ema")
        if weights is None:
            raise PonderError(f"checkpoint {ckpt} is incomplete: missing ema.safetensors (the run kept an EMA; "
                              f"--eval.use_ema=false evaluates the raw weights)")
        return weights, ckpt / "ema.safetensors"
    return read_weights(ckpt, "model"), ckpt / "model.safetensors"


def _check_compatible(saved: Config, cfg: Config, run_dir: Path) -> None:
    """A checkpoint resumes only as the run it was saved by: same preset, task and model."""
    now, filled = to_dict(cfg), to_dict(saved)  # keys added since the run was saved have their defaults
    if filled["preset"] != now["preset"]:
        raise PonderError(f"{run_dir} is a run of preset {filled['preset']!r}; it cannot be resumed as "
                          f"{now['preset']!r}")
    changed = [f"{section}.{key}" for section in ("task", "model")
               for key in sorted(set(filled[section]) | set(now[section]))
               if filled[section].get(key) != now[section].get(key)]
    if changed:
        was = ", ".join(f"{k}={filled[k.split('.')[0]].get(k.split('.')[1])!r}" for k in changed[:4])
        raise PonderError(f"{', '.join(changed[:4])} would change the task or model of the run in {run_dir} (it has "
                          f"{was}); a resumed run keeps its task and model: drop the override, or start a new run "
                          f"from these weights with --init-from {run_dir}")
    if wants_calibration(saved) != wants_calibration(cfg):  # auto keeps a calibration slice out of training
        raise PonderError(f"{run_dir} was trained with halt.threshold={saved.halt.threshold}; it cannot be resumed "
                          f"with halt.threshold={cfg.halt.threshold} (auto trains without its calibration slice)")


def check_resumable(cfg: Config, run_dir: Path) -> None:
    """Refuse, in one line, a resume of the run in `run_dir` as `cfg` (another preset, task or model)."""
    _check_compatible(read_run_config(resolve_checkpoint(run_dir)), cfg, run_dir)


def _check_optimizer_state(state: dict, optimizer: torch.optim.Optimizer, source: Path) -> None:
    """torch loads an optimizer state of other shapes without complaint; refuse it here."""
    try:
        groups, saved = state["param_groups"], state["state"]
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
            raise ValueError
        for i, p in enumerate(params):
            for v in saved.get(i, {}).values():
                if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != p.shape:
                    raise ValueError
    except (KeyError, TypeError, ValueError, AttributeError):
        raise PonderError(f"{source}/state.pt holds an optimizer state that does not fit this run's model") from None


def open_run(cfg: Config, run_dir: Path, *, resume: bool = False, init_from: Path | None = None,
             callbacks: list | None = None) -> Run:
    """Build every part of the run described by `cfg` in `run_dir`.

    Args:
        resume: continue the run in `run_dir` exactly from its latest checkpoint.
        init_from: a run or checkpoint whose matching weights start a NEW run (fine-tuning, e.g.
            to more steps or with new modules); a load report is printed and saved.
        callbacks: further training callbacks (after the health wing's).
    """
    cfg.validate()  # every section is checked before any data is generated
    run_dir = Path(run_dir)
    tc = cfg.train
    shard, device = join(resolve_device(tc.device))  # torchrun: this process among W
    shard.local_size(tc.batch_size)  # the global batch must divide among the processes
    check_precision(tc.precision, device)  # an explicit bf16 the device cannot run: refused before any work
    set_threads(tc.threads)
    set_flush_denormal(tc.flush_denormal)
    lock = _lock_run_dir(run_dir, shard)
    try:
        return _open_locked(cfg, run_dir, shard, device, lock, resume=resume, init_from=init_from,
                            callbacks=callbacks)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _lock_run_dir(run_dir: Path, shard) -> DirectoryLock | None:
    """Rank 0 takes the run directory's writer lock before reading or writing anything of it; a
    refusal on rank 0 stops every rank (they would otherwise wait for it at the first collective)."""
    lock, refusal = None, None
    if shard.main:
        try:
            lock = DirectoryLock(run_dir, command_line()).acquire()
        except PonderError as e:
            refusal = e
    if shard.any_flags([refusal is not None])[0]:
        raise refusal or PonderError(f"rank 0 could not lock {run_dir}; see its message")
    return lock


def _open_locked(cfg: Config, run_dir: Path, shard, device, lock, *, resume: bool, init_from: Path | None,
                 callbacks: list | None) -> Run:
    tc = cfg.train
    if not resume and (run_dir / "checkpoints").exists():
        raise PonderError(f"{run_dir} already holds a run; continue it with --resume {run_dir}")
    if not resume and shard.main and (run_dir / "metrics.jsonl").exists():
        MetricsLog(run_dir).truncate_after(0)  # a run stopped before its first checkpoint starts again
    if resume and shard.main:
        remove_stale_temporaries(run_dir)  # what a killed write left behind; we are the only writer
    ckpt = source = None
    if resume:  # read and check everything before building anything
        ckpt = resolve_checkpoint(run_dir)
        _check_compatible(read_run_config(ckpt), cfg, run_dir)
        saved = {"model": read_weights(ckpt, "model"), "ema": read_weights(ckpt, "ema"),
                 "state": read_training_state(ckpt)}
    elif init_from is not None:
        source = resolve_checkpoint(Path(init_from))
        weights, weights_file = read_trained_weights(source, read_run_config(source), use_ema=True)
        refuse_nonfinite(weights, weights_file)
    torch.manual_seed(tc.seed)
    task = build_task(cfg.task)
    model = build_model(cfg, task).to(device)
    # "auto" precision and compile resolved (and compiled) here, saved in the config below
    cfg, arithmetic = settle(cfg, model, training_split(task.train, cfg), device, shard=shard,
                             start_step=saved["state"].get("step", 0) if resume else 0)
    tc = cfg.train
    optimizer = build_optimizer(model, cfg.optim, lr=tc.lr, halting_lr_scale=cfg.halt.lr_scale)
    ema = ExponentialMovingAverage(model, tc.ema_decay) if tc.ema_decay > 0 else None
    curriculum = task.curriculum
    stream = SampleStream(training_split(task.train, cfg), seed=tc.seed, augment=task.augment,
                          limit=None if curriculum is None else curriculum.start)
    estimator = None if isinstance(cfg.estimator, TRMRule) else cfg.estimator
    objective = build_objective(model, stream, task.metric, batch_size=tc.batch_size, halt_cfg=cfg.halt,
                                loss_kind=tc.loss, device=device, seed=tc.seed, estimator=estimator, shard=shard)
    log = MetricsLog(run_dir, writes=shard.main)
    run = Run(cfg=cfg, config_dict=to_dict(cfg), run_dir=run_dir, task=task, model=model, optimizer=optimizer,
              ema=ema, stream=stream, objective=objective,
              callbacks=Callbacks([*build_health_callbacks(cfg),
                                   *([] if curriculum is None else [CurriculumCallback(curriculum)]),
                                   *(callbacks or [])]),
              log=log, device=device, shard=shard, lock=lock)
    if source is not None:
        report = partial_load(model, weights)
        if not report["loaded"]:
            raise PonderError(f"--init-from {source}: no tensor of it fits this model (a run of another task?)")
        if shard.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "init_from.json", json.dumps({"source": str(source), **report}, indent=1),
                              what="the init-from report")
            tqdm.write(format_load_report(report, source))
        if ema is not None:
            run.ema = ExponentialMovingAverage(model, tc.ema_decay)  # start the average at the loaded weights
    if ckpt is not None:
        _resume(run, ckpt, saved)
    if shard.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.json")
        record_setup(run_dir, run.step, **arithmetic)
        save_assets = getattr(task, "save_assets", None)  # e.g. a language model's tokenizer
        if save_assets is not None:
            save_assets(run_dir)
        # events after a resumed checkpoint's step are purged, as the JSONL was cut back
        log.mirror = make_mirror(tc.tensorboard, run_dir, purge_step=run.step + 1 if ckpt is not None else None)
    return run


def _resume(run: Run, ckpt: Path, saved: dict[str, Any]) -> None:
    load_weights(run.model, saved["model"], ckpt / "model.safetensors")
    if run.ema is not None:
        if saved["ema"] is None:
            raise PonderError(f"checkpoint {ckpt} is incomplete: missing ema.safetensors (the run keeps an EMA)")
        check_fit(run.ema.shadow, saved["ema"], ckpt / "ema.safetensors")
        run.ema.load_state_dict(saved["ema"])
    state = saved["state"]
    _check_optimizer_state(state.get("optimizer", {}), run.optimizer, ckpt)
    try:
        run.load_training_state(state)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        raise PonderError(f"checkpoint {ckpt}: state.pt does not fit this run ({str(e).splitlines()[0][:100]})") from None
    run.log.truncate_after(run.step)  # drop records written after the checkpoint


def train_run(cfg: Config, run_dir: Path, *, resume: bool = False, init_from: Path | None = None,
              callbacks: list | None = None, final_eval: bool = True) -> dict:
    """Open the run, train it, write its health report and (with `final_eval`) the full
    evaluation of RUN_DIR/eval/. Returns the evaluation report (or the last metric record).
    Under torchrun every process trains its share and evaluates its part; rank 0 writes."""
    run = None
    try:
        try:
            run = open_run(cfg, run_dir, resume=resume, init_from=init_from, callbacks=callbacks)
        except WriteFailed as e:
            raise stopped_by_write(e, run_dir, None) from None
        train(run)
        try:
            records = run.log.records()
            if run.shard.main:
                write_health_report(run.run_dir, cfg, records)
            if not final_eval:
                result = records[-1] if records else {}
            else:
                model, cfg = run.eval_model(), run.cfg  # run.cfg: precision and compile resolved
                about = about_evaluation(cfg, run.run_dir / "checkpoints" / f"step-{run.step:07d}", split="test",
                                         overrides=[], use_ema=cfg.eval.use_ema)
                with autocast(run.device, cfg.train.precision), silenced(not cfg.train.progress or not run.shard.main):
                    # evaluated in the arithmetic it trained with; halt.threshold=auto: calibrated on the final weights
                    calibrate(model, run.task, cfg, device=run.device, shard=run.shard)
                    result = evaluate_run(model, run.task, cfg, run.run_dir, device=run.device, shard=run.shard,
                                          quiet=not run.shard.main, about=about)
            # under torchrun the ranks leave together: none tears its connections down while rank 0 still
            # writes the reports (gloo can abort a process whose peer hangs up under it)
            run.shard.barrier()
            return result
        except WriteFailed as e:
            raise stopped_by_write(e, run.run_dir, run.step, finished=True) from None
    finally:
        if run is not None:
            run.close()
        leave()
