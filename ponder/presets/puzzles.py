"""Sudoku and maze presets: the CPU recipes, the debug and demo runs, and TRM's GPU recipes on
the papers' data sets."""
from __future__ import annotations

from ponder.models.halting import halt_config
from ponder.models.recursive import ModelConfig
from ponder.presets.base import fp32_train, preset
from ponder.runs.config import Config
from ponder.tasks.mazes.task import MazeConfig
from ponder.tasks.sudoku.task import SudokuConfig
from ponder.training.evaluate import EvalConfig
from ponder.training.train_config import TrainConfig
from ponder.training.optim import AdamATan2Settings


@preset("debug", "4x4 Sudoku, 200 puzzles, d=32 TRM (tests and smoke runs)", "~10 s")
def debug() -> Config:
    return Config(
        task=SudokuConfig(box_rows=2, box_cols=2, n_train=200, n_test=64, min_givens=5, max_givens=7, seed=0),
        model=ModelConfig(d_model=32, n_heads=2, n_layers=1, h_cycles=2, l_cycles=1),
        halt=halt_config(max_steps=4),
        train=fp32_train(batch_size=16, steps=30, lr=3e-3, warmup_steps=5, log_every=5, eval_every=10,
                          checkpoint_every=10, threads=1, progress=False),
        eval=EvalConfig(batch_size=64, train_samples=64, during_training_samples=64),
    )


@preset("demo", "6x6 Sudoku, 10-14 givens, d=64 TRM-mlp, M=8, min 2 steps; stops at 99% held-out exact "
        "(the default: make demo)", "minutes")
def demo() -> Config:
    """Trains until 99% of the 500 held-out puzzles are exactly right (EMA weights), at most 2000
    steps: batch 64 (half the compute per step of the earlier batch-128 recipe) with a cosine
    decay, which settles the last few puzzles. Every 100 steps a fixed subset of 100 held-out
    puzzles is scored (a fifth of the cost of the whole split); when it reaches the target the
    whole split is scored, and only its score stops the run. Precision `auto`: bf16 autocast where
    the CPU has native bf16 and a probe of the model measures it faster (fp32 elsewhere); at the
    same steps bf16 reached the held-out accuracy of fp32 (BENCHMARKS.md, bf16 against fp32)."""
    train = fp32_train(batch_size=64, steps=2000, lr=2e-3, warmup_steps=100, schedule="cosine", ema_decay=0.99,
                       log_every=50, eval_every=100, checkpoint_every=500, target=0.99)
    train.precision = "auto"
    return Config(
        task=SudokuConfig(box_rows=2, box_cols=3, n_train=3000, n_test=500, min_givens=10, max_givens=14, seed=0),
        model=ModelConfig(d_model=64, n_heads=4, n_layers=2, mixer="mlp", h_cycles=2, l_cycles=2),
        # min_steps=2: Q-halt otherwise stops some puzzles after step 1 with a wrong answer
        halt=halt_config(max_steps=8, min_steps=2),
        train=train,
        eval=EvalConfig(batch_size=500, train_samples=500, during_training_samples=100),
    )


@preset("sudoku9", "9x9 Sudoku, 28-36 givens, d=96 TRM-mlp, T=2, n=2, M=16", "~30 min")
def sudoku9() -> Config:
    return Config(
        task=SudokuConfig(box_rows=3, box_cols=3, n_train=5000, n_test=500, min_givens=28, max_givens=36, seed=0),
        model=ModelConfig(d_model=96, n_heads=4, n_layers=2, mixer="mlp", h_cycles=2, l_cycles=2),
        halt=halt_config(max_steps=16),
        train=fp32_train(batch_size=64, steps=5000, lr=1e-3, warmup_steps=200, ema_decay=0.995,
                          log_every=50, eval_every=1000, checkpoint_every=500),
        eval=EvalConfig(batch_size=250, train_samples=500, during_training_samples=256),
    )


@preset("trm-sudoku9", "9x9 Sudoku, TRM size: d=512, 2 layers, 8 heads, T=3, n=6, M=16 (6.8M params)", "days")
def trm_sudoku9() -> Config:
    cfg = sudoku9()
    cfg.model = ModelConfig(d_model=512, n_heads=8, n_layers=2, mixer="attention", h_cycles=3, l_cycles=6)
    cfg.optim = AdamATan2Settings(beta1=0.9, beta2=0.95, weight_decay=1.0, a=1.0, b=1.0)  # TRM's optimizer
    cfg.train = TrainConfig(batch_size=64, steps=50000, lr=1e-4, warmup_steps=2000, ema_decay=0.999, eval_every=2000,
                            checkpoint_every=1000)
    return cfg


@preset("maze9", "9x9 mazes (shortest path), d=64 TRM-mlp, M=8", "~10 min")
def maze9() -> Config:
    return Config(
        task=MazeConfig(size=9, n_train=3000, n_test=500, seed=0),
        model=ModelConfig(d_model=64, n_heads=4, n_layers=2, mixer="mlp", h_cycles=2, l_cycles=2),
        halt=halt_config(max_steps=8),
        train=fp32_train(batch_size=128, steps=1500, lr=1e-3, warmup_steps=100, ema_decay=0.99,
                          log_every=50, eval_every=500, checkpoint_every=500),
        eval=EvalConfig(batch_size=500, train_samples=500, during_training_samples=256),
    )


# ----------------------------------------------------------------------------- the papers' data sets
# TRM trains 50000 "epochs" of its 1000 training puzzles at batch 768: 50000 * 1000 / 768 = 65104
# optimizer steps, evaluating every 5000 epochs (6510 steps). Its 1000 stored augmented copies per
# Sudoku (8 symmetries per maze) become one fresh random transform of the same kind per draw here.
_TRM_STEPS, _TRM_EVAL = 65104, 6510


def _trm_paper(task, model: ModelConfig) -> Config:
    return Config(
        task=task,
        model=model,
        halt=halt_config(max_steps=16),
        optim=AdamATan2Settings(beta1=0.9, beta2=0.95, weight_decay=1.0, a=1.0, b=1.0),
        train=TrainConfig(batch_size=768, steps=_TRM_STEPS, lr=1e-4, warmup_steps=2000, ema_decay=0.999,
                          loss="stablemax", log_every=100, eval_every=_TRM_EVAL, checkpoint_every=_TRM_EVAL),
        eval=EvalConfig(batch_size=1024, train_samples=1000, during_training_samples=4096),
    )


@preset("trm-sudoku-extreme", "Sudoku-Extreme as TRM: 1000 training puzzles, all test puzzles, TRM-MLP d=512, "
        "T=3, n=6, M=16 (5M params); published 87.4% exact (TRM-MLP), 55.0% (HRM). Reads the Hugging Face "
        "cache or --task.source=FOLDER", "GPU <20 h")
def trm_sudoku_extreme() -> Config:
    """TRM's Sudoku-Extreme recipe (its README: under 20 hours on one L40S). The data must be on disk:
    without it the error names the offline generator's overrides, which make other puzzles and so
    a number not comparable with the published one."""
    return _trm_paper(SudokuConfig(box_rows=3, box_cols=3, source="hf", n_train=1000, n_test=0, seed=0),
                      ModelConfig(d_model=512, n_heads=8, n_layers=2, mixer="mlp", positions="none",
                                  h_cycles=3, l_cycles=6))


@preset("trm-maze-hard", "Maze-Hard 30x30 as TRM: 1000 training mazes, all 1000 test mazes, TRM attention d=512, "
        "T=3, n=4, M=16 (7M params); published 85.3% exact (TRM), 74.5% (HRM). Reads the Hugging Face cache or "
        "--task.source=FOLDER", "GPU <24 h")
def trm_maze_hard() -> Config:
    """TRM's Maze-Hard recipe (its README: under 24 hours on 4 L40S at batch 768)."""
    return _trm_paper(MazeConfig(size=30, source="hf", n_train=1000, n_test=0, seed=0),
                      ModelConfig(d_model=512, n_heads=8, n_layers=2, mixer="attention", positions="rope",
                                  h_cycles=3, l_cycles=4))


@preset("sudoku-hard-cpu", "9x9 minimal Sudoku needing >= 3 backtracks (generated once, cached), sudoku9's model "
        "and training: d=96 TRM-mlp, T=2, n=2, M=16, bf16 where the CPU has it; what an hour reaches: BENCHMARKS.md, "
        "hard recipes", "~60 min")
def sudoku_hard_cpu() -> Config:
    """The sudoku9 recipe on hard puzzles, so the two can be compared (BENCHMARKS.md, hard data),
    for an hour in `train.precision=auto`: bf16 where the CPU has it natively and the run's probe
    measures it faster (BENCHMARKS.md, hard recipes, records the probe of the measured runs)."""
    cfg = sudoku9()
    cfg.task = SudokuConfig(box_rows=3, box_cols=3, generator="minimal", min_backtracks=3, n_train=2000, n_test=500,
                            seed=0)  # 2000 training puzzles: generating them takes minutes, not an hour
    cfg.train.max_minutes = 60.0
    cfg.train.steps = 1000000
    cfg.train.precision = "auto"
    return cfg


@preset("maze-hard-cpu", "30x30 mazes with shortest paths > 110 steps (Maze-Hard's rule), d=32 attention, T=2, "
        "n=1, M=8, bf16 where the CPU has it; what an hour reaches: BENCHMARKS.md, hard recipes", "~60 min")
def maze_hard_cpu() -> Config:
    """Sized down from maze9's model (d=32, one latent update per cycle, batch 16) because attention
    runs over 900 cells instead of 81; an hour in `train.precision=auto` (as sudoku-hard-cpu)."""
    return Config(
        task=MazeConfig(size=29, canvas=30, min_path_len=111, loop_fraction=0.05, n_train=3000, n_test=200, seed=0),
        model=ModelConfig(d_model=32, n_heads=2, n_layers=2, mixer="attention", positions="rope", h_cycles=2,
                          l_cycles=1),
        halt=halt_config(max_steps=8),
        train=TrainConfig(batch_size=16, steps=1000000, max_minutes=60.0, lr=1e-3, warmup_steps=100, ema_decay=0.99,
                          log_every=50, eval_every=500, checkpoint_every=500, precision="auto", compile=False),
        eval=EvalConfig(batch_size=100, train_samples=100, during_training_samples=100),
    )
