"""Contraction-control loss terms: values and gradients on linear maps with known Jacobians."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ponder.dynamics import (contraction_homeostat, jacobian_asymmetry_penalty, jacobian_frobenius_penalty,
                             mean_log_growth, spectral_radius)
from ponder.estimators.toys import TanhMap


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # results must not depend on which tests ran before


class Matrix(nn.Module):
    """f(z) = z A^T, states (b, d)."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.A = nn.Parameter(a.clone())

    def forward(self, z, x):
        return z @ self.A.T


class ScaledRotation(nn.Module):
    """f(z) = c z Q^T with Q orthogonal: every perturbation grows by exactly c per step."""

    def __init__(self, c: float, d: int = 5):
        super().__init__()
        self.c = nn.Parameter(torch.tensor(c, dtype=torch.float64))
        self.q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))

    def forward(self, z, x):
        return self.c * z @ self.q.T


def _cos(a, b):
    return (a.flatten() @ b.flatten() / (a.norm() * b.norm())).item()


@pytest.mark.parametrize("method", ["vjp", "fd"])
def test_frobenius_penalty_estimates_norm_and_gradient(method):
    gen = torch.Generator().manual_seed(0)
    m = Matrix(torch.randn(6, 6, dtype=torch.float64, generator=gen))
    z = torch.randn(2000, 6, dtype=torch.float64, generator=gen)  # one probe per row: 2000 probes
    pen = jacobian_frobenius_penalty(m, z, None, weight=0.5, method=method, generator=gen)
    exact = 0.5 * torch.linalg.matrix_norm(m.A.detach()) ** 2
    assert abs(pen.item() - exact.item()) < 0.1 * exact.item()
    (grad,) = torch.autograd.grad(pen, [m.A])
    assert _cos(grad, m.A.detach()) > 0.95  # d/dA |A|_F^2 = 2A


@pytest.mark.parametrize("mode", ["jvp", "fd"])
def test_homeostat_on_a_scaled_rotation(mode):
    z = [torch.randn(3, 5, dtype=torch.float64) for _ in range(4)]
    m = ScaledRotation(0.95)
    g = mean_log_growth(m, z, None, jvp_mode=mode)
    assert abs(g.item() - math.log(0.95)) < 1e-8
    pen = contraction_homeostat(m, z, None, target=math.log(0.9), weight=2.0, jvp_mode=mode)
    assert abs(pen.item() - 2.0 * (math.log(0.95) - math.log(0.9))) < 1e-8
    (grad,) = torch.autograd.grad(pen, [m.c])
    assert abs(grad.item() - 2.0 / 0.95) < 1e-6
    calm = ScaledRotation(0.8)
    pen = contraction_homeostat(calm, z, None, jvp_mode=mode)
    assert pen.item() == 0.0 and torch.autograd.grad(pen, [calm.c])[0].item() == 0.0


def test_homeostat_training_pulls_an_expanding_map_back_to_contraction():
    torch.manual_seed(0)
    model = TanhMap(rho=2.5, seed=1)
    x = 0.1 * torch.randn(8, 4, dtype=torch.float64)
    # states near the origin, where tanh is nearly linear and J ~ W expands (an expanding map's own
    # trajectory saturates tanh, which hides the expansion)
    states = [0.05 * torch.randn(8, 8, dtype=torch.float64) for _ in range(8)]
    before = mean_log_growth(model, states, x, generator=torch.Generator().manual_seed(0)).item()
    rho0 = spectral_radius(model, states[-1], x, iters=100, generator=torch.Generator().manual_seed(0)).rho
    opt = torch.optim.SGD([model.W], lr=0.1)
    for _ in range(60):
        opt.zero_grad()
        contraction_homeostat(model, states, x, target=math.log(0.9)).backward()
        opt.step()
    after = mean_log_growth(model, states, x, generator=torch.Generator().manual_seed(0)).item()
    rho = spectral_radius(model, states[-1], x, iters=100, generator=torch.Generator().manual_seed(0)).rho
    assert before > 0.0 and after < math.log(0.9) + 0.02
    assert rho0.min() > 1.0 and rho.max() < 1.0


@pytest.mark.parametrize("mode", ["jvp", "fd"])
def test_asymmetry_penalty(mode):
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(6, 6, dtype=torch.float64, generator=gen)
    z = torch.randn(2000, 6, dtype=torch.float64, generator=gen)
    sym = Matrix(a + a.T)
    pen = jacobian_asymmetry_penalty(sym, z, None, jvp_mode=mode, generator=gen)
    assert pen.item() < 1e-10
    m = Matrix(a)
    pen = jacobian_asymmetry_penalty(m, z, None, jvp_mode=mode, generator=gen)
    exact = 0.5 * torch.linalg.matrix_norm(a - a.T) ** 2
    assert abs(pen.item() - exact.item()) < 0.1 * exact.item()
    (grad,) = torch.autograd.grad(pen, [m.A])
    assert _cos(grad, a - a.T) > 0.95  # d/dA 1/2 |A - A^T|_F^2 = 2 (A - A^T)


def test_finite_difference_terms_work_with_once_differentiable_ops():
    """The recursive reasoner's custom ops have no double backward; the fd variants need none."""
    from ponder.models.blocks import rms_norm

    class NormStep(nn.Module):
        def __init__(self):
            super().__init__()
            self.W = nn.Parameter(0.3 * torch.randn(6, 6, dtype=torch.float64))

        def forward(self, z, x):
            return 0.5 * rms_norm(z @ self.W.T + x, 1e-6)

    m = NormStep()
    z, x = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    for term in (jacobian_frobenius_penalty(m, z, x, method="fd"), contraction_homeostat(m, [z], x, target=-5.0)):
        (g,) = torch.autograd.grad(term, [m.W])
        assert torch.isfinite(g).all() and g.abs().sum() > 0
