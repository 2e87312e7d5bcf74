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

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ponder.core.errors import PonderError
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


DEFAULT_RHO_TOL = 1e-2  # rel_change up to which `converged` is set when no adaptive tol is given
MIN_POST_BURN_IN = 30  # post-burn-in iterations before the adaptive stop may fire
SLIDING_WINDOWS = 5  # windows of 2/3 of the post-burn-in iterations whose spread is rel_change


@dataclass
class SpectralRadius:
    """Spectral-radius estimate of J and whether it has settled; rows = b with per_sample=True,
    else 1.

    rho: (rows,) growth rate of the normalised power iterates: exp of the Hann-weighted mean of
        log|J v_k| over the iterations after burn-in (`spectral_radius` says why weighted);
    rayleigh: (rows,) the Rayleigh quotient v^T J v of the last iterate, the estimate of common
        DEQ code, kept only to show its failure (wrong for complex top eigenvalues);
    growth: (rows, iters) the growth |J v_k| of every iteration run;
    rel_change: (rows,) (max - min) / rho over the same estimate on SLIDING_WINDOWS windows of
        2/3 of the post-burn-in iterations, from the first such window to the last (inf with
        fewer than 3 post-burn-in iterations): how much the estimate still depends on where
        the window sits. A windowed estimate has several times the error of rho, so on maps
        whose iterates settle this over-states rho's error (measured: error 2-10x below it);
    converged: (rows,) bool, rel_change <= tol (the adaptive `tol` when given, else
        DEFAULT_RHO_TOL = 1%);
    iters: iterations run (below the cap `iters` when the adaptive stop fired)."""

    rho: Tensor
    rayleigh: Tensor
    growth: Tensor
    rel_change: Tensor
    converged: Tensor
    iters: int


def _hann_mean(x: Tensor) -> Tensor:
    """(rows, m) -> (rows,): the mean over the last axis with Hann weights sin^2(pi (k + 1/2) / m)."""
    m = x.shape[1]
    w = torch.sin(math.pi * (torch.arange(m, dtype=x.dtype, device=x.device) + 0.5) / m) ** 2
    return (x * w).sum(1) / w.sum()


def _rho_and_change(log_growth: Tensor, burn_in: int) -> tuple[Tensor, Tensor]:
    """log_growth (rows, n) -> rho (rows,), rel_change (rows,) of SpectralRadius: rho from the
    m = n - burn_in post-burn-in samples, rel_change from windows of 2m/3 of them."""
    post = log_growth[:, burn_in:]
    m = post.shape[1]
    rho = torch.exp(_hann_mean(post))
    length = (2 * m) // 3
    if length < 2:
        return rho, torch.full_like(rho, math.inf)
    starts = sorted({round(j * (m - length) / (SLIDING_WINDOWS - 1)) for j in range(SLIDING_WINDOWS)})
    windows = torch.exp(torch.stack([_hann_mean(post[:, s:s + length]) for s in starts], 1))  # (rows, <=5)
    return rho, (windows.max(1).values - windows.min(1).values) / rho.clamp_min(torch.finfo(rho.dtype).tiny)


def spectral_radius(step_fn: StepFn, z: Tensor, x: Tensor, *, iters: int = 100, burn_in: int = 10,
                    mode: str = "vjp", per_sample: bool = True, generator: torch.Generator | None = None,
                    tol: float | None = None) -> SpectralRadius:
    """Spectral radius of J = df/dz at z by power iteration on J (mode "jvp" or "fd") or J^T
    (mode "vjp", the same eigenvalues): rho = exp(Hann-weighted mean of log|J v_k|) over the
    normalised iterates v_k after `burn_in` iterations. Runs `iters` iterations; with `tol`,
    `iters` is a cap and the run stops at the first iteration (at least MIN_POST_BURN_IN after
    burn-in) where every row's rel_change <= tol (see SpectralRadius for rel_change, converged).

    Why weighted. When the top eigenvalues are a complex pair r e^{+-i theta}, the iterate turns
    by theta a step in their invariant plane: log|J v_k| = log r + h(phase_{k+1}) - h(phase_k),
    with h the log-norm of a unit-phase vector in that plane. For a normal J, h is constant; for
    a non-normal J (eigenvector basis not orthogonal), h oscillates with amplitude up to the log
    of the basis' condition number. The plain mean over m iterations telescopes to log r +
    (h_end - h_start)/m, an O(log cond / m) bias: up to 7% after 30 post-burn-in iterations on
    the cond-25 map of tests/test_dynamics.py. Weights that vanish smoothly at both ends of the
    window (Hann, a weighted Birkhoff average) cancel a periodic term of frequency w (distance of
    a harmonic k theta to a multiple of 2 pi) to O(1/(m^3 w^2)) instead, and also down-weight
    the first iterations, where the subdominant directions still decay. Resolving a harmonic
    near resonance needs m >~ 4 pi / w: on that map 4 theta = 2 pi - 0.28, hence ~60 iterations
    for 1% and ~80 for 0.1%, which the adaptive stop finds by itself.

    Not detected: a stall, where the top two moduli are close (ratio near 1) and the iterates
    look settled on the second one, nor the slow 1/k drift of a defective top eigenvalue."""
    if iters <= burn_in:
        raise PonderError(f"spectral_radius needs iters > burn_in, got {iters} <= {burn_in}")
    if mode not in ("vjp", *JVP_MODES):
        raise PonderError(f"spectral_radius mode must be vjp, jvp or fd, got {mode!r}")
    if tol is not None and not tol > 0:
        raise PonderError(f"spectral_radius tol must be > 0 or None, got {tol!r}")
    lin = Linearization(step_fn, z, x, jvp_mode=mode if mode != "vjp" else "jvp")
    apply = lin.vjp if mode == "vjp" else lin.jvp
    # probes drawn on the CPU (a CPU generator), then moved: the same probe on every device
    v, _ = _normalize(torch.randn(z.shape, generator=generator, dtype=z.dtype, device="cpu").to(z.device), per_sample)
    tiny = torch.finfo(z.dtype).tiny  # log(0) guard that is representable in float32
    growth: list[Tensor] = []
    rayleigh = None
    for n in range(1, iters + 1):
        w = apply(v)
        rayleigh = _rows_dot(v, w, per_sample)
        v, g = _normalize(w, per_sample)
        growth.append(g)
        if tol is not None and n < iters and n - burn_in >= MIN_POST_BURN_IN:
            _, change = _rho_and_change(torch.log(torch.stack(growth, 1).clamp_min(tiny)), burn_in)
            if bool((change <= tol).all()):
                break
    growth_t = torch.stack(growth, 1)  # (rows, iters run)
    rho, change = _rho_and_change(torch.log(growth_t.clamp_min(tiny)), burn_in)
    return SpectralRadius(rho=rho, rayleigh=rayleigh, growth=growth_t, rel_change=change,
                          converged=change <= (tol if tol is not None else DEFAULT_RHO_TOL), iters=len(growth))


@dataclass
class SpectralNorm:
    """sigma: (rows,) largest singular value of J, by power iteration on J^T J."""

    sigma: Tensor


def spectral_norm(step_fn: StepFn, z: Tensor, x: Tensor, *, iters: int = 30, jvp_mode: str = "jvp",
                  per_sample: bool = True, generator: torch.Generator | None = None) -> SpectralNorm:
    lin = Linearization(step_fn, z, x, jvp_mode=jvp_mode)
    v, _ = _normalize(torch.randn(z.shape, generator=generator, dtype=z.dtype, device="cpu").to(z.device), per_sample)
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
        v = torch.randn(z.shape, generator=generator, dtype=z.dtype, device="cpu").to(z.device)
        jv = lin.jvp(v)
        asym = asym + torch.linalg.vector_norm(flat_rows(jv - lin.vjp(v), per_sample), dim=1) ** 2 / samples
        frob = frob + torch.linalg.vector_norm(flat_rows(jv, per_sample), dim=1) ** 2 / samples
    return JacobianAsymmetry(score=torch.sqrt(asym / frob.clamp_min(1e-300)), asym_sq=asym, frob_sq=frob)

