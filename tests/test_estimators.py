"""Solver-level tests of the estimators: per-sample stopping, best iterate, GMRES beyond
contraction, statistics, input errors."""
from __future__ import annotations

import pytest
import torch

from ponder.core.errors import PonderError
from ponder.estimators import ESTIMATORS, Implicit, gmres, solve_fixed_point
from ponder.estimators.toys import LinearMap, TanhMap


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # results must not depend on which tests ran before


def _diag_map(rates):
    """z <- r * z + 1 per sample: sample i contracts at rate rates[i]; fixed point 1/(1-r)."""
    r = torch.tensor(rates, dtype=torch.float64)[:, None]
    return lambda z: r * z + 1.0


def test_per_sample_stopping_counts_iterations_per_sample():
    out = solve_fixed_point(_diag_map([0.1, 0.9]), torch.zeros(2, 3, dtype=torch.float64),
                            max_iter=500, tol=1e-8, method="fixed_point")
    fast, slow = out.iters.tolist()
    assert fast < 15 < slow < 500
    assert (out.rel_residual < 1e-8).all()
    torch.testing.assert_close(out.z[:, 0], torch.tensor([1 / 0.9, 10.0], dtype=torch.float64), rtol=1e-6, atol=0)


def test_anderson_converges_faster_than_plain_iteration():
    model = TanhMap(rho=0.95, seed=3)
    x = torch.randn(4, 4, dtype=torch.float64)
    fn = lambda z: model(z, x)  # noqa: E731
    z0 = torch.zeros(4, 8, dtype=torch.float64)
    with torch.no_grad():
        plain = solve_fixed_point(fn, z0, max_iter=400, tol=1e-10, method="fixed_point")
        anderson = solve_fixed_point(fn, z0, max_iter=400, tol=1e-10, method="anderson")
    assert (anderson.rel_residual < 1e-10).all()
    assert anderson.iters.max() < plain.iters.max()


def test_best_residual_iterate_is_kept():
    """A map that overshoots after converging: the returned iterate is the best one seen."""
    calls = {"n": 0}

    def fn(z):
        calls["n"] += 1
        return 0.5 * z + 1.0 if calls["n"] <= 20 else z + 1.0  # converges, then drifts away

    out = solve_fixed_point(fn, torch.zeros(1, 1, dtype=torch.float64), max_iter=40, tol=0.0, method="fixed_point")
    assert abs(out.z.item() - 2.0) < 1e-5
    assert out.iters.item() == 40


def test_gmres_solves_a_system_where_fixed_point_iteration_diverges():
    torch.manual_seed(0)
    j = torch.randn(3, 5, 5, dtype=torch.float64) * 0.9  # rho(J) > 1 for most draws
    rhs = torch.randn(3, 5, dtype=torch.float64)
    matvec = lambda v: v - torch.einsum("bij,bj->bi", j, v)  # noqa: E731
    out = gmres(matvec, rhs, max_iter=50, tol=1e-12, restart=10)
    exact = torch.linalg.solve(torch.eye(5, dtype=torch.float64) - j, rhs[..., None])[..., 0]
    torch.testing.assert_close(out.z, exact, rtol=1e-8, atol=1e-10)
    assert (out.rel_residual < 1e-9).all() and (out.iters <= 10).all()


def test_implicit_with_gmres_beyond_contraction():
    """rho(A) = 1.46 > 1: plain iteration cannot reach z*, but a fixed point exists; starting the
    forward solve at z* the GMRES adjoint still gives the exact implicit gradient."""
    model = LinearMap(rho=2.5, seed=1)
    eigs = torch.linalg.eigvals(model.A.detach())
    assert eigs.abs().max() > 1.0 and (eigs - 1).abs().min() > 0.05  # I - A is well conditioned
    x, y = torch.randn(3, 3, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    est = Implicit(solver="fixed_point", tol=1e-10, adjoint="gmres", adjoint_tol=1e-12)
    out = est.estimate(model, model.fixed_point(x), x, model.loss(y), steps=1, params=list(model.parameters()))
    for g, r in zip(out.grads, model.implicit_grads(x, y)):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-8)
    assert out.stats["adj_rel_residual_max"] < 1e-10


def test_implicit_statistics():
    model = TanhMap()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    out = Implicit(tol=1e-9).estimate(model, torch.zeros(5, 8, dtype=torch.float64), x, model.loss(y), steps=100,
                                      params=list(model.parameters()))
    s = out.stats
    assert s["fwd_rel_residual_max"] < 1e-9 and s["adj_rel_residual_max"] < 1e-8
    assert 1 <= s["fwd_iters_mean"] <= s["fwd_iters_max"] <= 100 and s["adj_iters_max"] >= 1
    # a 3-iteration cap is reported as unconverged
    capped = Implicit(tol=1e-9, max_iter=3).estimate(model, torch.zeros(5, 8, dtype=torch.float64), x, model.loss(y),
                                                     steps=100, params=list(model.parameters()))
    assert capped.stats["fwd_iters_max"] == 3 and capped.stats["fwd_rel_residual_max"] > 1e-6


def test_whole_batch_mode_equals_per_sample_mode_on_independent_samples():
    model = TanhMap()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    z0 = torch.zeros(5, 8, dtype=torch.float64)
    a = Implicit(tol=1e-12, adjoint_tol=1e-12).estimate(model, z0, x, model.loss(y), steps=200, params=list(model.parameters()))
    b = Implicit(tol=1e-12, adjoint_tol=1e-12, per_sample=False).estimate(model, z0, x, model.loss(y), steps=200,
                                                                         params=list(model.parameters()))
    for ga, gb in zip(a.grads, b.grads):
        torch.testing.assert_close(ga, gb, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name,settings", [("implicit", {"solver": "newton"}), ("implicit", {"adjoint": "lu"}),
                                           ("truncated", {"k": 0}), ("phantom", {"lam": 1.5})])
def test_bad_settings_raise_ponder_error(name, settings):
    model = TanhMap()
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(PonderError):
        est = ESTIMATORS.get(name)(**settings)
        est.estimate(model, torch.zeros(2, 8, dtype=torch.float64), x, lambda z: z.sum(), steps=3,
                     params=list(model.parameters()))
    with pytest.raises(PonderError):
        ESTIMATORS.get("no-such-estimator")


@pytest.mark.parametrize("activation", ["sigmoid", "identity"])
def test_holomorphic_ep_with_other_activations(activation):
    from ponder.estimators import EnergyDescent, EPHolomorphic, HopfieldEnergy

    model = HopfieldEnergy(activation=activation, seed=2)
    step = EnergyDescent(model, lr=0.5)
    x, y = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
    loss_fn = lambda s: 0.5 * ((model.output(s) - y) ** 2).sum()  # noqa: E731
    z0, params = torch.zeros(2, 8, dtype=torch.float64), list(model.parameters())
    ref = Implicit(tol=1e-13, adjoint_tol=1e-13).estimate(step, z0, x, loss_fn, steps=300, params=params).grads
    out = EPHolomorphic(beta=0.2, nudges=6).estimate(step, z0, x, loss_fn, steps=300, params=params)
    a, b = torch.cat([g.flatten() for g in out.grads]), torch.cat([g.flatten() for g in ref])
    assert (a - b).norm() < 1e-3 * b.norm()
    assert out.stats["nudged_rel_residual_max"] < 1e-10


def test_energy_model_errors():
    from ponder.estimators import EnergyDescent, HopfieldEnergy

    with pytest.raises(PonderError):
        HopfieldEnergy(activation="relu")
    with pytest.raises(PonderError):
        EnergyDescent(HopfieldEnergy(), lr=0.0)
    with pytest.raises(PonderError):
        ESTIMATORS.get("ep_holomorphic")(nudges=1)


def test_float32_tolerances_are_floored_so_solves_stop_early():
    model = TanhMap(d=16, m=4, o=2, rho=0.9, dtype=torch.float32)
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    out = Implicit(tol=1e-12, adjoint_tol=1e-12).estimate(model, torch.zeros(8, 16), x, model.loss(y), steps=200,
                                                           params=list(model.parameters()))
    floor = 10 * torch.finfo(torch.float32).eps
    assert out.stats["fwd_iters_max"] < 200 and out.stats["adj_iters_max"] < 100
    assert out.stats["fwd_rel_residual_max"] < floor and out.stats["adj_rel_residual_max"] < 10 * floor


def test_anderson_step_with_a_singular_history_falls_back_to_a_plain_step():
    # a row whose iterates stopped moving has g = f - x = 0: its Gram matrix is singular in float32
    from ponder.estimators.solvers import _anderson_step

    xs = torch.ones(3, 4, 8)
    fs = xs.clone()
    fs[0] += torch.randn(4, 8)  # one healthy row
    out = _anderson_step(xs, fs, beta=1.0, lam=0.0)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1:], fs[1:, -1])


def test_gmres_is_deterministic():
    # torch's default least-squares driver on CPU (gelsy) is not run-to-run deterministic
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4, 20, 20, generator=gen) * 0.1 + torch.eye(20)
    rhs = torch.randn(4, 20, generator=gen)
    runs = [gmres(lambda v: torch.einsum("rij,rj->ri", a, v), rhs, max_iter=15, tol=1e-12).z for _ in range(8)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])
