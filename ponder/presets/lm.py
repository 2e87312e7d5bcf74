"""Language-model presets: the small hybrid and recursive pair that share data and training."""
from __future__ import annotations

from ponder.models.halting import halt_config
from ponder.models.lm.hybrid import HybridConfig
from ponder.models.lm.recursive_lm import RecursiveLMConfig
from ponder.presets.base import fp32_train, preset
from ponder.runs.config import Config
from ponder.tasks.lm.task import LMTaskConfig
from ponder.training.evaluate import EvalConfig


def _lm_small(model) -> Config:
    """The lm-small pair's shared task, learning rate and training (the issue's comparison ran its
    two models at learning rates 2x apart; these share everything but the model). Sized so a run
    takes minutes on 2 CPU cores."""
    return Config(
        task=LMTaskConfig(corpus="stdlib", max_files=400, vocab_size=1024, seq_len=64),
        model=model,
        train=fp32_train(batch_size=16, steps=400, lr=2e-3, warmup_steps=40, schedule="cosine", log_every=20,
                          eval_every=100, checkpoint_every=100),
        eval=EvalConfig(batch_size=32, max_samples=256, train_samples=64, during_training_samples=64, samples_drawn=4),
    )


@preset("lm-small-hybrid", "stdlib code (400 files), BPE 1024, 64-token windows; d=64 4-layer Gated DeltaNet "
        "hybrid, attention at layers 1 and 3", "~4 min")
def lm_small_hybrid() -> Config:
    return _lm_small(HybridConfig(vocab_size=1024, d_model=64, n_layers=4, attention_layers="1,3", n_heads=4,
                                  dn_heads=4, dn_head_dim=16, chunk_size=32, max_len=64))


@preset("lm-small-recursive", "lm-small-hybrid's data and training; d=64 recursive LM, a shared 3-layer attention "
        "stack in up to 3 cycles, per-token PonderNet halting", "~5 min")
def lm_small_recursive() -> Config:
    cfg = _lm_small(RecursiveLMConfig(vocab_size=1024, d_model=64, n_layers=3, n_heads=4, max_len=64))
    cfg.halt = halt_config("pondernet", max_steps=3, bias_init=-1.0, prior_lambda=0.4)
    return cfg
