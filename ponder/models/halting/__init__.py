"""Halting heads: decide, per sample, when a recursive reasoner stops.

Every head is an `nn.Module` owned by the model (its weights are checkpointed with it) and
implements the one `HaltingHead` protocol below. Training: the objective hands the head a
`Segment` (consecutive steps of the same samples) and the head returns the whole loss of it
(task and halting terms). What segments a head is given is its `trains_on`:

- "step" (Q-halt, Q-halt + Q-continue): deep supervision, one ACT step of every slot of the carry
  per optimizer step;
- "trajectory" (ACT, PonderNet): a fresh batch runs all M steps per optimizer step.

Inference is the same for every head: `start` a per-sample memo, then after each step `decide`
who halts and read each halting sample's `answer`. The training loop uses the same `decide`.

Each head has its own settings dataclass (the config section `halt`, switched by `halt.kind`):
the settings every head shares are `HaltSettings`; a head's own are declared on its class, so a
setting that a head does not use cannot be set for it. Heads are registered in `HALTING` by name.
"""
from ponder.models.halting import act as _act  # noqa: E402,F401
from ponder.models.halting import pondernet as _pondernet  # noqa: E402,F401
from ponder.models.halting import q_halt as _q_halt  # noqa: E402,F401  (registers q_halt, q_continue)
from ponder.models.halting.base import (HALT_SETTINGS, HALTING, HaltingHead, HaltProbe, HaltSettings, Memo, ProbeHead,
                                        Segment, TaskLoss, build_halting, halt_config, penalty_scale, register_head)

__all__ = ["HALTING", "HALT_SETTINGS", "HaltProbe", "HaltSettings", "HaltingHead", "Memo", "ProbeHead", "Segment",
           "TaskLoss", "build_halting", "halt_config", "penalty_scale", "register_head"]
