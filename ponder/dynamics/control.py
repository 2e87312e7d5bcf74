"""Contraction control: optional loss terms that keep the step map contractive.

Each returns a differentiable scalar (already multiplied by `weight`) to add to the training
loss; the gradient flows into the step's parameters through the Jacobian J = df/dz at the
given states (states are treated as constants unless the caller passes them with a graph).

- `jacobian_frobenius_penalty`: weight * mean_b |J|_F^2 per sample, Hutchinson with one VJP
  (E|J^T v|^2 = |J|_F^2 for v ~ N(0, I)), built with create_graph=True (needs double backward;
  method="fd" uses E|J v|^2 by finite differences instead).
- `contraction_homeostat`: weight * relu(g - target), g the mean log growth log(|J_t v_t| / |v_t|)
  of a perturbation carried along a trajectory of states (v_{t+1} = J_t v_t, renormalised);
  penalises only expansion beyond exp(target) per step (target log(0.9): rho above ~0.9).
- `jacobian_asymmetry_penalty`: weight * 1/2 |J - J^T|_F^2 per sample (Hutchinson), which is
  what limits equilibrium propagation's accuracy.

J v is a JVP ("jvp": torch.func.jvp, differentiable in the parameters) or a central finite
difference ("fd", only first-order autograd needed: works with once-differentiable custom ops).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from ponder.core.errors import PonderError
from ponder.estimators.solvers import flat_rows

StepFn = Callable[[Tensor, Tensor], Tensor]


def _differentiable_jvp(step_fn: StepFn, z: Tensor, x: Tensor, v: Tensor, mode: str, eps: float) -> Tensor:
    """J v at z, differentiable in the parameters that step_fn closes over."""
    if mode == "jvp":
        return torch.func.jvp(lambda s: step_fn(s, x), (z,), (v,))[1]
    if mode == "fd":
        return (step_fn(z + eps * v, x) - step_fn(z - eps * v, x)) / (2 * eps)
    raise PonderError(f"jvp_mode must be jvp or fd, got {mode!r}")


def _probe(z: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(z.shape, generator=generator, dtype=z.dtype, device="cpu").to(z.device)


def _vjp_graph(step_fn: StepFn, z: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    zs = z if z.requires_grad else z.detach().requires_grad_(True)
    return zs, step_fn(zs, x)


def jacobian_frobenius_penalty(step_fn: StepFn, z: Tensor, x: Tensor, *, weight: float = 1.0, samples: int = 1,
                               method: str = "vjp", eps: float = 1e-3,
                               generator: torch.Generator | None = None) -> Tensor:
    """weight * (1/b) sum_b |J_b|_F^2, estimated with `samples` probes. z: (b, ...).

    method "vjp": E|J^T v|^2, one VJP with create_graph=True (the parameter gradient needs double
    backward); "fd": E|J v|^2 with J v by central differences (first-order autograd only). Use
    "fd" for models with once-differentiable custom ops (the recursive reasoner's norm, gate and
    head split): through them "vjp" does not fail but silently drops the terms of the parameter
    gradient that pass through those ops' backward."""
    if method not in ("vjp", "fd"):
        raise PonderError(f"jacobian penalty method must be vjp or fd, got {method!r}")
    if method == "vjp":
        zs, fz = _vjp_graph(step_fn, z, x)
    total = 0.0
    for _ in range(samples):
        v = _probe(z, generator)
        if method == "vjp":
            w = torch.autograd.grad(fz, zs, v, create_graph=True)[0]
        else:
            w = _differentiable_jvp(step_fn, z.detach(), x, v, "fd", eps)
        total = total + flat_rows(w).pow(2).sum(1).mean() / samples
    return weight * total


def mean_log_growth(step_fn: StepFn, states: Sequence[Tensor] | Tensor, x: Tensor, *, jvp_mode: str = "fd",
                    eps: float = 1e-3, generator: torch.Generator | None = None) -> Tensor:
    """Differentiable mean over states and samples of log |J_t v_t| for unit v_t carried along
    the trajectory `states` (a list of (b, ...) states z_0, z_1, ...; detached here)."""
    states = [states] if isinstance(states, Tensor) else list(states)
    if not states:
        raise PonderError("mean_log_growth needs at least one state")
    v = _probe(states[0], generator)
    logs = []
    for z in states:
        rows = flat_rows(v)
        v = (rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True).clamp_min(1e-30)).reshape(z.shape)
        jv = _differentiable_jvp(step_fn, z.detach(), x, v, jvp_mode, eps)
        logs.append(torch.log(torch.linalg.vector_norm(flat_rows(jv), dim=1).clamp_min(1e-30)))
        v = jv.detach()
    return torch.stack(logs).mean()


def contraction_homeostat(step_fn: StepFn, states: Sequence[Tensor] | Tensor, x: Tensor, *,
                          target: float = math.log(0.9), weight: float = 1.0, jvp_mode: str = "fd",
                          eps: float = 1e-3, generator: torch.Generator | None = None) -> Tensor:
    """weight * relu(mean_log_growth - target): zero while perturbations shrink by at least
    exp(target) per step on average, a linear push back otherwise."""
    g = mean_log_growth(step_fn, states, x, jvp_mode=jvp_mode, eps=eps, generator=generator)
    return weight * torch.relu(g - target)


def jacobian_asymmetry_penalty(step_fn: StepFn, z: Tensor, x: Tensor, *, weight: float = 1.0, samples: int = 1,
                               jvp_mode: str = "jvp", eps: float = 1e-3,
                               generator: torch.Generator | None = None) -> Tensor:
    """weight * (1/b) sum_b 1/2 |J_b - J_b^T|_F^2 by Hutchinson (E|(J - J^T) v|^2). J^T v is a
    VJP with create_graph=True: like the "vjp" Jacobian penalty it needs double backward."""
    zs, fz = _vjp_graph(step_fn, z, x)
    total = 0.0
    for _ in range(samples):
        v = _probe(z, generator)
        jtv = torch.autograd.grad(fz, zs, v, create_graph=True)[0]
        jv = _differentiable_jvp(step_fn, z.detach(), x, v, jvp_mode, eps)
        total = total + 0.5 * flat_rows(jv - jtv).pow(2).sum(1).mean() / samples
    return weight * total
