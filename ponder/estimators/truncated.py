"""Truncated backpropagation (k last steps; k=1 is the 1-step / Jacobian-free gradient) and damped
phantom gradients.

Both run most of the iteration without a graph, so memory is O(k) instead of O(T).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import Tensor

from ponder.core.errors import PonderError
from ponder.core.settings import setting
from ponder.estimators.base import ESTIMATORS, LossFn, Rollout, StepFn, grads_or_zeros


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise PonderError(f"{name} must be >= 1, got {value}")


@dataclass
class Truncated:
    """Run T-k steps without gradient, then k steps with it, and differentiate L(z_T).

    k >= T is full BPTT; k = 1 gives F_theta^T g at z_{T-1} (the 1-step / JFB gradient).
    """

    name: ClassVar[str] = "truncated"
    k: int = setting(1, ge=1)

    def estimate(self, step_fn: StepFn, z0: Tensor, x: Tensor, loss_fn: LossFn, *, steps: int,
                 params: Sequence[Tensor]) -> Rollout:
        _check_positive("truncated.k", self.k)
        k = min(self.k, steps)
        z = z0
        with torch.no_grad():
            for _ in range(steps - k):
                z = step_fn(z, x)
        z = z.detach()
        for _ in range(k):
            z = step_fn(z, x)
        loss = loss_fn(z)
        return Rollout(state=z.detach(), loss=loss.detach(), grads=grads_or_zeros(loss, params),
                       stats={"graph_steps": float(k)})


@dataclass
class Phantom:
    """Damped phantom gradient: from the detached end state z_T (an approximate fixed point),
    unroll k damped steps z <- (1 - lam) z + lam f(z) with the graph and differentiate L at the end.

    The forward pass runs the T deployed steps without a graph. With lam = 1 this is truncated-k
    started at z_T. In general dz_k/dtheta = lam sum_{j<k} M^j F_theta with M = (1 - lam) I + lam J,
    a truncated Neumann series of (I - M)^-1 = (I - J)^-1 / lam, so the estimate tends to the
    implicit gradient as k grows (faster when lam is larger and J contracts); damping keeps the
    series convergent when J has eigenvalues near -1.
    """

    name: ClassVar[str] = "phantom"
    k: int = setting(5, ge=1)
    lam: float = setting(0.5, gt=0, le=1)

    def estimate(self, step_fn: StepFn, z0: Tensor, x: Tensor, loss_fn: LossFn, *, steps: int,
                 params: Sequence[Tensor]) -> Rollout:
        _check_positive("phantom.k", self.k)
        if not 0.0 < self.lam <= 1.0:
            raise PonderError(f"phantom.lam must be in (0, 1], got {self.lam}")
        z = z0
        with torch.no_grad():
            for _ in range(steps):
                z = step_fn(z, x)
        z = z.detach()
        for _ in range(self.k):
            z = (1.0 - self.lam) * z + self.lam * step_fn(z, x)
        loss = loss_fn(z)
        return Rollout(state=z.detach(), loss=loss.detach(), grads=grads_or_zeros(loss, params),
                       stats={"graph_steps": float(self.k)})


ESTIMATORS.add("truncated", Truncated)
ESTIMATORS.add("phantom", Phantom)
