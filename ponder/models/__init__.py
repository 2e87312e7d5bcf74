"""Recursive reasoning models (TRM / HRM)."""
from ponder.models.recursive import ModelConfig, RecursiveReasoner

__all__ = ["ModelConfig", "RecursiveReasoner"]
