"""Gradient estimators for iterative models behind one protocol (see ponder.estimators.base).

Importing this package registers every estimator in ESTIMATORS:
bptt, truncated, phantom, implicit (and, from their modules, the EP and forward-mode families).
"""
from ponder.estimators.base import BPTT, ESTIMATORS, GradientEstimator, Rollout, grads_or_zeros
from ponder.estimators.implicit import Implicit
from ponder.estimators.solvers import SolveResult, gmres, solve_fixed_point
from ponder.estimators.truncated import Phantom, Truncated

__all__ = ["BPTT", "ESTIMATORS", "GradientEstimator", "Implicit", "Phantom", "Rollout", "SolveResult",
           "Truncated", "gmres", "grads_or_zeros", "solve_fixed_point"]
