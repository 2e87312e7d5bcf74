"""Dynamics diagnostics on maps with known Jacobians."""
from __future__ import annotations

import math

import pytest
import torch

from ponder.dynamics import (compare_gradients, fixed_point_residual, jacobian_asymmetry, spectral_norm,
                             spectral_radius)
from ponder.errors import PonderError
from ponder.estimators.toys import LinearMap, TanhMap


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # results must not depend on which tests ran before


def _linear_step(j: torch.Tensor):
    """f(z) = J z per sample, z (b, d)."""
    return lambda z, x: z @ j.T


def _complex_pair_matrix(seed: int = 0) -> torch.Tensor:
    """Orthogonally similar to blockdiag(0.9 R(1.5 rad), 0.3, -0.25, 0.2, 0.1): top eigenvalues
    0.9 e^{+-1.5i}, a complex pair, so the Rayleigh quotient v^T J v is no estimate of rho."""
    gen = torch.Generator().manual_seed(seed)
    c, s = math.cos(1.5), math.sin(1.5)
    block = torch.zeros(6, 6, dtype=torch.float64)
    block[:2, :2] = 0.9 * torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    block[2:, 2:] = torch.diag(torch.tensor([0.3, -0.25, 0.2, 0.1], dtype=torch.float64))
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    return q @ block @ q.T


def test_fixed_point_residual():
    model = LinearMap()
    x = torch.randn(3, 3, dtype=torch.float64)
    with torch.no_grad():
        at_star = fixed_point_residual(model, model.fixed_point(x), x)
        at_zero = fixed_point_residual(model, torch.zeros(3, 6, dtype=torch.float64), x)
        expected = (x @ model.B.T).norm(dim=1)
    assert at_star.abs.shape == (3,) and (at_star.rel < 1e-12).all()
    torch.testing.assert_close(at_zero.abs, expected)
    torch.testing.assert_close(at_zero.rel, torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("mode", ["vjp", "jvp", "fd"])
def test_spectral_radius_complex_pair_where_rayleigh_fails(mode):
    j = _complex_pair_matrix()
    true = torch.linalg.eigvals(j).abs().max().item()
    assert abs(true - 0.9) < 1e-12
    z = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = spectral_radius(_linear_step(j), z, None, iters=80, mode=mode, generator=torch.Generator().manual_seed(1))
    assert out.rho.shape == (4,)
    assert (out.rho - true).abs().max() < 0.02
    # the Rayleigh-quotient estimate is far off on this map (|v^T J v| <= 0.9 |cos 1.5| + small)
    assert (out.rayleigh.abs() < 0.4).all()


def test_spectral_radius_and_norm_of_a_nonlinear_step_match_dense_jacobians():
    model = TanhMap(rho=0.9, seed=4)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, dtype=torch.float64, generator=gen)
    z = torch.randn(3, 8, dtype=torch.float64, generator=gen) * 0.3
    rho = spectral_radius(model, z, x, iters=200, burn_in=20, generator=torch.Generator().manual_seed(0)).rho
    sigma = spectral_norm(model, z, x, iters=200, generator=torch.Generator().manual_seed(0)).sigma
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda zi: model(zi[None], x[i:i + 1])[0], z[i])
        true_rho = torch.linalg.eigvals(jac).abs().max()
        assert abs(rho[i] - true_rho) < 0.03 * true_rho
        torch.testing.assert_close(sigma[i], torch.linalg.matrix_norm(jac, 2), rtol=1e-6, atol=0)


def test_jacobian_asymmetry():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, dtype=torch.float64, generator=gen)
    z = torch.randn(2, 6, dtype=torch.float64)
    sym = jacobian_asymmetry(_linear_step(a + a.T), z, None, samples=4)
    assert (sym.score < 1e-12).all()
    out = jacobian_asymmetry(_linear_step(a), z, None, samples=400, generator=gen)
    exact = (torch.linalg.matrix_norm(a - a.T) / torch.linalg.matrix_norm(a)).item()
    assert ((out.score - exact).abs() < 0.1 * exact).all()
    fd = jacobian_asymmetry(_linear_step(a), z, None, samples=400, jvp_mode="fd", generator=torch.Generator().manual_seed(3))
    assert ((fd.score - exact).abs() < 0.1 * exact).all()


def test_compare_gradients():
    a = [torch.tensor([1.0, -2.0, 0.0]), torch.tensor([[3.0]])]
    same = compare_gradients(a, [t.clone() for t in a], names=["w", "b"])
    assert same.cosine == pytest.approx(1.0) and same.norm_ratio == pytest.approx(1.0) and same.sign_agreement == 1.0
    assert set(same.per_tensor) == {"w", "b"}
    flipped = compare_gradients(a, [-t for t in a])
    assert flipped.cosine == pytest.approx(-1.0) and flipped.sign_agreement == 0.0
    double = compare_gradients([2 * t for t in a], a)
    assert double.norm_ratio == pytest.approx(2.0) and double.per_tensor["p1"].norm_ratio == pytest.approx(2.0)
    mixed = compare_gradients(a, [torch.tensor([1.0, 2.0, 0.0]), torch.tensor([[3.0]])])
    assert mixed.per_tensor["p0"].sign_agreement == 0.5 and mixed.sign_agreement == pytest.approx(2 / 3)
    assert mixed.per_tensor["p0"].cosine == pytest.approx(-3 / 5)
    assert math.isnan(compare_gradients([torch.zeros(2)], [torch.ones(2)]).cosine)
    assert "per_tensor" in same.as_dict()
    with pytest.raises(PonderError):
        compare_gradients(a, a[:1])
    with pytest.raises(PonderError):
        compare_gradients([torch.zeros(2)], [torch.zeros(3)])
