"""Guarded dynamic adapters and a soft logit clamp.

`HyperLoRA`: a per-sample low-rank weight delta for the recursive net, predicted from a context
vector (a hypernetwork emits the two LoRA factors). Every time the net is applied, its input
h = hidden + injection is replaced by (I + s * dW_i) h for sample i, i.e. the net's input map
becomes identity plus a sample-specific rank-r matrix dW_i = U_i V_i^T (U_i, V_i: (d, r)).
Guards (REFERENCE section 4: a delta-norm creep 1.27 -> 1.80 preceded an accuracy collapse):

- each sample's ||dW_i||_F is clamped to `max_norm` (the U factor is rescaled);
- a regulariser `reg_weight * mean_i (||dW_i|| - target_norm)^2` on the pre-clamp norms pulls
  them toward a target;
- the pre-clamp norms and the clamp hit-rate travel with the batch's factors
  (`AdapterFactors.norms`, `.hit_rate`) to the training-health monitors.

The U head starts at zero, so dW = 0 and the model equals the adapter-free one at initialisation.
The context is the model's per-sample conditioning vector when the task has one (a puzzle
embedding or pooled context tokens), else the input embedding pooled over positions.

`soft_clamp`: identity for |x| <= t, then sign(x) * (t + (m - t) * tanh((|x| - t) / (m - t))),
continuous with slope 1 at t and bounded by m.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ponder.core.types import Knob


def soft_clamp(x: Tensor, t: float, m: float) -> Tensor:
    """Identity up to |x| = t, smoothly bounded by m beyond (elementwise, any shape).

    REFERENCE section 4 writes tanh((|x| - t) / ((m - t) / 2)), whose slope at t is 2: a kink.
    Dividing by (m - t) instead gives slope 1 at t, so value and gradient are continuous.
    """
    if not 0 < t < m:
        raise ValueError(f"soft_clamp needs 0 < t < m, got t={t}, m={m}")
    a = x.abs()
    over = t + (m - t) * torch.tanh((a - t) / (m - t))
    return torch.where(a <= t, x, torch.sign(x) * over)


@dataclass
class AdapterFactors:
    """One batch's per-sample delta dW_i = U_i V_i^T, prepared once per batch by `HyperLoRA.factors`.

    Attributes:
        u: (b, d, r) U factors, already scaled down where the norm clamp hit.
        v: (b, d, r) V factors.
        norms: (b,) ||dW_i||_F BEFORE the clamp (watched by the training-health monitors).
        hit_rate: fraction of samples whose delta was clamped.
        reg: the norm regulariser reg_weight * mean_i (||dW_i|| - target)^2 (a scalar with
            gradient), or None when built without gradient.
    """

    u: Tensor
    v: Tensor
    norms: Tensor
    hit_rate: float
    reg: Tensor | None

    def index(self, idx: Tensor) -> "AdapterFactors":
        return AdapterFactors(self.u[idx], self.v[idx], self.norms[idx], self.hit_rate, None)


class HyperLoRA(nn.Module):
    """Per-sample low-rank delta dW_i = U_i V_i^T predicted from a context c_i (b, c).

    The module holds no per-batch state: `factors(context)` returns the batch's factors and
    `delta(h, factors)` applies them, so the same factors serve every step of the batch.

    Args:
        d_model: width d of the states the delta acts on.
        d_context: size of the context vector.
        rank: r.
        max_norm: per-sample Frobenius-norm clamp of dW (REFERENCE: 3.0, later 1.0).
        target_norm: the regulariser pulls ||dW_i|| toward this.
        reg_weight: weight of the norm regulariser (REFERENCE: ~0.001); a controller knob.
        scale: s, multiplies the delta; a controller knob.
    """

    def __init__(self, d_model: int, d_context: int, rank: int, *, max_norm: float = 1.0,
                 target_norm: float = 0.5, reg_weight: float = 1e-3, scale: float = 1.0):
        super().__init__()
        self.d, self.rank = d_model, rank
        self.max_norm, self.target_norm = max_norm, target_norm
        self.reg_weight, self.scale = reg_weight, scale
        self.to_u = nn.Linear(d_context, d_model * rank, bias=False)
        self.to_v = nn.Linear(d_context, d_model * rank, bias=False)
        with torch.no_grad():
            self.to_u.weight.zero_()  # dW = 0 at start
            nn.init.normal_(self.to_v.weight, std=1.0 / math.sqrt(d_context * rank))

    def factors(self, context: Tensor) -> AdapterFactors:
        """Predict and clamp this batch's factors. context: (b, c)."""
        b = context.shape[0]
        u = self.to_u(context).view(b, self.d, self.rank)  # (b, d, r)
        v = self.to_v(context).view(b, self.d, self.rank)  # (b, d, r)
        # ||U V^T||_F^2 = trace((U^T U)(V^T V)): r x r products instead of a (d, d) matrix
        gram = torch.einsum("bdr,bds->brs", u, u) * torch.einsum("bdr,bds->brs", v, v)
        norms = gram.sum((1, 2)).clamp(min=0).add(1e-12).sqrt()  # (b,)
        factor = (self.max_norm / norms).clamp(max=1.0)  # (b,) 1 = not clamped
        reg = None
        if torch.is_grad_enabled():
            # on the norm BEFORE the clamp: inside the clamp only the direction of dW is used, so
            # its raw size would otherwise drift freely (it did: 0.5 -> 13 in 30 debug steps)
            reg = self.reg_weight * (norms - self.target_norm).square().mean()
        return AdapterFactors(u * factor.view(b, 1, 1), v, norms.detach(),
                              float((factor < 1.0).float().mean()), reg)

    def delta(self, h: Tensor, f: AdapterFactors) -> Tensor:
        """s * dW_i h for every position: h (b, n, d) -> (b, n, d)."""
        return self.scale * torch.einsum("bnr,bdr->bnd", torch.einsum("bnd,bdr->bnr", h, f.v), f.u)

    def knobs(self) -> dict[str, Knob]:
        """The delta's scale and the regulariser's weight, for the stability controller."""
        return {"adapter_scale": Knob("adapter_scale", lambda: self.scale, lambda v: setattr(self, "scale", v)),
                "adapter_reg": Knob("adapter_reg", lambda: self.reg_weight, lambda v: setattr(self, "reg_weight", v),
                                    loss_weight=True)}
