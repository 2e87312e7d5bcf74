"""Gradient estimators for iterative models behind one protocol (see ponder.estimators.base).

Importing this package registers every estimator in ESTIMATORS:
bptt, truncated, phantom, implicit, ep_one_sided, ep_symmetric, ep_holomorphic (and the
forward-mode family).
"""
from ponder.estimators.base import BPTT, ESTIMATORS, GradientEstimator, Rollout, grads_or_zeros
from ponder.estimators.ep import (EnergyDescent, EnergyModel, EPHolomorphic, EPOneSided, EPSymmetric,
                                  EquilibriumPropagation, HopfieldEnergy)
from ponder.estimators.implicit import Implicit
from ponder.estimators.solvers import SolveResult, gmres, solve_fixed_point
from ponder.estimators.truncated import Phantom, Truncated

__all__ = ["BPTT", "ESTIMATORS", "EPHolomorphic", "EPOneSided", "EPSymmetric", "EnergyDescent", "EnergyModel",
           "EquilibriumPropagation", "GradientEstimator", "HopfieldEnergy", "Implicit", "Phantom", "Rollout", "SolveResult",
           "Truncated", "gmres", "grads_or_zeros", "solve_fixed_point"]
