"""Batched solvers for fixed points and for the adjoint linear system, with per-sample stopping.

States are handled as flat rows: a state of shape (b, ...) becomes (b, D) (one system per
sample, valid when samples do not interact) or, with per_sample=False, (1, b*D) (one system).

- `solve_fixed_point(fn, z0, ...)`: z = fn(z) by plain iteration or Anderson acceleration.
  A sample stops when its relative residual |fn(z) - z| / |fn(z)| falls below `tol`; the iterate
  with the smallest residual seen is returned per sample (not merely the last one).
- `gmres(matvec, rhs, ...)`: restarted GMRES for A x = rhs, one Krylov space per row, with the
  matrix applied to all rows at once (for the adjoint, A v = v - J^T v is one batched VJP).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ponder.core.errors import PonderError

FIXED_POINT_METHODS = ("fixed_point", "anderson")
_TINY = 1e-30


def dtype_floor(tol: float, dtype: torch.dtype) -> float:
    """tol, but at least 10 machine epsilons of dtype (float32: 1.2e-6): tighter tolerances
    cannot be met reliably and would only run every solve to its cap."""
    return max(tol, 10.0 * torch.finfo(dtype).eps)


def flat_rows(z: Tensor, per_sample: bool = True) -> Tensor:
    """(b, ...) -> (b, D) when per_sample (and z has a batch dimension), else (1, numel)."""
    if not per_sample or z.dim() == 0:
        return z.reshape(1, -1)
    return z.reshape(z.shape[0], -1)


@dataclass
class SolveResult:
    """Result of a batched solve.

    Attributes:
        z: solution, same shape as the input state.
        abs_residual: (rows,) |fn(z) - z| (fixed point) or |A z - rhs| (linear), per row.
        rel_residual: (rows,) abs_residual / |fn(z)| (fixed point) or / |rhs| (linear).
        iters: (rows,) int64, function applications (or matvecs) while the row was still active.
    """

    z: Tensor
    abs_residual: Tensor
    rel_residual: Tensor
    iters: Tensor


def solve_fixed_point(fn: Callable[[Tensor], Tensor], z0: Tensor, *, max_iter: int, tol: float,
                      method: str = "anderson", per_sample: bool = True, m: int = 5,
                      beta: float = 1.0, lam: float = 1e-8) -> SolveResult:
    """Find z = fn(z) starting from z0 (any shape, batch-first).

    Args:
        fn: the map, shape-preserving; evaluated on the whole batch each iteration.
        max_iter: cap on evaluations of fn.
        tol: per-row stopping threshold on the relative residual (0 = run max_iter evaluations;
            callers floor it with `dtype_floor`).
        method: "fixed_point" (z <- fn(z)) or "anderson" (type-II Anderson with memory m,
            mixing beta, Tikhonov regularisation lam relative to the Gram matrix scale).
    """
    if method not in FIXED_POINT_METHODS:
        raise PonderError(f"unknown fixed-point solver {method!r}; valid: {', '.join(FIXED_POINT_METHODS)}")
    if max_iter < 1:
        raise PonderError(f"solver max_iter must be >= 1, got {max_iter}")
    shape = z0.shape
    z = flat_rows(z0, per_sample).clone()
    rows = z.shape[0]
    best_z = z.clone()
    best_abs = torch.full((rows,), float("inf"), dtype=z.real.dtype, device=z.device)
    best_rel = best_abs.clone()
    iters = torch.zeros(rows, dtype=torch.long, device=z.device)
    active = torch.ones(rows, dtype=torch.bool, device=z.device)
    hist_x: list[Tensor] = []
    hist_f: list[Tensor] = []
    for _ in range(max_iter):
        fz = flat_rows(fn(z.reshape(shape)), per_sample)
        res = torch.linalg.vector_norm(fz - z, dim=1)  # (rows,)
        rel = res / torch.linalg.vector_norm(fz, dim=1).clamp_min(_TINY)
        better = active & (rel < best_rel)
        best_z[better] = z[better]
        best_abs = torch.where(better, res, best_abs)
        best_rel = torch.where(better, rel, best_rel)
        iters += active.long()
        active = active & (rel >= tol)
        if not bool(active.any()):
            break
        if method == "fixed_point":
            z_new = fz
        else:
            hist_x.append(z)
            hist_f.append(fz)
            if len(hist_x) > m:
                hist_x.pop(0)
                hist_f.pop(0)
            z_new = _anderson_step(torch.stack(hist_x, 1), torch.stack(hist_f, 1), beta, lam)
        z = torch.where(active[:, None], z_new, z)
    return SolveResult(z=best_z.reshape(shape), abs_residual=best_abs, rel_residual=best_rel, iters=iters)


def _anderson_step(xs: Tensor, fs: Tensor, beta: float, lam: float) -> Tensor:
    """One Anderson update from histories xs, fs (rows, n, D): weights alpha minimise
    |sum_i alpha_i (f_i - x_i)| subject to sum alpha = 1."""
    g = fs - xs  # (rows, n, D)
    n = g.shape[1]
    gram = g.conj() @ g.transpose(1, 2)  # (rows, n, n), Hermitian: complex states work too
    scale = gram.diagonal(dim1=1, dim2=2).real.mean(1).clamp_min(_TINY)  # (rows,)
    gram = gram + (lam * scale)[:, None, None] * torch.eye(n, dtype=g.dtype, device=g.device)
    ones = torch.ones(g.shape[0], n, 1, dtype=g.dtype, device=g.device)
    sol, info = torch.linalg.solve_ex(gram, ones)  # (rows, n, 1); info != 0: singular (converged rows)
    alpha = sol / sol.sum(1, keepdim=True)
    mixed_f = (alpha * fs).sum(1)
    mixed_x = (alpha * xs).sum(1)
    out = beta * mixed_f + (1.0 - beta) * mixed_x
    ok = torch.isfinite(out).all(1, keepdim=True) & (info == 0)[:, None]
    return torch.where(ok, out, fs[:, -1])  # a plain fixed-point step where the mix is undefined


def gmres(matvec: Callable[[Tensor], Tensor], rhs: Tensor, *, max_iter: int, tol: float,
          restart: int = 30) -> SolveResult:
    """Restarted GMRES for A x = rhs on rows: rhs (rows, D), matvec maps (rows, D) -> (rows, D)
    row by row. Starts from x = 0; a row stops counting iterations once its relative residual
    |A x - rhs| / |rhs| (the GMRES estimate) is below tol; stops when all rows have."""
    if max_iter < 1 or restart < 1:
        raise PonderError(f"gmres needs max_iter >= 1 and restart >= 1, got {max_iter}, {restart}")
    rows, dim = rhs.shape
    x = torch.zeros_like(rhs)
    rhs_norm = torch.linalg.vector_norm(rhs, dim=1).clamp_min(_TINY)
    iters = torch.zeros(rows, dtype=torch.long, device=rhs.device)
    rel = torch.linalg.vector_norm(rhs, dim=1) / rhs_norm
    active = rel > tol
    done = 0
    while done < max_iter and bool(active.any()):
        r = rhs - matvec(x)
        beta = torch.linalg.vector_norm(r, dim=1)  # (rows,)
        basis = [r / beta.clamp_min(_TINY)[:, None]]
        cycle = min(restart, max_iter - done)
        h = torch.zeros(rows, cycle + 1, cycle, dtype=rhs.dtype, device=rhs.device)
        y = torch.zeros(rows, 0, 1, dtype=rhs.dtype, device=rhs.device)
        for j in range(cycle):
            w = matvec(basis[j])
            for i in range(j + 1):  # modified Gram-Schmidt, then one re-orthogonalisation pass
                c = (w * basis[i]).sum(1)
                h[:, i, j] += c
                w = w - c[:, None] * basis[i]
            for i in range(j + 1):
                c = (w * basis[i]).sum(1)
                h[:, i, j] += c
                w = w - c[:, None] * basis[i]
            norm = torch.linalg.vector_norm(w, dim=1)
            h[:, j + 1, j] = norm
            safe = norm > 1e-14 * beta.clamp_min(_TINY)
            basis.append(torch.where(safe[:, None], w / norm.clamp_min(_TINY)[:, None], torch.zeros_like(w)))
            e1 = torch.zeros(rows, j + 2, 1, dtype=rhs.dtype, device=rhs.device)
            e1[:, 0, 0] = beta
            hj = h[:, : j + 2, : j + 1]
            # gelsd (SVD) on CPU: the default gelsy gave run-to-run differences of ~1e-7 in float32
            y = torch.linalg.lstsq(hj, e1, driver="gelsd" if hj.device.type == "cpu" else None).solution  # (rows, j+1, 1)
            res = torch.linalg.vector_norm((e1 - hj @ y)[..., 0], dim=1)
            rel = res / rhs_norm
            iters += active.long()
            done += 1
            active = active & (rel > tol)
            if not bool(active.any()):
                break
        x = x + (y * torch.stack(basis[: y.shape[1]], 1)).sum(1)
    final = torch.linalg.vector_norm(matvec(x) - rhs, dim=1)
    return SolveResult(z=x, abs_residual=final, rel_residual=final / rhs_norm, iters=iters)
