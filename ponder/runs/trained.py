"""Using a trained run: its model, task and config ready to evaluate, its reports, `ponder eval`.

- `load_trained(path)`: model, task and config of a run or checkpoint, for evaluation (the EMA's
  weights when the run kept one), calibrated when its halting threshold is `auto`.
- `load_trained_lm(path)`: the same for a language-model run (no task is built).
- `health_report(run_dir)`: the health report of any run directory.
- `evaluate_checkpoint(path, overrides)`: the full evaluation `ponder eval` writes.

The parts are built as training builds them (ponder.runs.run.build_model); every way a checkpoint
can be unusable ends in one PonderError line naming the file.
"""
from __future__ import annotations

from pathlib import Path

from ponder.core.errors import PonderError
from ponder.core.lock import DirectoryLock, command_line
from ponder.core.progress import silenced
from ponder.health.report import write_health_report
from ponder.models.lm import LM_KINDS
from ponder.runs.config import Config, apply_overrides, load_config
from ponder.runs.report import about_evaluation, evaluate_run, evaluation_name
from ponder.runs.run import build_model, load_weights, read_run_config, read_trained_weights
from ponder.tasks import build_task
from ponder.training.calibrate import calibrate, wants_calibration
from ponder.training.callbacks import MetricsLog
from ponder.training.checkpoint import read_latest, read_training_state, resolve_checkpoint, run_dir_of
from ponder.training.host import resolve_device, set_flush_denormal, set_threads
from ponder.training.precision import autocast, check_precision


def load_trained(path, overrides: list[str] | None = None, *, use_ema: bool | None = None, change_head: bool = False):
    """Model, task and config of a run directory or checkpoint, ready to evaluate.

    Args:
        path: RUN_DIR (its latest checkpoint) or a checkpoint directory.
        overrides: `--section.key=value` changes to the saved config (e.g. a halting threshold);
            one that changes the halting head (`--halt.kind`) needs `change_head=True`.
        use_ema: load the EMA weights (default: `cfg.eval.use_ema`, when the run kept an EMA).
    Returns:
        (model, task, cfg, checkpoint directory). A checkpoint whose weights do not fit its own
        config's model, or hold NaN or inf, is a PonderError. With halt.threshold=auto (saved or
        given as an override, e.g. on a run trained with a fixed threshold) the model comes back
        calibrated (ponder.training.calibrate). The model is on cfg.train.device (cfg.train.threads
        set): callers evaluate it there, under the run's precision (`autocast`), where it trained.
    """
    def read(ckpt: Path):
        saved = read_run_config(ckpt)
        cfg = apply_overrides(saved, overrides or [])
        if cfg.halt.kind != saved.halt.kind and not change_head:
            raise PonderError(f"--halt.kind={cfg.halt.kind} changes the halting head this run was trained with "
                              f"({saved.halt.kind}): its halting weights were trained for {saved.halt.kind}; add "
                              f"--change-head to evaluate them under {cfg.halt.kind} anyway")
        weights, source = read_trained_weights(ckpt, cfg, use_ema=cfg.eval.use_ema if use_ema is None else use_ema)
        return saved, cfg, weights, source

    ckpt_dir, (saved, cfg, weights, source) = read_latest(Path(path), read)
    device = resolve_device(cfg.train.device)
    check_precision(cfg.train.precision, device)  # e.g. a bf16 run read on a CPU without native bf16
    task = build_task(cfg.task)
    model = build_model(cfg, task)
    load_weights(model, weights, source)
    model.to(device)
    set_threads(cfg.train.threads)
    set_flush_denormal(cfg.train.flush_denormal)
    if wants_calibration(cfg):
        with autocast(device, cfg.train.precision):
            calibrate(model, task, cfg, device=device, held_out=wants_calibration(saved))
    return model, task, cfg, ckpt_dir


def load_trained_lm(path):
    """Model, config and checkpoint directory of a language-model run (its task is not built: the
    corpus is not needed), in eval mode, with the weights `eval.use_ema` names."""
    ckpt = resolve_checkpoint(Path(path))
    cfg = read_run_config(ckpt)
    kind = cfg.kind("model")
    if kind not in LM_KINDS:
        raise PonderError(f"{path} is a run of model.kind={kind}, not a language model")
    weights, source = read_trained_weights(ckpt, cfg, use_ema=cfg.eval.use_ema)
    model = build_model(cfg, None)
    load_weights(model, weights, source)
    model.eval()
    return model, cfg, ckpt


def health_report(run_dir: Path) -> dict:
    """Write RUN_DIR/health.md and health.json from the run's config and metrics; returns the payload."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PonderError(f"no such run directory: {run_dir}")
    if not (run_dir / "config.json").exists():
        raise PonderError(f"{run_dir} is not a run directory (no config.json)")
    cfg = load_config(run_dir / "config.json")
    return write_health_report(run_dir, cfg, run_records(run_dir, cfg))


def run_records(run_dir: Path, cfg: Config) -> list[dict]:
    """The run's metric records. A run stopped before its first log line has none yet (its
    reports say "no data"); a run with a checkpoint past its first log step but no metrics.jsonl
    has lost its log, which is refused in one line."""
    log = MetricsLog(run_dir)
    if not log.jsonl.exists() and (run_dir / "checkpoints").exists() and cfg.train.log_every:
        try:
            step = read_training_state(resolve_checkpoint(run_dir))["step"]
        except PonderError:
            step = 0
        if step >= cfg.train.log_every:
            raise PonderError(f"{log.jsonl} is missing, but the run has a checkpoint at step {step} (it logs every "
                              f"{cfg.train.log_every} steps): its log was lost")
    return log.records()


def evaluate_checkpoint(path, overrides: list[str], *, split: str = "test", write: bool = True, name: str | None = None,
                        change_head: bool = False, quiet: bool = False) -> dict:
    """`ponder eval`: the full evaluation of a run or checkpoint, written while holding the run's
    writer lock into RUN_DIR/eval/ (the run's own evaluation: held-out split, no overrides) or,
    with overrides or another split, into RUN_DIR/eval/NAME/ beside it (NAME from the overrides
    unless given; name="" writes over the run's own). `write=False`: printed only, nothing
    written, no lock, so it can read a run that is being trained."""
    lock = None
    if write:
        run_dir = run_dir_of(resolve_checkpoint(Path(path)))
        lock = DirectoryLock(run_dir, command_line()).acquire()
    try:
        model, task, cfg, ckpt_dir = load_trained(path, overrides, change_head=change_head)
        device = resolve_device(cfg.train.device)
        sub = evaluation_name(overrides, split) if name is None else name
        about = about_evaluation(cfg, ckpt_dir, split=split, overrides=overrides, use_ema=cfg.eval.use_ema)
        with autocast(device, cfg.train.precision), silenced(quiet):  # in the arithmetic it trained with
            return evaluate_run(model, task, cfg, run_dir_of(ckpt_dir), device=device, split=split,
                                out=(Path("eval") / sub).as_posix() if write else None, about=about)
    finally:
        if lock is not None:
            lock.release()
