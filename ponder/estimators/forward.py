"""Forward-mode gradients of the finite-horizon loss L(z_T): exact real-time recurrent learning
(RTRL) and the random-direction forward gradient.

Both need the step as a function of its parameters, so `step_fn` must be an nn.Module owning
`params`, a bound method of one, a callable with a `.module` attribute naming it, or a closure
over it; the parameters are swapped with torch.func.functional_call (the loss may read them
too, e.g. a readout). `params` may also contain the input `x` itself (an input leaf). Every op
of the step needs forward-mode AD support.

- RTRL carries eligibility traces e_t = dz_t/dtheta (one (P_i, *z.shape) block per parameter
  tensor) with e_{t+1} = J_t e_t + df/dtheta|_t, i.e. a batch of JVPs (torch.func.vmap over
  torch.func.jvp), and returns g_z^T e_T + dL/dtheta|direct: exactly BPTT's gradient, with memory
  O(|z| P) independent of T and no backward pass through time. For small models.
- The forward gradient draws v ~ N(0, I) over all parameters, gets the directional derivative
  dL/dtheta . v from one torch.func.jvp through the T steps, and returns (dL . v) v, averaged
  over `directions` draws: unbiased, with variance growing with the number of parameters.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn

from ponder.core.errors import PonderError
from ponder.core.settings import setting
from ponder.estimators.base import ESTIMATORS, LossFn, NotApplicable, Rollout, StepFn
from ponder.models.blocks import plain_ops


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
    """Where each of `params` lives: names[i] inside `module`, or None when params[i] is the
    input x itself (an input leaf differentiated like a parameter)."""

    module: nn.Module
    names: list[str | None]
    _wrapper: _Thunk = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._wrapper = _Thunk(self.module)

    def x_index(self) -> int | None:
        return next((i for i, n in enumerate(self.names) if n is None), None)

    def call(self, values: Sequence[Tensor], thunk: Callable[[], object], which: Sequence[int] | None = None):
        """thunk() with params[i] replaced by values (all params, or only the indices `which`);
        the input entry (name None) is the caller's to substitute."""
        idx = range(len(self.names)) if which is None else which
        swap = {f"inner.{self.names[i]}": v for i, v in zip(idx, values) if self.names[i] is not None}
        return torch.func.functional_call(self._wrapper, swap, (thunk,), strict=False)


def _find_module(step_fn) -> nn.Module | None:
    if isinstance(step_fn, nn.Module):
        return step_fn
    if isinstance(getattr(step_fn, "module", None), nn.Module):
        return step_fn.module
    if isinstance(getattr(step_fn, "__self__", None), nn.Module):
        return step_fn.__self__
    for cell in getattr(step_fn, "__closure__", None) or ():  # a closure over the model
        try:
            if isinstance(cell.cell_contents, nn.Module):
                return cell.cell_contents
        except ValueError:  # empty cell
            continue
    return None


def bind_params(step_fn: StepFn, params: Sequence[Tensor], x: Tensor | None = None) -> ParamBinding:
    """Find the nn.Module owning `params` from step_fn: the module itself, its `.module`
    attribute, a bound method's owner, or a module captured by a closure. A param that is the
    input `x` itself is allowed (its tangent is fed through x)."""
    module = _find_module(step_fn)
    if module is None:
        raise NotApplicable("forward-mode estimators need the step as an nn.Module, a bound method of one, "
                          "or a callable with a .module attribute")
    by_id = {id(p): n for n, p in module.named_parameters(remove_duplicate=False)}
    names: list[str | None] = []
    for p in params:
        if id(p) in by_id:
            names.append(by_id[id(p)])
        elif x is not None and p is x and None not in names:
            names.append(None)
        else:
            raise NotApplicable("forward-mode estimators: a tensor to differentiate is neither a parameter of the "
                              "step's module nor its input x")
    return ParamBinding(module, names)


@contextlib.contextmanager
def _forward_mode_support():
    """Plain ops for the reasoner's fused blocks; torch's refusal of an op under forward-mode
    transforms becomes NotApplicable."""
    try:
        with plain_ops():
            yield
    except (RuntimeError, NotImplementedError) as e:
        msg = str(e)
        if any(k in msg for k in ("functorch", "forward AD", "forward-mode", "jvp", "setup_context")):
            raise NotApplicable(f"forward mode is not supported by an op of this step: {msg.splitlines()[0][:160]}") from e
        raise


def directional_derivative(step_fn: StepFn, z0: Tensor, x: Tensor, loss_fn: LossFn, *, steps: int,
                           params: Sequence[Tensor], tangents: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Forward-mode dL(z_T)/dtheta . v for tangents v (one per param). Returns (loss, z_T, dL.v)."""
    bind = bind_params(step_fn, params, x)
    xi = bind.x_index()

    def rollout(*values: Tensor) -> tuple[Tensor, Tensor]:
        xv = x if xi is None else values[xi]

        def thunk():
            z = z0
            for _ in range(steps):
                z = step_fn(z, xv)
            return loss_fn(z), z

        return bind.call(values, thunk)

    primals = tuple(p.detach() for p in params)
    with torch.no_grad(), _forward_mode_support():  # forward AD needs no grad mode
        (loss, z), (dloss, _) = torch.func.jvp(rollout, primals, tuple(t.detach() for t in tangents))
    return loss.detach(), z.detach(), dloss.detach()


@dataclass
class ForwardGradient:
    """(dL/dtheta . v) v with v ~ N(0, I), averaged over `directions` draws (seeded by `seed`)."""

    name: ClassVar[str] = "forward_gradient"
    directions: int = setting(1, ge=1)
    seed: int | None = setting(None, ge=0)

    def sample_directions(self, params: Sequence[Tensor], generator: torch.Generator | None) -> list[Tensor]:
        # drawn on the CPU (the generator is a CPU one), then moved: the same directions on every device
        return [torch.randn(p.shape, generator=generator, dtype=p.dtype, device="cpu").to(p.device) for p in params]

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

    name: ClassVar[str] = "rtrl"
    max_params: int = setting(20000, ge=1)
    chunk_size: int | None = setting(None, ge=1)

    def estimate(self, step_fn: StepFn, z0: Tensor, x: Tensor, loss_fn: LossFn, *, steps: int,
                 params: Sequence[Tensor]) -> Rollout:
        params = list(params)
        n_params = sum(p.numel() for p in params)
        if n_params > self.max_params:
            raise PonderError(f"rtrl: {n_params} parameters exceed rtrl.max_params={self.max_params} "
                              f"(traces need {n_params} x {z0.numel()} numbers)")
        bind = bind_params(step_fn, params, x)
        values = [p.detach() for p in params]
        xi = bind.x_index()
        x_val = x.detach() if xi is not None else x
        z = z0.detach()
        traces = [torch.zeros(p.numel(), *z.shape, dtype=z.dtype, device=z.device) for p in params]
        units = [torch.eye(p.numel(), dtype=p.dtype, device=p.device).reshape(p.numel(), *p.shape) for p in params]
        for _ in range(steps):
            new_traces = []
            for i, (trace, unit) in enumerate(zip(traces, units)):
                def f_i(zz: Tensor, p_i: Tensor, i: int = i) -> Tensor:
                    if i == xi:
                        return bind.call([], lambda: step_fn(zz, p_i), which=[])
                    return bind.call([p_i], lambda: step_fn(zz, x_val), which=[i])

                def tangent(ez: Tensor, ep: Tensor, f_i=f_i, i: int = i) -> Tensor:
                    return torch.func.jvp(f_i, (z, values[i]), (ez, ep))[1]

                with torch.no_grad(), _forward_mode_support():
                    new_traces.append(torch.func.vmap(tangent, chunk_size=self.chunk_size)(trace, unit))
            with torch.no_grad():
                z = step_fn(z, x_val)
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
