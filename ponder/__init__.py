"""ponder: recursive reasoning models with adaptive computation (TRM / HRM family).

Public API (explicit re-exports):
- `Config`, `apply_overrides`, `load_config`: configuration
- `get_config`, `PRESETS`: named experiments
- `train`: the training loop; `evaluate_split`, `adaptive_inference`: evaluation
- `RecursiveReasoner`, `ModelConfig`, `HaltConfig`, `QHaltHead`: models
- `Batch`, `State`, `StepOutput`: core records
"""
from ponder.types import Batch, State, StepOutput
from ponder.errors import PonderError

__all__ = ["Batch", "State", "StepOutput", "PonderError"]
__version__ = "0.1.0"
