"""Dynamics diagnostics on maps with known Jacobians."""
from __future__ import annotations

import math

import pytest
import torch

from ponder.core.errors import PonderError
from ponder.dynamics import compare_gradients, fixed_point_residual, jacobian_asymmetry, spectral_norm, spectral_radius
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


def _nonnormal_pair_matrix(seed: int = 0) -> torch.Tensor:
    """P B P^-1 with B the block of `_complex_pair_matrix` and P = Q U: Q orthogonal, U unit upper
    triangular but for U[1,1] = 0.1 and U[2,2] = 0.5, with U[0,1] = U[0,2] = 1. The eigenvectors
    are far from orthogonal (the real and imaginary part of the top pair's at ~6 degrees, cond(P)
    = 25), so the norm of an iterate oscillates along its turn in the top plane. The eigenvalues
    are B's: rho = 0.9 exactly."""
    gen = torch.Generator().manual_seed(seed)
    c, s = math.cos(1.5), math.sin(1.5)
    block = torch.zeros(6, 6, dtype=torch.float64)
    block[:2, :2] = 0.9 * torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    block[2:, 2:] = torch.diag(torch.tensor([0.3, -0.25, 0.2, 0.1], dtype=torch.float64))
    u = torch.eye(6, dtype=torch.float64)
    u[0, 1], u[1, 1], u[0, 2], u[2, 2] = 1.0, 0.1, 1.0, 0.5
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    p = q @ u
    return p @ block @ torch.linalg.inv(p)


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


def test_nonnormal_pair_matrix_is_what_it_claims():
    j = _nonnormal_pair_matrix()
    eig = torch.linalg.eigvals(j).abs().sort(descending=True).values
    torch.testing.assert_close(eig, torch.tensor([0.9, 0.9, 0.3, 0.25, 0.2, 0.1], dtype=torch.float64))
    assert torch.linalg.matrix_norm(j @ j.T - j.T @ j) > 1.0  # far from normal (0 for a normal J)
    normal = _complex_pair_matrix()
    assert torch.linalg.matrix_norm(normal @ normal.T - normal.T @ normal) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["vjp", "jvp", "fd"])
@pytest.mark.parametrize("matrix", ["conformance", "nonnormal"])
def test_spectral_radius_defaults_within_one_percent(matrix, mode, dtype):
    """The default budget (100 iterations) and the adaptive call diagnose uses (cap 200, tol 1%)
    are within 1% of rho = 0.9 on both maps, and report convergence."""
    j = (_complex_pair_matrix() if matrix == "conformance" else _nonnormal_pair_matrix()).to(dtype)
    z = torch.randn(8, 6, dtype=dtype, generator=torch.Generator().manual_seed(2))
    fixed = spectral_radius(_linear_step(j), z, None, mode=mode, generator=torch.Generator().manual_seed(1))
    adaptive = spectral_radius(_linear_step(j), z, None, iters=200, tol=1e-2, mode=mode,
                               generator=torch.Generator().manual_seed(1))
    for out in (fixed, adaptive):
        assert out.rho.dtype == dtype and out.rho.shape == out.rel_change.shape == out.converged.shape == (8,)
        assert ((out.rho.double() - 0.9).abs() / 0.9).max() < 0.01
        assert out.converged.all() and (out.rel_change <= 1e-2).all()
    assert fixed.iters == 100 and fixed.growth.shape == (8, 100)
    assert 40 <= adaptive.iters < 200 and adaptive.growth.shape == (8, adaptive.iters)


def test_spectral_radius_convergence_flag():
    """On the non-normal map, 40 iterations are too few: the plain geometric mean of the same
    growth sequence (the former estimator) is off by several %, and the flag says not converged;
    100 iterations converge. An adaptive run stops once converged, or runs to its cap if the cap
    comes first."""
    j = _nonnormal_pair_matrix()
    z = torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def run(**kw):
        return spectral_radius(_linear_step(j), z, None, generator=torch.Generator().manual_seed(1), **kw)

    short = run(iters=40)
    geometric_mean = torch.exp(torch.log(short.growth[:, 10:]).mean(1))
    assert ((geometric_mean - 0.9).abs() / 0.9).max() > 0.03
    assert short.iters == 40 and not short.converged.any() and (short.rel_change > 1e-2).all()
    long = run(iters=100)
    assert long.converged.all() and ((long.rho - 0.9).abs() / 0.9).max() < 1e-3
    stopped = run(iters=300, tol=1e-2)
    assert 40 <= stopped.iters < 100 and stopped.converged.all()
    capped = run(iters=50, tol=1e-2)
    assert capped.iters == 50 and not capped.converged.all()
    # the conformance map (normal J) settles at once: the adaptive run stops at its minimum
    quick = spectral_radius(_linear_step(_complex_pair_matrix()), z, None, iters=300, tol=1e-3)
    assert quick.iters == 10 + 30 and quick.converged.all()
    # too few post-burn-in iterations to compare windows: never converged
    tiny = run(iters=12)
    assert torch.isinf(tiny.rel_change).all() and not tiny.converged.any()
    one = spectral_radius(_linear_step(j), z, None, per_sample=False, iters=60)
    assert one.rho.shape == one.converged.shape == (1,)
    with pytest.raises(PonderError):
        run(tol=0.0)


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
