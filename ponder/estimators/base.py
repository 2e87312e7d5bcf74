"""The gradient-estimator protocol: one interface for every way of differentiating an iteration.

An iterative model is a step map z_{t+1} = f(z_t, x; theta) run from z_0, and a loss L(z) read
at the state the estimator considers final (z_T for finite-horizon estimators, z* for
equilibrium ones). An estimator runs the forward iteration and returns the gradient of ITS
objective with respect to `params`:

    rollout = estimator.estimate(step_fn, z0, x, loss_fn, steps=T, params=params)
    for p, g in zip(params, rollout.grads): p.grad = g

Gradients are returned, not accumulated into `.grad`, so two estimators can be compared on the
same batch without interfering (see ponder.dynamics.compare_gradients).

Args of `estimate`:
    step_fn: (z, x) -> z_next, same shape as z; closes over the parameters in `params`.
    z0: starting state (any shape; batch-first when per-sample statistics are reported).
    x: input, passed unchanged to every step_fn call.
    loss_fn: z -> scalar loss (reads the final state).
    steps: T, the deployed number of steps (a cap on iterations for equilibrium solvers).
    params: the tensors to differentiate (requires_grad=True).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Protocol, Sequence

import torch
from torch import Tensor

from ponder.core.errors import PonderError
from ponder.core.registry import Registry

StepFn = Callable[[Tensor, Tensor], Tensor]
LossFn = Callable[[Tensor], Tensor]


@dataclass
class Rollout:
    """What an estimator returns.

    Attributes:
        state: the final state it differentiated at (z_T or the solved z*), detached.
        loss: the loss at that state (scalar, detached).
        grads: one gradient per entry of `params` (zeros where the objective does not depend on it).
        stats: named figures (residuals, solver iterations, ...), plain floats.
    """

    state: Tensor
    loss: Tensor
    grads: tuple[Tensor, ...]
    stats: dict[str, float] = field(default_factory=dict)


class GradientEstimator(Protocol):
    """An estimator is a dataclass whose fields are its settings (declared with
    ponder.core.settings.setting, so they are range-checked) and whose class attribute `name` is its
    registry key."""

    name: ClassVar[str]

    def estimate(self, step_fn: StepFn, z0: Tensor, x: Tensor, loss_fn: LossFn, *, steps: int,
                 params: Sequence[Tensor]) -> Rollout: ...


ESTIMATORS: Registry = Registry("estimator")


class NotApplicable(PonderError):
    """This estimator cannot differentiate this step (EP without an energy, forward mode through
    ops without forward-mode support, ...): callers comparing estimators report it as n/a."""


def grads_or_zeros(out: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """torch.autograd.grad with zeros (not None) for parameters `out` does not depend on."""
    gs = torch.autograd.grad(out, list(params), allow_unused=True)
    return tuple(torch.zeros_like(p) if g is None else g for p, g in zip(params, gs))


@dataclass
class BPTT:
    """Full backpropagation through the T deployed steps: the exact gradient of L(z_T)."""

    name: ClassVar[str] = "bptt"

    def estimate(self, step_fn: StepFn, z0: Tensor, x: Tensor, loss_fn: LossFn, *, steps: int,
                 params: Sequence[Tensor]) -> Rollout:
        z = z0
        for _ in range(steps):
            z = step_fn(z, x)
        loss = loss_fn(z)
        return Rollout(state=z.detach(), loss=loss.detach(), grads=grads_or_zeros(loss, params))


ESTIMATORS.add("bptt", BPTT)
