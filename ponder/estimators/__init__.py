"""Gradient estimators for iterative models behind one protocol (see ponder.estimators.base).

Importing this package registers every estimator in ESTIMATORS:
bptt, truncated, phantom, implicit, ep_one_sided, ep_symmetric, ep_holomorphic, rtrl,
forward_gradient.
"""
from ponder.estimators.base import BPTT, ESTIMATORS, GradientEstimator, NotApplicable, Rollout, grads_or_zeros
from ponder.estimators.ep import (EnergyDescent, EnergyModel, EPHolomorphic, EPOneSided, EPSymmetric,
                                  EquilibriumPropagation, HopfieldEnergy)
from ponder.estimators.forward import RTRL, ForwardGradient, bind_params, directional_derivative
from ponder.estimators.implicit import Implicit
from ponder.estimators.solvers import SolveResult, gmres, solve_fixed_point
from ponder.estimators.truncated import Phantom, Truncated

__all__ = ["BPTT", "ESTIMATORS", "EPHolomorphic", "EPOneSided", "EPSymmetric", "EnergyDescent", "EnergyModel",
           "EquilibriumPropagation", "ForwardGradient", "GradientEstimator", "HopfieldEnergy", "Implicit",
           "NotApplicable", "Phantom", "RTRL", "Rollout", "SolveResult", "Truncated", "bind_params",
           "directional_derivative", "gmres", "grads_or_zeros", "solve_fixed_point"]
