"""Dynamics diagnostics of iterative models (pure functions returning named records) and
contraction-control loss terms."""
from ponder.dynamics.compare import Agreement, GradientComparison, compare_gradients
from ponder.dynamics.control import (contraction_homeostat, jacobian_asymmetry_penalty, jacobian_frobenius_penalty,
                                     mean_log_growth)
from ponder.dynamics.jacobian import (JacobianAsymmetry, Linearization, Residual, SpectralNorm, SpectralRadius,
                                      fixed_point_residual, jacobian_asymmetry, spectral_norm, spectral_radius)

__all__ = ["Agreement", "GradientComparison", "JacobianAsymmetry", "Linearization", "Residual", "SpectralNorm",
           "SpectralRadius", "compare_gradients", "contraction_homeostat", "fixed_point_residual",
           "jacobian_asymmetry", "jacobian_asymmetry_penalty", "jacobian_frobenius_penalty", "mean_log_growth",
           "spectral_norm", "spectral_radius"]
