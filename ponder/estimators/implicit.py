"""Implicit (fixed-point adjoint) gradient: the exact gradient of L(z*) at the equilibrium.

Forward: solve z* = f(z*, x) (plain iteration or Anderson, per-sample stopping, best-residual
iterate kept). Backward: with J = df/dz and F_theta = df/dtheta at z*, and g = dL/dz*, solve the
adjoint system

    lambda = J^T lambda + g        i.e.  (I - J^T) lambda = g

by fixed-point iteration (needs rho(J) < 1), Anderson, or GMRES (needs only I - J non-singular),
each matrix product being one VJP through a single step f(z*). Then dL/dtheta = F_theta^T lambda
(one more VJP) plus any direct dependence of L on theta. Memory does not grow with the number of
forward iterations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import Tensor

from ponder.core.errors import PonderError
from ponder.core.settings import setting
from ponder.estimators.base import ESTIMATORS, LossFn, Rollout, StepFn
from ponder.estimators.solvers import FIXED_POINT_METHODS, SolveResult, dtype_floor, flat_rows, gmres, solve_fixed_point

ADJOINT_METHODS = ("fixed_point", "anderson", "gmres")


def _zeros_for_none(grads: Sequence[Tensor | None], like: Sequence[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, like)]


@dataclass
class Implicit:
    """Equilibrium gradient by the implicit function theorem.

    Settings:
        solver: forward solver, "fixed_point" or "anderson".
        tol: forward stopping threshold on the per-sample relative residual |f(z)-z|/|f(z)|.
        max_iter: forward cap; None uses `steps`.
        adjoint: "fixed_point", "anderson" or "gmres".
        adjoint_tol, adjoint_max_iter: stopping of the adjoint solve (relative residual).
        Both tolerances are floored at 10 machine epsilons of the state's dtype (float32: 1.2e-6).
        anderson_m: Anderson memory (forward and adjoint); gmres_restart: Krylov space size.
        per_sample: one system per sample (samples must not interact inside f); False treats the
            whole batch as one vector.
    Stats: fwd_abs_residual_{mean,max}, fwd_rel_residual_{mean,max}, fwd_iters_{mean,max},
        adj_rel_residual_{mean,max}, adj_iters_{mean,max}.
    """

    name: ClassVar[str] = "implicit"
    solver: str = setting("anderson", choices=FIXED_POINT_METHODS)
    tol: float = setting(1e-6, gt=0)
    max_iter: int | None = setting(None, ge=1)
    adjoint: str = setting("gmres", choices=ADJOINT_METHODS)
    adjoint_tol: float = setting(1e-8, gt=0)
    adjoint_max_iter: int = setting(100, ge=1)
    anderson_m: int = setting(5, ge=1)
    gmres_restart: int = setting(30, ge=1)
    per_sample: bool = True

    def __post_init__(self) -> None:
        if self.solver not in FIXED_POINT_METHODS:
            raise PonderError(f"implicit.solver must be one of {', '.join(FIXED_POINT_METHODS)}, got {self.solver!r}")
        if self.adjoint not in ADJOINT_METHODS:
            raise PonderError(f"implicit.adjoint must be one of {', '.join(ADJOINT_METHODS)}, got {self.adjoint!r}")

    def estimate(self, step_fn: StepFn, z0: Tensor, x: Tensor, loss_fn: LossFn, *, steps: int,
                 params: Sequence[Tensor]) -> Rollout:
        params = list(params)
        cap = self.max_iter if self.max_iter is not None else steps
        with torch.no_grad():
            fwd = solve_fixed_point(lambda z: step_fn(z, x), z0, max_iter=cap, tol=dtype_floor(self.tol, z0.dtype),
                                    method=self.solver, per_sample=self.per_sample, m=self.anderson_m)
        zs = fwd.z.detach().requires_grad_(True)
        fz = step_fn(zs, x)
        loss = loss_fn(zs)
        g_z, *direct = torch.autograd.grad(loss, [zs, *params], allow_unused=True)
        if g_z is None:
            g_z = torch.zeros_like(zs)
        lam, adj = self.solve_adjoint(fz, zs, g_z)
        f_grads = torch.autograd.grad(fz, params, lam, allow_unused=True) if params else []
        grads = tuple(a + b for a, b in zip(_zeros_for_none(f_grads, params), _zeros_for_none(direct, params)))
        stats = {
            "fwd_abs_residual_mean": fwd.abs_residual.mean().item(),
            "fwd_abs_residual_max": fwd.abs_residual.max().item(),
            "fwd_rel_residual_mean": fwd.rel_residual.mean().item(),
            "fwd_rel_residual_max": fwd.rel_residual.max().item(),
            "fwd_iters_mean": fwd.iters.float().mean().item(),
            "fwd_iters_max": float(fwd.iters.max().item()),
            "adj_rel_residual_mean": adj.rel_residual.mean().item(),
            "adj_rel_residual_max": adj.rel_residual.max().item(),
            "adj_iters_mean": adj.iters.float().mean().item(),
            "adj_iters_max": float(adj.iters.max().item()),
        }
        return Rollout(state=fwd.z.detach(), loss=loss.detach(), grads=grads, stats=stats)

    def solve_adjoint(self, fz: Tensor, zs: Tensor, g_z: Tensor) -> tuple[Tensor, SolveResult]:
        """Solve lambda = J^T lambda + g with J = d fz / d zs (graph kept). Returns lambda (shape of
        zs) and a SolveResult whose residual is the true |lambda - J^T lambda - g| / |g| per row."""
        shape = zs.shape

        def vjp_rows(v: Tensor) -> Tensor:
            out = torch.autograd.grad(fz, zs, v.reshape(shape), retain_graph=True)[0]
            return flat_rows(out, self.per_sample)

        g_rows = flat_rows(g_z, self.per_sample).detach()
        tol = dtype_floor(self.adjoint_tol, g_rows.dtype)
        if self.adjoint == "gmres":
            res = gmres(lambda v: v - vjp_rows(v), g_rows, max_iter=self.adjoint_max_iter,
                        tol=tol, restart=self.gmres_restart)
            lam_rows = res.z
        else:
            res = solve_fixed_point(lambda v: vjp_rows(v) + g_rows, torch.zeros_like(g_rows),
                                    max_iter=self.adjoint_max_iter, tol=tol,
                                    method=self.adjoint, per_sample=True, m=self.anderson_m)
            lam_rows = res.z
            true = torch.linalg.vector_norm(lam_rows - vjp_rows(lam_rows) - g_rows, dim=1)
            res.abs_residual = true
            res.rel_residual = true / torch.linalg.vector_norm(g_rows, dim=1).clamp_min(1e-30)
        return lam_rows.reshape(shape), res


ESTIMATORS.add("implicit", Implicit)
