"""Every network: the blocks, the recursive reasoner (TRM / HRM), the recurrent-cell reasoner, the
adapters, the halting heads (`halting/`) and the language models (`lm/`). May import
`ponder.core` only."""
from ponder.models.recursive import ModelConfig, RecursiveReasoner

__all__ = ["ModelConfig", "RecursiveReasoner"]
