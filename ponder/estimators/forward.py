"""Forward-mode gradients of the finite-horizon loss L(z_T): exact real-time recurrent learning
(RTRL) and the random-direction forward gradient.

Both need the step as a function of its parameters, so `step_fn` must be an nn.Module owning
`params`, a bound method of one, or any callable with a `.module` attribute naming it; the
parameters are swapped with torch.func.functional_call (the loss may read them too, e.g. a
readout). Every op of the step needs forward-mode AD support.

- RTRL carries eligibility traces e_t = dz_t/dtheta (one (P_i, *z.shape) block per parameter
  tensor) with e_{t+1} = J_t e_t + df/dtheta|_t, i.e. a batch of JVPs (torch.func.vmap over
  torch.func.jvp), and returns g_z^T e_T + dL/dtheta|direct: exactly BPTT's gradient, with memory
  O(|z| P) independent of T and no backward pass through time. For small models.
- The forward gradient draws v ~ N(0, I) over all parameters, gets the directional derivative
  dL/dtheta . v from one torch.func.jvp through the T steps, and returns (dL . v) v, averaged
  over `directions` draws: unbiased, with variance growing with the number of parameters.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ponder.errors import PonderError
from ponder.estimators.base import ESTIMATORS, LossFn, Rollout, StepFn


class _Thunk(nn.Module):
    """Runs a zero-argument callable while torch.func.functional_call has swapped `inner`'s
    parameters."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, thunk: Callable[[], object]) -> object:
        return thunk()


@dataclass
class ParamBinding:
    """Names of `params` inside the module owning them, for functional calls."""

    module: nn.Module
    names: list[str]
    _wrapper: _Thunk = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._wrapper = _Thunk(self.module)

    def call(self, values: Sequence[Tensor], thunk: Callable[[], object], which: Sequence[int] | None = None):
        """thunk() with params[i] replaced by values (all params, or only the indices `which`)."""
        idx = range(len(self.names)) if which is None else which
        swap = {f"inner.{self.names[i]}": v for i, v in zip(idx, values)}
        return torch.func.functional_call(self._wrapper, swap, (thunk,), strict=False)


def bind_params(step_fn: StepFn, params: Sequence[Tensor]) -> ParamBinding:
    """Find the nn.Module owning `params` from step_fn (module, bound method or `.module`)."""
    module = step_fn if isinstance(step_fn, nn.Module) else getattr(step_fn, "module", None)
    if module is None and isinstance(getattr(step_fn, "__self__", None), nn.Module):
        module = step_fn.__self__
    if not isinstance(module, nn.Module):
        raise PonderError("forward-mode estimators need the step as an nn.Module, a bound method of one, "
                          "or a callable with a .module attribute")
    by_id = {id(p): n for n, p in module.named_parameters(remove_duplicate=False)}
    names = []
    for p in params:
        if id(p) not in by_id:
            raise PonderError("forward-mode estimators: a parameter to differentiate is not owned by the step's module")
        names.append(by_id[id(p)])
    return ParamBinding(module, names)


def directional_derivative(step_fn: StepFn, z0: Tensor, x: Tensor, loss_fn: LossFn, *, steps: int,
                           params: Sequence[Tensor], tangents: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Forward-mode dL(z_T)/dtheta . v for tangents v (one per param). Returns (loss, z_T, dL.v)."""
    bind = bind_params(step_fn, params)

    def rollout(*values: Tensor) -> tuple[Tensor, Tensor]:
        def thunk():
            z = z0
            for _ in range(steps):
                z = step_fn(z, x)
            return loss_fn(z), z

        return bind.call(values, thunk)

    primals = tuple(p.detach() for p in params)
    (loss, z), (dloss, _) = torch.func.jvp(rollout, primals, tuple(t.detach() for t in tangents))
    return loss.detach(), z.detach(), dloss.detach()


@dataclass
class ForwardGradient:
    """(dL/dtheta . v) v with v ~ N(0, I), averaged over `directions` draws (seeded by `seed`)."""

    directions: int = 1
    seed: int | None = None
    name: str = "forward_gradient"

    def sample_directions(self, params: Sequence[Tensor], generator: torch.Generator | None) -> list[Tensor]:
        return [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]

    def estimate(self, step_fn: StepFn, z0: Tensor, x: Tensor, loss_fn: LossFn, *, steps: int,
                 params: Sequence[Tensor]) -> Rollout:
        if self.directions < 1:
            raise PonderError(f"forward_gradient.directions must be >= 1, got {self.directions}")
        params = list(params)
        gen = torch.Generator().manual_seed(self.seed) if self.seed is not None else None
        grads = [torch.zeros_like(p) for p in params]
        derivs = []
        for _ in range(self.directions):
            v = self.sample_directions(params, gen)
            loss, z, d = directional_derivative(step_fn, z0, x, loss_fn, steps=steps, params=params, tangents=v)
            derivs.append(d.item())
            for g, vi in zip(grads, v):
                g.add_(d * vi / self.directions)
        return Rollout(state=z, loss=loss, grads=tuple(grads),
                       stats={"directional_derivative_mean": sum(derivs) / len(derivs)})


@dataclass
class RTRL:
    """Exact gradient of L(z_T) by eligibility traces (forward mode); refuses models with more
    than `max_params` parameter entries (the traces hold |z| x P numbers)."""

    max_params: int = 20000
    chunk_size: int | None = None
    name: str = "rtrl"

    def estimate(self, step_fn: StepFn, z0: Tensor, x: Tensor, loss_fn: LossFn, *, steps: int,
                 params: Sequence[Tensor]) -> Rollout:
        params = list(params)
        n_params = sum(p.numel() for p in params)
        if n_params > self.max_params:
            raise PonderError(f"rtrl: {n_params} parameters exceed rtrl.max_params={self.max_params} "
                              f"(traces need {n_params} x {z0.numel()} numbers)")
        bind = bind_params(step_fn, params)
        values = [p.detach() for p in params]
        z = z0.detach()
        traces = [torch.zeros(p.numel(), *z.shape, dtype=z.dtype, device=z.device) for p in params]
        units = [torch.eye(p.numel(), dtype=p.dtype, device=p.device).reshape(p.numel(), *p.shape) for p in params]
        for _ in range(steps):
            new_traces = []
            for i, (trace, unit) in enumerate(zip(traces, units)):
                def f_i(zz: Tensor, p_i: Tensor, i: int = i) -> Tensor:
                    return bind.call([p_i], lambda: step_fn(zz, x), which=[i])

                def tangent(ez: Tensor, ep: Tensor, f_i=f_i, i: int = i) -> Tensor:
                    return torch.func.jvp(f_i, (z, values[i]), (ez, ep))[1]

                new_traces.append(torch.func.vmap(tangent, chunk_size=self.chunk_size)(trace, unit))
            with torch.no_grad():
                z = step_fn(z, x)
            traces = new_traces
        zt = z.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(zt)
            g_z, *direct = torch.autograd.grad(loss, [zt, *params], allow_unused=True)
        g_z = torch.zeros_like(zt) if g_z is None else g_z
        grads = []
        for p, trace, d in zip(params, traces, direct):
            g = (trace.reshape(p.numel(), -1) @ g_z.reshape(-1)).reshape(p.shape)
            grads.append(g + (d if d is not None else 0.0))
        return Rollout(state=zt.detach(), loss=loss.detach(), grads=tuple(grads),
                       stats={"trace_numbers": float(n_params * z.numel())})


ESTIMATORS.add("forward_gradient", ForwardGradient)
ESTIMATORS.add("rtrl", RTRL)
