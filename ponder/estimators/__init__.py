"""Gradient estimators for iterative models behind one protocol (see ponder.estimators.base)."""
from ponder.estimators.base import BPTT, ESTIMATORS, GradientEstimator, Rollout, grads_or_zeros

__all__ = ["BPTT", "ESTIMATORS", "GradientEstimator", "Rollout", "grads_or_zeros"]
