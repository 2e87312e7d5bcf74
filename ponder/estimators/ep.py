"""Equilibrium propagation (EP) for energy-based models, and a small Hopfield-like model.

An energy-based model has an energy E(s; x, theta) per sample whose stationary point s* is the
prediction; `EnergyDescent(model, lr)` is its step map s <- s - lr dE/ds, usable as `step_fn`
by every estimator (BPTT, implicit, ...). EP estimates dL(s*)/dtheta from nudged equilibria
s*_beta of E + beta C (C = the loss `loss_fn`), using only dE/dtheta at equilibria:

    one-sided:   g = [dE/dtheta(s*_beta) - dE/dtheta(s*_0)] / beta             bias O(beta)
    symmetric:   g = [dE/dtheta(s*_beta) - dE/dtheta(s*_-beta)] / (2 beta)      bias O(beta^2)
    holomorphic: g = Re[(1/N) sum_k dE/dtheta(s*_beta_k) / beta_k],  beta_k = |beta| e^{2 pi i k/N}
                 (Cauchy's integral for d/dbeta at 0; error ~ (|beta|/R)^N)

(the identity: d/dbeta dE/dtheta(s*_beta) at beta = 0 equals dC(s*_0)/dtheta). It is exact in the
limit only when the dynamics' Jacobian is symmetric, which gradient descent on an energy has.
Holomorphic EP runs the relaxation with complex states, so the energy and the loss must be
holomorphic in s (polynomials, tanh, sigmoid, exp; no abs, no conj, no real-only ops).
"""
from __future__ import annotations

import cmath
import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Protocol, Sequence

import torch
from torch import Tensor, nn

from ponder.core.errors import PonderError
from ponder.core.settings import setting
from ponder.estimators.base import ESTIMATORS, LossFn, NotApplicable, Rollout, grads_or_zeros
from ponder.estimators.solvers import dtype_floor, solve_fixed_point

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,  # holomorphic away from its poles at i pi (k + 1/2)
    "sigmoid": torch.sigmoid,  # holomorphic away from i pi (2k + 1)
    "identity": lambda s: s,
}


class EnergyModel(Protocol):
    def energy(self, s: Tensor, x: Tensor) -> Tensor:
        """Per-sample energies (b,) for states s (b, d), real or complex; holomorphic in s."""
        ...


def holomorphic_grad(fn_sum: Tensor, s: Tensor, create_graph: bool = False) -> Tensor:
    """d fn / d s of a scalar fn holomorphic in s (real s: the ordinary gradient). For complex s,
    autograd of Re fn returns conj(d fn/ds), so it is conjugated back."""
    (g,) = torch.autograd.grad(fn_sum.real if fn_sum.is_complex() else fn_sum, s, create_graph=create_graph)
    return g.conj() if s.is_complex() else g


class HopfieldEnergy(nn.Module):
    """E(s; x) = 1/2 |s|^2 - 1/2 rho(s)^T W rho(s) - b^T rho(s) - rho(s)^T U x, W = (A + A^T)/2.

    States s (b, d), inputs x (b, m); the last `n_out` units are the output read by the loss.
    |A|_2 = w_scale keeps the energy's Hessian positive definite near the equilibria.
    """

    def __init__(self, d: int = 8, m: int = 4, n_out: int = 2, activation: str = "tanh", w_scale: float = 0.5,
                 seed: int = 0, dtype: torch.dtype = torch.float64):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise PonderError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
        gen = torch.Generator().manual_seed(seed)
        a = torch.randn(d, d, generator=gen, dtype=dtype)
        self.A = nn.Parameter(a * (w_scale / torch.linalg.matrix_norm(a, ord=2)))
        self.b = nn.Parameter(0.1 * torch.randn(d, generator=gen, dtype=dtype))
        self.U = nn.Parameter(torch.randn(d, m, generator=gen, dtype=dtype) / math.sqrt(m))
        self.rho = ACTIVATIONS[activation]
        self.n_out = n_out

    def energy(self, s: Tensor, x: Tensor) -> Tensor:
        dt = s.dtype
        w = (0.5 * (self.A + self.A.T)).to(dt)
        r = self.rho(s)  # (b, d)
        drive = x.to(dt) @ self.U.T.to(dt) + self.b.to(dt)  # (b, d)
        return 0.5 * (s * s).sum(1) - 0.5 * ((r @ w) * r).sum(1) - (r * drive).sum(1)

    def output(self, s: Tensor) -> Tensor:
        return s[:, -self.n_out:]


class EnergyDescent(nn.Module):
    """Step map s <- s - lr dE/ds of an energy model; a `step_fn` with `.energy` for EP.

    Differentiable in s and the parameters when grad mode is on (create_graph through dE/ds),
    so BPTT and the implicit estimator apply to it; accepts complex states (holomorphic dE/ds).
    """

    def __init__(self, model: nn.Module, lr: float = 0.5):
        super().__init__()
        if not lr > 0:
            raise PonderError(f"energy descent lr must be > 0, got {lr}")
        self.model, self.lr = model, lr

    def energy(self, s: Tensor, x: Tensor) -> Tensor:
        return self.model.energy(s, x)

    def forward(self, s: Tensor, x: Tensor) -> Tensor:
        grad_mode = torch.is_grad_enabled()
        with torch.enable_grad():
            s_in = s if s.requires_grad else s.detach().requires_grad_(True)
            g = holomorphic_grad(self.model.energy(s_in, x).sum(), s_in, create_graph=grad_mode)
        out = s - self.lr * g
        return out if grad_mode else out.detach()


EP_MODES = ("one_sided", "symmetric", "holomorphic")


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


@dataclass
class EquilibriumPropagation:
    """EP gradient estimate of dL(s*)/dtheta; step_fn must be an `EnergyDescent` (or any step
    with `.energy(s, x)` and `.lr`).

    Settings: mode (one_sided | symmetric | holomorphic), beta (|beta| for holomorphic),
    nudges (N, holomorphic only), tol / max_iter of each relaxation (Anderson on the descent
    step; max_iter None uses `steps`), anderson_m.
    Stats: free_rel_residual_max, nudged_rel_residual_max, free_iters_max, nudged_iters_max.
    """

    name: ClassVar[str] = "ep"
    mode: str = setting("symmetric", choices=EP_MODES)
    beta: float = setting(0.05, gt=0)
    nudges: int = setting(4, ge=1)
    tol: float = setting(1e-12, gt=0)
    max_iter: int | None = setting(None, ge=1)
    anderson_m: int = setting(5, ge=1)

    def __post_init__(self) -> None:
        if self.mode not in EP_MODES:
            raise PonderError(f"ep mode must be one of {', '.join(EP_MODES)}, got {self.mode!r}")
        if not self.beta > 0:
            raise PonderError(f"ep beta must be > 0, got {self.beta}")
        if self.mode == "holomorphic" and self.nudges < 2:
            raise PonderError(f"holomorphic ep needs nudges >= 2, got {self.nudges}")

    def betas(self) -> list[complex]:
        """The nudges used (the free phase beta = 0 is added for one-sided)."""
        if self.mode == "one_sided":
            return [self.beta]
        if self.mode == "symmetric":
            return [self.beta, -self.beta]
        return [self.beta * cmath.exp(2j * math.pi * k / self.nudges) for k in range(self.nudges)]

    def estimate(self, step_fn, z0: Tensor, x: Tensor, loss_fn: LossFn, *, steps: int,
                 params: Sequence[Tensor]) -> Rollout:
        if not (hasattr(step_fn, "energy") and hasattr(step_fn, "lr")):
            raise NotApplicable("equilibrium propagation needs an energy-based step (EnergyDescent); "
                                "this model's step has no energy")
        params = list(params)
        cap = self.max_iter if self.max_iter is not None else steps
        free = self._relax(step_fn, loss_fn, z0.detach(), x, 0.0, cap)
        stats = {"free_rel_residual_max": free.rel_residual.max().item(), "free_iters_max": float(free.iters.max())}
        terms: list[tuple[complex, list[Tensor]]] = []  # (weight, dE/dtheta at s*_beta)
        nudged_res, nudged_iters = 0.0, 0
        for beta in self.betas():
            start = free.z.to(_complex_dtype(free.z.dtype)) if isinstance(beta, complex) else free.z
            res = self._relax(step_fn, loss_fn, start, x, beta, cap)
            nudged_res = max(nudged_res, res.rel_residual.max().item())
            nudged_iters = max(nudged_iters, int(res.iters.max()))
            terms.append((beta, self._energy_grads(step_fn, res.z, x, params)))
        stats.update(nudged_rel_residual_max=nudged_res, nudged_iters_max=float(nudged_iters))
        if self.mode == "one_sided":
            e0 = self._energy_grads(step_fn, free.z, x, params)
            ghat = [(eb - e) / self.beta for eb, e in zip(terms[0][1], e0)]
        elif self.mode == "symmetric":
            ghat = [(a - b) / (2 * self.beta) for a, b in zip(terms[0][1], terms[1][1])]
        else:
            ghat = [sum(g[i] / beta for beta, g in terms).real / self.nudges for i in range(len(params))]
        with torch.enable_grad():
            s_free = free.z.detach()
            loss = loss_fn(s_free)
            direct = grads_or_zeros(loss, params) if loss.requires_grad else tuple(torch.zeros_like(p) for p in params)
        grads = tuple((g.to(p.dtype) + d).detach() for g, d, p in zip(ghat, direct, params))
        return Rollout(state=s_free, loss=loss.detach(), grads=grads, stats=stats)

    def _relax(self, step_fn, loss_fn: LossFn, s0: Tensor, x: Tensor, beta: complex, cap: int):
        """Stationary point of E + beta C by Anderson on s <- s - lr (dE/ds + beta dC/ds)."""

        def nudged_step(s: Tensor) -> Tensor:
            out = step_fn(s, x)
            if beta == 0:
                return out
            with torch.enable_grad():
                s_in = s.detach().requires_grad_(True)
                dc = holomorphic_grad(loss_fn(s_in), s_in)
            return out - step_fn.lr * beta * dc

        with torch.no_grad():
            return solve_fixed_point(nudged_step, s0, max_iter=cap, tol=dtype_floor(self.tol, s0.real.dtype),
                                     method="anderson", m=self.anderson_m)

    @staticmethod
    def _energy_grads(step_fn, s: Tensor, x: Tensor, params: list[Tensor]) -> list[Tensor]:
        """dE/dtheta at the state s (summed over the batch); complex if s is complex."""
        with torch.enable_grad():
            e = step_fn.energy(s.detach(), x).sum()
            if not e.is_complex():
                return list(grads_or_zeros(e, params))
            re = torch.autograd.grad(e.real, params, retain_graph=True, allow_unused=True)
            im = torch.autograd.grad(e.imag, params, allow_unused=True)
        zero = torch.zeros_like
        return [torch.complex(zero(p) if a is None else a, zero(p) if b is None else b) for a, b, p in zip(re, im, params)]


@dataclass
class EPOneSided(EquilibriumPropagation):
    name: ClassVar[str] = "ep_one_sided"
    mode: str = setting("one_sided", choices=EP_MODES)
    beta: float = setting(0.01, gt=0)


@dataclass
class EPSymmetric(EquilibriumPropagation):
    name: ClassVar[str] = "ep_symmetric"
    mode: str = setting("symmetric", choices=EP_MODES)
    beta: float = setting(0.05, gt=0)


@dataclass
class EPHolomorphic(EquilibriumPropagation):
    name: ClassVar[str] = "ep_holomorphic"
    mode: str = setting("holomorphic", choices=EP_MODES)
    beta: float = setting(0.2, gt=0)
    nudges: int = setting(4, ge=1)


ESTIMATORS.add("ep_one_sided", EPOneSided)
ESTIMATORS.add("ep_symmetric", EPSymmetric)
ESTIMATORS.add("ep_holomorphic", EPHolomorphic)
