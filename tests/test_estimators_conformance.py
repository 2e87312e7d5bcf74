"""Conformance suite of the gradient estimators: every estimator registered in ESTIMATORS must
have a row in ROWS (a test fails otherwise) and pass the checks for its objective.

Objectives: "finite" estimators must equal BPTT's dL(z_T)/dtheta exactly on the linear map;
"equilibrium" ones the exact implicit gradient (I - J)^-T g of L(z*); "approx" rows only the
generic checks (shapes, finite, non-zero) plus their own tests below and in test_estimators.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from ponder.core.errors import PonderError
from ponder.estimators import BPTT, ESTIMATORS, Implicit
from ponder.estimators.ep import EnergyDescent, EquilibriumPropagation, HopfieldEnergy
from ponder.estimators.toys import LinearMap, ScalarShrink, TanhMap

T = 60  # enough steps for the rho=0.6 linear map to converge to 1e-13


@dataclass
class Row:
    name: str
    settings: dict = field(default_factory=dict)
    objective: str = "finite"  # finite | equilibrium | approx
    rtol: float = 1e-10
    problem: str = "map"  # map: any step function | energy: needs an EnergyDescent step


ROWS = [
    Row("bptt"),
    Row("truncated", {"k": T}),
    Row("truncated", {"k": 1}, objective="approx"),
    Row("phantom", {"k": 90, "lam": 0.5}, objective="equilibrium", rtol=1e-6),
    Row("implicit", {"adjoint": "gmres", "tol": 1e-12, "adjoint_tol": 1e-12}, objective="equilibrium", rtol=1e-9),
    Row("implicit", {"adjoint": "anderson", "tol": 1e-12, "adjoint_tol": 1e-12}, objective="equilibrium", rtol=1e-9),
    Row("implicit", {"adjoint": "fixed_point", "solver": "fixed_point", "tol": 1e-12, "adjoint_tol": 1e-12,
                     "adjoint_max_iter": 200}, objective="equilibrium", rtol=1e-9),
    Row("rtrl"),
    Row("forward_gradient", {"seed": 0}, objective="approx"),
    Row("ep_one_sided", {"beta": 1e-3}, objective="equilibrium", rtol=1e-3, problem="energy"),
    Row("ep_symmetric", {"beta": 0.01}, objective="equilibrium", rtol=1e-4, problem="energy"),
    Row("ep_holomorphic", {"beta": 0.2, "nudges": 6}, objective="equilibrium", rtol=1e-4, problem="energy"),
]


def _ids(r: Row) -> str:
    return "-".join([r.name, *(f"{k}={v}" for k, v in r.settings.items())])


def _linear_problem(seed: int = 0):
    torch.manual_seed(seed)
    model = LinearMap(seed=seed)
    x = torch.randn(4, 3, dtype=torch.float64)
    y = torch.randn(4, 2, dtype=torch.float64)
    z0 = torch.zeros(4, 6, dtype=torch.float64)
    return model, x, y, z0


def _run(row: Row, model, z0, x, loss_fn, steps):
    est = ESTIMATORS.get(row.name)(**row.settings)
    return est.estimate(model, z0, x, loss_fn, steps=steps, params=list(model.parameters()))


def test_every_registered_estimator_has_a_row():
    assert set(ESTIMATORS.names()) <= {r.name for r in ROWS}


@pytest.mark.parametrize("row", [r for r in ROWS if r.objective != "approx" and r.problem == "map"], ids=_ids)
def test_linear_map_matches_its_objective(row):
    model, x, y, z0 = _linear_problem()
    steps = 12 if row.objective == "finite" else T  # short horizon: finite != equilibrium
    out = _run(row, model, z0, x, model.loss(y), steps)
    if row.objective == "finite":
        ref = BPTT().estimate(model, z0, x, model.loss(y), steps=steps, params=list(model.parameters())).grads
    else:
        ref = model.implicit_grads(x, y)
    for g, r in zip(out.grads, ref):
        torch.testing.assert_close(g, r, rtol=row.rtol, atol=row.rtol * r.abs().max().item())


def test_finite_and_equilibrium_gradients_differ_at_short_horizon():
    """Sanity of the problem: at T=12 BPTT is measurably not the implicit gradient."""
    model, x, y, z0 = _linear_problem()
    bptt = BPTT().estimate(model, z0, x, model.loss(y), steps=12, params=list(model.parameters())).grads
    exact = model.implicit_grads(x, y)
    assert (bptt[0] - exact[0]).norm() > 1e-4 * exact[0].norm()


def _energy_problem(seed: int = 0):
    torch.manual_seed(seed)
    model = HopfieldEnergy(seed=seed)
    x, y = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    loss_fn = lambda s: 0.5 * ((model.output(s) - y) ** 2).sum()  # noqa: E731  (holomorphic in s)
    return EnergyDescent(model, lr=0.5), x, loss_fn, torch.zeros(3, 8, dtype=torch.float64)


def _rel_err(grads, ref) -> float:
    a = torch.cat([g.flatten() for g in grads])
    b = torch.cat([g.flatten() for g in ref])
    return ((a - b).norm() / b.norm()).item()


_ENERGY_REF: dict = {}


def _energy_reference():
    """Exact implicit gradient of L(s*) on the Hopfield problem (GMRES, validated on the linear map)."""
    if not _ENERGY_REF:
        step, x, loss_fn, z0 = _energy_problem()
        _ENERGY_REF["g"] = Implicit(tol=1e-13, adjoint_tol=1e-13).estimate(
            step, z0, x, loss_fn, steps=300, params=list(step.parameters())).grads
    return _ENERGY_REF["g"]


@pytest.mark.parametrize("row", [r for r in ROWS if r.problem == "energy" and r.objective == "equilibrium"], ids=_ids)
def test_energy_model_matches_the_implicit_gradient(row):
    step, x, loss_fn, z0 = _energy_problem()
    out = _run(row, step, z0, x, loss_fn, 300)
    assert _rel_err(out.grads, _energy_reference()) < row.rtol


@pytest.mark.parametrize("mode,order", [("symmetric", 2), ("one_sided", 1)])
def test_ep_error_falls_with_beta_at_its_order(mode, order):
    """Halving beta divides the error by ~2^order: O(beta^2) symmetric, O(beta) one-sided."""
    step, x, loss_fn, z0 = _energy_problem()
    errs = [_rel_err(EquilibriumPropagation(mode=mode, beta=b).estimate(step, z0, x, loss_fn, steps=300,
                                                                       params=list(step.parameters())).grads,
                     _energy_reference()) for b in (0.1, 0.05, 0.025)]
    for big, small in zip(errs, errs[1:]):
        assert 0.75 * 2 ** order < big / small < 1.25 * 2 ** order


def test_holomorphic_ep_error_falls_with_the_number_of_nudges():
    step, x, loss_fn, z0 = _energy_problem()
    params = list(step.parameters())
    run = lambda **kw: EquilibriumPropagation(**kw).estimate(step, z0, x, loss_fn, steps=300, params=params)  # noqa: E731
    errs = [_rel_err(run(mode="holomorphic", beta=0.5, nudges=n).grads, _energy_reference()) for n in (2, 4, 8)]
    assert errs[0] > 3 * errs[1] > 9 * errs[2]
    # two nudges +-|beta| are the symmetric estimate
    sym = run(mode="symmetric", beta=0.5).grads
    for a, b in zip(run(mode="holomorphic", beta=0.5, nudges=2).grads, sym):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_ep_needs_an_energy():
    model = TanhMap()
    with pytest.raises(PonderError, match="energy"):
        ESTIMATORS.get("ep_symmetric")().estimate(model, torch.zeros(2, 8, dtype=torch.float64),
                                                   torch.zeros(2, 4, dtype=torch.float64), lambda z: z.sum(),
                                                   steps=5, params=list(model.parameters()))


@pytest.mark.parametrize("row", ROWS, ids=_ids)
def test_generic_problem_shapes_finite_nonzero(row):
    torch.manual_seed(1)
    if row.problem == "energy":
        model, x, loss_fn, z0 = _energy_problem(1)
        steps = 100
    else:
        model = TanhMap()
        x, y = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
        z0, loss_fn, steps = torch.zeros(5, 8, dtype=torch.float64), model.loss(y), 20
    params = list(model.parameters())
    out = _run(row, model, z0, x, loss_fn, steps)
    assert out.state.shape == z0.shape and out.loss.dim() == 0 and not out.state.requires_grad
    assert len(out.grads) == len(params)
    for g, p in zip(out.grads, params):
        assert g.shape == p.shape and torch.isfinite(g).all() and g.abs().sum() > 0
    assert all(isinstance(v, float) for v in out.stats.values())


@pytest.mark.parametrize("row", [r for r in ROWS if r.problem == "map" and r.objective != "approx"], ids=_ids)
def test_scalar_counterexample(row):
    """f_k(z) = z - eps k (z - z*): dL(z*)/dk = 0 while dL(z_T)/dk matches the closed form != 0."""
    model = ScalarShrink()
    z0 = torch.tensor([[0.5], [-1.0]], dtype=torch.float64)
    y = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
    loss_fn = lambda z: 0.5 * ((z - y) ** 2).sum()  # noqa: E731
    steps = 10
    budget = steps if row.objective == "finite" else T  # equilibrium solvers get room to converge
    out = _run(row, model, z0, x=torch.zeros(2, 1, dtype=torch.float64), loss_fn=loss_fn, steps=budget)
    closed = model.finite_horizon_grad(z0, y, steps)
    assert closed.abs() > 1e-3
    if row.objective == "finite":
        torch.testing.assert_close(out.grads[0], closed, rtol=1e-10, atol=0)
    elif row.objective == "equilibrium":
        assert out.grads[0].abs() < 1e-6 * closed.abs()


def test_forward_mode_equals_reverse_mode_along_a_random_direction():
    from ponder.estimators import ForwardGradient, directional_derivative

    model = TanhMap()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    z0, params = torch.zeros(5, 8, dtype=torch.float64), list(model.parameters())
    bptt = BPTT().estimate(model, z0, x, model.loss(y), steps=15, params=params)
    v = [torch.randn_like(p) for p in params]
    loss, z_t, d = directional_derivative(model, z0, x, model.loss(y), steps=15, params=params, tangents=v)
    torch.testing.assert_close(d, sum((g * t).sum() for g, t in zip(bptt.grads, v)), rtol=1e-10, atol=0)
    torch.testing.assert_close(loss, bptt.loss)
    torch.testing.assert_close(z_t, bptt.state)
    # the estimator returns (g . v) v for the direction its seed draws
    est = ForwardGradient(seed=3)
    out = est.estimate(model, z0, x, model.loss(y), steps=15, params=params)
    v = est.sample_directions(params, torch.Generator().manual_seed(3))
    gv = sum((g * t).sum() for g, t in zip(bptt.grads, v))
    for g, t in zip(out.grads, v):
        torch.testing.assert_close(g, gv * t, rtol=1e-10, atol=1e-12)


def test_forward_gradient_is_unbiased():
    model = LinearMap(d=3, m=2, o=1)
    x, y = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
    z0, params = torch.zeros(4, 3, dtype=torch.float64), list(model.parameters())
    bptt = BPTT().estimate(model, z0, x, model.loss(y), steps=6, params=params).grads
    avg = ESTIMATORS.get("forward_gradient")(directions=400, seed=0).estimate(
        model, z0, x, model.loss(y), steps=6, params=params).grads
    a, b = torch.cat([g.flatten() for g in avg]), torch.cat([g.flatten() for g in bptt])
    assert (a @ b / (a.norm() * b.norm())).item() > 0.9  # 18 parameters, 400 draws: rel. sd ~ 0.2


def test_forward_mode_finds_the_module_and_refuses_without_one():
    model = TanhMap()
    params = list(model.parameters())
    z0, x = torch.zeros(2, 8, dtype=torch.float64), torch.ones(2, 4, dtype=torch.float64)
    w = torch.randn(8, 8, dtype=torch.float64, requires_grad=True)
    with pytest.raises(PonderError, match="nn.Module"):
        ESTIMATORS.get("rtrl")().estimate(lambda z, x: torch.tanh(z @ w.T + 1), z0, x, lambda z: z.sum(), steps=2,
                                          params=[w])
    with pytest.raises(PonderError, match="neither a parameter"):
        ESTIMATORS.get("rtrl")().estimate(model, z0, x, lambda z: z.sum(), steps=2, params=[w])
    ref = BPTT().estimate(model, z0, x, lambda z: z.sum(), steps=3, params=params).grads
    closure = lambda z, x: model(z, x)  # noqa: E731  (a closure over the model)
    named = lambda z, x: model(z, x)  # noqa: E731
    named.module = model  # or a callable naming its module
    for fn in (closure, named, model.forward):
        out = ESTIMATORS.get("rtrl")().estimate(fn, z0, x, lambda z: z.sum(), steps=3, params=params)
        for g, r in zip(out.grads, ref):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    with pytest.raises(PonderError, match="max_params"):
        ESTIMATORS.get("rtrl")(max_params=10).estimate(model, z0, x, lambda z: z.sum(), steps=2, params=params)


def test_forward_mode_with_the_input_among_the_differentiated_tensors():
    """An input leaf listed in params (to train an embedding through it) gets its gradient too."""
    from ponder.estimators import directional_derivative

    model = TanhMap()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 3, dtype=torch.float64)
    z0, params = torch.zeros(3, 8, dtype=torch.float64), [model.W, x]
    ref = BPTT().estimate(model, z0, x, model.loss(y), steps=5, params=params).grads
    out = ESTIMATORS.get("rtrl")().estimate(model, z0, x, model.loss(y), steps=5, params=params).grads
    for g, r in zip(out, ref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    v = [torch.randn_like(p) for p in params]
    d = directional_derivative(model, z0, x, model.loss(y), steps=5, params=params, tangents=v)[2]
    torch.testing.assert_close(d, sum((g * t).sum() for g, t in zip(ref, v)), rtol=1e-10, atol=0)


def test_forward_mode_reports_ops_without_forward_ad_as_not_applicable():
    from ponder.estimators import NotApplicable

    class Square(torch.autograd.Function):  # old-style: no setup_context, no jvp
        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a)
            return a * a

        @staticmethod
        def backward(ctx, g):
            (a,) = ctx.saved_tensors
            return 2 * a * g

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(0.5, dtype=torch.float64))

        def forward(self, z, x):
            return Square.apply(self.w * z) + x

    step, z0, x = Step(), torch.zeros(2, 3, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)
    for name in ("rtrl", "forward_gradient"):
        with pytest.raises(NotApplicable, match="forward mode"):
            ESTIMATORS.get(name)().estimate(step, z0, x, lambda z: z.sum(), steps=2, params=[step.w])
    assert BPTT().estimate(step, z0, x, lambda z: z.sum(), steps=2, params=[step.w]).grads[0] != 0
