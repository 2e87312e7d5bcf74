"""Small iterative problems with known gradients, for conformance tests and benchmarks.

- `LinearMap`: z <- A z + B x (contractive A), readout y_hat = C z. Closed forms for the
  fixed point z* = (I - A)^-1 B x and the implicit gradient via lambda = (I - A)^-T g.
- `ScalarShrink`: f_k(z) = z - eps k (z - z_star): the fixed point does not depend on k, so the
  equilibrium gradient dL(z*)/dk is 0, while dL(z_T)/dk = (z_T - y) T (1 - eps k)^(T-1) (-eps)(z0 - z_star).
- `TanhMap`: z <- tanh(W z + U x + b), a generic nonlinear contractive step with a readout.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def _scaled(shape: tuple[int, ...], norm: float, gen: torch.Generator, dtype: torch.dtype) -> Tensor:
    w = torch.randn(*shape, generator=gen, dtype=dtype)
    return w * (norm / torch.linalg.matrix_norm(w, ord=2))


class LinearMap(nn.Module):
    """z_{t+1} = A z_t + B x, states (b, d), inputs (b, m), readout C (o, d); |A|_2 = rho."""

    def __init__(self, d: int = 6, m: int = 3, o: int = 2, rho: float = 0.6, seed: int = 0,
                 dtype: torch.dtype = torch.float64):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(_scaled((d, d), rho, gen, dtype))
        self.B = nn.Parameter(torch.randn(d, m, generator=gen, dtype=dtype))
        self.C = nn.Parameter(torch.randn(o, d, generator=gen, dtype=dtype))

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return z @ self.A.T + x @ self.B.T

    def loss(self, y: Tensor):
        """L(z) = 1/2 sum (C z - y)^2 over the batch; y (b, o)."""
        return lambda z: 0.5 * ((z @ self.C.T - y) ** 2).sum()

    def fixed_point(self, x: Tensor) -> Tensor:
        eye = torch.eye(self.A.shape[0], dtype=self.A.dtype)
        return torch.linalg.solve(eye - self.A, (x @ self.B.T).T).T.detach()  # (b, d)

    def implicit_grads(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Exact dL(z*)/d(A, B, C) from lambda = (I - J)^-T g with J = A."""
        with torch.no_grad():
            zs = self.fixed_point(x)
            resid = zs @ self.C.T - y  # (b, o)
            g = resid @ self.C  # (b, d) = dL/dz*
            eye = torch.eye(self.A.shape[0], dtype=self.A.dtype)
            lam = torch.linalg.solve((eye - self.A).T, g.T).T  # (b, d)
            return lam.T @ zs, lam.T @ x, resid.T @ zs


class ScalarShrink(nn.Module):
    """f_k(z) = z - eps k (z - z_star) on states (b, 1); parameter k (scalar)."""

    def __init__(self, k: float = 1.0, eps: float = 0.3, z_star: float = 2.0, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k, dtype=dtype))
        self.eps = eps
        self.z_star = z_star

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return z - self.eps * self.k * (z - self.z_star)

    def finite_horizon_grad(self, z0: Tensor, y: Tensor, steps: int) -> Tensor:
        """Closed-form d/dk of L(z_T) = 1/2 sum (z_T - y)^2."""
        with torch.no_grad():
            q = 1.0 - self.eps * self.k
            z_t = self.z_star + q ** steps * (z0 - self.z_star)
            return ((z_t - y) * steps * q ** (steps - 1) * (-self.eps) * (z0 - self.z_star)).sum()


class TanhMap(nn.Module):
    """z_{t+1} = tanh(z W^T + x U^T + b), states (b, d), inputs (b, m), readout C (o, d)."""

    def __init__(self, d: int = 8, m: int = 4, o: int = 3, rho: float = 0.7, seed: int = 0,
                 dtype: torch.dtype = torch.float64):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(_scaled((d, d), rho, gen, dtype))
        self.U = nn.Parameter(torch.randn(d, m, generator=gen, dtype=dtype))
        self.b = nn.Parameter(0.1 * torch.randn(d, generator=gen, dtype=dtype))
        self.C = nn.Parameter(torch.randn(o, d, generator=gen, dtype=dtype))

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return torch.tanh(z @ self.W.T + x @ self.U.T + self.b)

    def loss(self, y: Tensor):
        return lambda z: 0.5 * ((z @ self.C.T - y) ** 2).sum()
