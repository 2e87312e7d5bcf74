"""Diagnostics of a step map f(z, x) at a state z: residual, spectral radius, spectral norm and
asymmetry of the step Jacobian J = df/dz. Pure functions returning named records.

Shapes: z is batch-first (b, ...); with per_sample=True every figure is per sample (the
Jacobian of a model whose samples do not interact is block diagonal), shape (b,); with
per_sample=False the whole batch is one vector and figures have shape (1,).

J^T v is one VJP through a single step (works with any autograd op). J v is computed by
`jvp_mode`: "jvp" (torch.func.jvp, exact, needs forward-mode support of every op) or "fd"
(central finite difference, two extra steps, for models whose custom ops lack forward mode).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ponder.errors import PonderError
from ponder.estimators.solvers import flat_rows

StepFn = Callable[[Tensor, Tensor], Tensor]
JVP_MODES = ("jvp", "fd")


class Linearization:
    """J v and J^T v of v -> f(z + v, x) at a fixed z, for batched directions v (shape of z)."""

    def __init__(self, step_fn: StepFn, z: Tensor, x: Tensor, jvp_mode: str = "jvp"):
        if jvp_mode not in JVP_MODES:
            raise PonderError(f"jvp_mode must be one of {', '.join(JVP_MODES)}, got {jvp_mode!r}")
        self.step_fn, self.x, self.jvp_mode = step_fn, x, jvp_mode
        self.z = z.detach()
        with torch.enable_grad():
            self._zs = self.z.clone().requires_grad_(True)
            self.fz = step_fn(self._zs, x)

    def vjp(self, v: Tensor) -> Tensor:
        """J^T v (shape of z)."""
        return torch.autograd.grad(self.fz, self._zs, v, retain_graph=True)[0].detach()

    def jvp(self, v: Tensor) -> Tensor:
        """J v (shape of z)."""
        fn = lambda z: self.step_fn(z, self.x)  # noqa: E731
        with torch.no_grad():
            if self.jvp_mode == "jvp":
                return torch.func.jvp(fn, (self.z,), (v,))[1]
            scale = torch.linalg.vector_norm(v).clamp_min(1e-30)
            eps = (1e-4 if v.dtype == torch.float32 else 1e-6) * (1.0 + torch.linalg.vector_norm(self.z)) / scale
            return (fn(self.z + eps * v) - fn(self.z - eps * v)) / (2 * eps)


def _normalize(v: Tensor, per_sample: bool) -> tuple[Tensor, Tensor]:
    rows = flat_rows(v, per_sample)
    norm = torch.linalg.vector_norm(rows, dim=1)
    return (rows / norm.clamp_min(1e-30)[:, None]).reshape(v.shape), norm


def _rows_dot(a: Tensor, b: Tensor, per_sample: bool) -> Tensor:
    return (flat_rows(a, per_sample) * flat_rows(b, per_sample)).sum(1)


@dataclass
class Residual:
    """abs: (rows,) |f(z) - z|; rel: (rows,) |f(z) - z| / |f(z)|."""

    abs: Tensor
    rel: Tensor


def fixed_point_residual(step_fn: StepFn, z: Tensor, x: Tensor, *, per_sample: bool = True) -> Residual:
    with torch.no_grad():
        fz = step_fn(z, x)
        a = torch.linalg.vector_norm(flat_rows(fz - z, per_sample), dim=1)
        return Residual(abs=a, rel=a / torch.linalg.vector_norm(flat_rows(fz, per_sample), dim=1).clamp_min(1e-30))


@dataclass
class SpectralRadius:
    """rho: (rows,) growth-rate estimate exp(mean_k log|J v_k|) over normalised iterates v_k
    (after burn-in); rayleigh: (rows,) the Rayleigh quotient v^T J v of the last iterate, the
    estimate used by common DEQ code, kept for comparison (wrong for complex top eigenvalues);
    growth: (rows, iters) the per-iteration growth |J v_k|."""

    rho: Tensor
    rayleigh: Tensor
    growth: Tensor


def spectral_radius(step_fn: StepFn, z: Tensor, x: Tensor, *, iters: int = 60, burn_in: int = 10,
                    mode: str = "vjp", per_sample: bool = True, generator: torch.Generator | None = None) -> SpectralRadius:
    """Power iteration on J (mode "jvp" or "fd") or J^T (mode "vjp", same eigenvalues) measuring
    the mean log growth of normalised iterates. Converges like O(1/iters) even when the top
    eigenvalues are a complex pair (the norm oscillates but its geometric mean is |lambda|)."""
    if iters <= burn_in:
        raise PonderError(f"spectral_radius needs iters > burn_in, got {iters} <= {burn_in}")
    if mode not in ("vjp", *JVP_MODES):
        raise PonderError(f"spectral_radius mode must be vjp, jvp or fd, got {mode!r}")
    lin = Linearization(step_fn, z, x, jvp_mode=mode if mode != "vjp" else "jvp")
    apply = lin.vjp if mode == "vjp" else lin.jvp
    v, _ = _normalize(torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device), per_sample)
    growth = []
    rayleigh = None
    for _ in range(iters):
        w = apply(v)
        rayleigh = _rows_dot(v, w, per_sample)
        v, g = _normalize(w, per_sample)
        growth.append(g)
    growth_t = torch.stack(growth, 1)  # (rows, iters)
    rho = torch.exp(torch.log(growth_t[:, burn_in:].clamp_min(1e-300)).mean(1))
    return SpectralRadius(rho=rho, rayleigh=rayleigh, growth=growth_t)


@dataclass
class SpectralNorm:
    """sigma: (rows,) largest singular value of J, by power iteration on J^T J."""

    sigma: Tensor


def spectral_norm(step_fn: StepFn, z: Tensor, x: Tensor, *, iters: int = 30, jvp_mode: str = "jvp",
                  per_sample: bool = True, generator: torch.Generator | None = None) -> SpectralNorm:
    lin = Linearization(step_fn, z, x, jvp_mode=jvp_mode)
    v, _ = _normalize(torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device), per_sample)
    sigma = None
    for _ in range(iters):
        jv = lin.jvp(v)
        sigma = torch.linalg.vector_norm(flat_rows(jv, per_sample), dim=1)
        v, _ = _normalize(lin.vjp(jv), per_sample)
    return SpectralNorm(sigma=sigma)


@dataclass
class JacobianAsymmetry:
    """score: (rows,) |J - J^T|_F / |J|_F (0 for a symmetric Jacobian, up to sqrt(2) for an
    antisymmetric one); asym_sq, frob_sq: the Hutchinson estimates of |J - J^T|_F^2, |J|_F^2."""

    score: Tensor
    asym_sq: Tensor
    frob_sq: Tensor


def jacobian_asymmetry(step_fn: StepFn, z: Tensor, x: Tensor, *, samples: int = 16, jvp_mode: str = "jvp",
                       per_sample: bool = True, generator: torch.Generator | None = None) -> JacobianAsymmetry:
    """Hutchinson: E|(J - J^T) v|^2 = |J - J^T|_F^2 and E|J v|^2 = |J|_F^2 for v ~ N(0, I)."""
    lin = Linearization(step_fn, z, x, jvp_mode=jvp_mode)
    asym = frob = 0.0
    for _ in range(samples):
        v = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
        jv = lin.jvp(v)
        asym = asym + torch.linalg.vector_norm(flat_rows(jv - lin.vjp(v), per_sample), dim=1) ** 2 / samples
        frob = frob + torch.linalg.vector_norm(flat_rows(jv, per_sample), dim=1) ** 2 / samples
    return JacobianAsymmetry(score=torch.sqrt(asym / frob.clamp_min(1e-300)), asym_sq=asym, frob_sq=frob)

