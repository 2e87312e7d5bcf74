"""The `train` section of a run's config: what the training loop (ponder.training.loop) and the
run's set-up read."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ponder.core.errors import PonderError
from ponder.core.settings import check, setting
from ponder.training.precision import PRECISIONS
from ponder.training.tensorboard import tensorboard_available


@dataclass(kw_only=True)
class TrainConfig:
    """Training settings.

    Attributes:
        seed: seeds weights, sample order, augmentation and exploration.
        batch_size: B, slots in the deep-supervision carry.
        steps: optimizer steps (each is one ACT step of every slot).
        lr: base learning rate (the update rule and its constants are the `optim` section).
        warmup_steps, schedule ("constant" | "cosine"), min_lr_ratio: learning-rate schedule.
        grad_clip: max global gradient norm (0 = off).
        ema_decay: EMA of weights used for evaluation (0 = off).
        loss: "softmax" cross-entropy or TRM's "stablemax" (computed in float64).
        log_every, eval_every, checkpoint_every: intervals in optimizer steps (0 = never).
        keep_checkpoints: newest checkpoints kept on disk.
        device: "cpu", "cuda", "cuda:N", "mps" or "auto".
        threads: torch CPU threads; 0 = one per usable core (`auto_threads`), with OpenMP's passive
            waiting (set when ponder is imported), so a competing process does not stall every op.
        progress: show a progress bar with ETA.
        max_minutes: stop (checkpoint, final evaluation) after this much training wall time (0 = off).
        target: stop (checkpoint, final evaluation) at the first evaluation whose held-out
            headline score (exact match for puzzles) reaches this on the whole held-out split
            (0 = off); a subset within its sampling error of the target has the whole split scored.
        tensorboard: TensorBoard event files in RUN_DIR/tensorboard/ beside the JSONL and CSV:
            "auto" (when the tensorboard package is installed), "on" (an error without it), "off".
        precision: "auto", "fp32" or "bf16" (autocast of the forward to bfloat16, in training
            and evaluation; ponder.training.precision says where, and what stays float32).
            "auto" is resolved when the run opens and the result saved in its config.
        compile: torch.compile of the recursion (the reasoner's networks, or the recurrent cell's
            training trajectory): True, False or "auto" (on only where
            a recorded measurement says it pays over the run's length; ponder.training.compiling),
            resolved when the run opens like `precision`.
        flush_denormal: on the CPU, compute with denormal floats flushed to zero (the process's
            setting, applied when the run opens; off keeps torch's default). The gradient of a
            small recurrent net decays into denormal numbers, which the CPU handles many times
            slower (BENCHMARKS.md, parity step speed); flushing them changes values only below
            about 1e-38.
    """

    seed: int = setting(0, ge=0)
    batch_size: int = setting(64, ge=1)
    steps: int = setting(1000, ge=1)
    lr: float = setting(1e-3, gt=0)
    warmup_steps: int = setting(100, ge=0)
    schedule: str = setting("constant", choices=("constant", "cosine"))
    min_lr_ratio: float = setting(0.1, ge=0, le=1)
    grad_clip: float = setting(1.0, ge=0)
    ema_decay: float = setting(0.0, ge=0, lt=1)
    loss: str = setting("softmax", choices=("softmax", "stablemax"))
    log_every: int = setting(50, ge=0)
    eval_every: int = setting(500, ge=0)
    checkpoint_every: int = setting(500, ge=0)
    keep_checkpoints: int = setting(2, ge=1)
    device: str = "cpu"
    threads: int = setting(0, ge=0)
    progress: bool = True
    max_minutes: float = setting(0.0, ge=0)
    target: float = setting(0.0, ge=0, le=1)
    tensorboard: str = setting("auto", choices=("auto", "on", "off"))
    precision: str = setting("auto", choices=PRECISIONS)
    compile: bool | Literal["auto"] = "auto"
    flush_denormal: bool = False

    def inactive(self) -> dict[str, str]:
        out = {}
        if self.schedule == "constant":
            out["min_lr_ratio"] = "train.schedule=constant does not decay"
        if self.eval_every == 0:
            out["target"] = "train.eval_every=0: nothing is evaluated during training"
        if self.flush_denormal and self.device not in ("cpu", "auto"):
            out["flush_denormal"] = f"train.device={self.device}: it sets the CPU's arithmetic only"
        return out

    def validate(self) -> None:
        check(self, "train")
        if self.tensorboard == "on" and not tensorboard_available():
            raise PonderError("train.tensorboard=on but the tensorboard package is not installed "
                              "(pip install 'ponder[tensorboard]')")
        if not (self.device in ("cpu", "cuda", "mps", "auto") or re.fullmatch(r"cuda:\d+", self.device)):
            raise PonderError(f"train.device must be cpu, cuda, cuda:N, mps or auto, got {self.device!r}")
