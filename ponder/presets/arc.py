"""ARC-AGI presets: the small-grid CPU runs in both conditioning modes and TRM's GPU recipe."""
from __future__ import annotations

from ponder.models.halting import halt_config
from ponder.models.recursive import ModelConfig
from ponder.presets.base import fp32_train, preset
from ponder.runs.config import Config
from ponder.tasks.arc.task import ArcConfig
from ponder.training.evaluate import EvalConfig
from ponder.training.train_config import TrainConfig
from ponder.training.optim import AdamATan2Settings


def _arc_small(conditioning: str) -> Config:
    """ARC-AGI-1 tasks whose grids all fit 10x10 (178 training, 77 evaluation), 10x10 canvases, 4 views
    per evaluation task to vote over; the demonstrations mode reads 2 demonstration pairs (a
    500-token sequence, which sets its cost)."""
    demos = conditioning == "demonstrations"
    return Config(
        task=ArcConfig(dataset="arc1", conditioning=conditioning, max_side=10, views=4, seed=0,
                       **({"max_demos": 2} if demos else {})),
        model=ModelConfig(d_model=64, n_heads=4, n_layers=2, mixer="attention", positions="rope", h_cycles=2,
                          l_cycles=2, conditioning="none" if demos else "puzzle"),
        halt=halt_config(max_steps=6),
        train=fp32_train(batch_size=16 if demos else 64, steps=4000, lr=1e-3, warmup_steps=100, ema_decay=0.99,
                          log_every=50, eval_every=1000, checkpoint_every=500, max_minutes=45.0),
        eval=EvalConfig(batch_size=64, train_samples=128, during_training_samples=128),
    )


@preset("arc-small-demos", "ARC-AGI-1 10x10 tasks, reads 2 demonstrations in its input (never trains on "
        "evaluation tasks), d=64 attention TRM, M=6", "~1 h (training stops at 45 min)")
def arc_small_demos() -> Config:
    return _arc_small("demonstrations")


@preset("arc-small-embedding", "ARC-AGI-1 10x10 tasks, TRM per-task embedding, 4 views; trained on evaluation "
        "demonstrations, d=64 attention TRM, M=6", "~1 h (training stops at 45 min)")
def arc_small_embedding() -> Config:
    return _arc_small("embedding")


@preset("trm-arc1", "ARC-AGI-1, TRM size: 30x30, 1000 views per task, embedding (trained on evaluation "
        "demonstrations), d=512, T=3, n=4, M=16 (a GPU recipe, not run here)", "~3 days on 4 H100 GPUs")
def trm_arc1() -> Config:
    """TRM's ARC-AGI-1 recipe (REFERENCE.md): ~3 days on 4 H100s by its authors' account. Its
    training split is ~3k pairs x 1000 views of 30x30 canvases: plan for tens of GB of host memory."""
    return Config(
        task=ArcConfig(dataset="arc1", conditioning="embedding", max_side=30, views=1000, seed=0),
        model=ModelConfig(d_model=512, n_heads=8, n_layers=2, mixer="attention", positions="rope", h_cycles=3,
                          l_cycles=4, conditioning="puzzle"),
        halt=halt_config(max_steps=16),
        optim=AdamATan2Settings(beta1=0.9, beta2=0.95, weight_decay=0.1, a=1.0, b=1.0),
        train=TrainConfig(batch_size=768, steps=100000, lr=1e-4, warmup_steps=2000, ema_decay=0.999,
                          loss="stablemax", eval_every=10000, checkpoint_every=2000),
        eval=EvalConfig(batch_size=256, train_samples=1024, during_training_samples=1024),
    )
