"""ponder: recursive reasoning models with adaptive computation (TRM / HRM family).

Re-exported here: the core records `Batch`, `State`, `StepOutput` and `PonderError`. The rest is
imported from its module (kept out of this file so `import ponder` stays light):
- ponder.runs.config: `Config`, `apply_overrides`, `load_config`
- ponder.presets: `get_config`, `PRESETS`
- ponder.runs.run: `train_run`, `open_run`, `build_model` (the run layer); ponder.runs.trained:
  `load_trained` (a trained run, ready to evaluate);
  ponder.training.loop: `train` (the loop over a built `Run`)
- ponder.training.evaluate: `evaluate_split`, `adaptive_inference`
- ponder.models: `RecursiveReasoner`, `ModelConfig`; ponder.models.halting: `halt_config`, `HALTING`
"""
import os

# OpenMP threads that spin while waiting make every op wait on a thread another process has
# preempted (BENCHMARKS.md, busy machines); passive waiting must be chosen before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ponder.core.errors import PonderError  # noqa: E402
from ponder.core.types import Batch, State, StepOutput  # noqa: E402

__all__ = ["Batch", "State", "StepOutput", "PonderError"]
__version__ = "0.1.0"
