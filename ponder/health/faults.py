"""Fault injection for the training-health scenario tests and benchmarks (training callbacks).

Each injector breaks one thing at chosen optimizer steps (1-based, the step being taken), the
way a real failure would show up to the monitors:

- `NaNGradients`: the gradient of one parameter becomes NaN (the loop must refuse the step);
- `LossSpike`: the token logits are multiplied by `factor` (loss and gradients jump);
- `ExplodeAdapter`: the adapter's U head is multiplied by `factor` (a per-sample delta explodes);
- `CollapseAttention`: the query projections are zeroed (attention becomes exactly uniform);
- `ScrambleReadout`: the readout weights are re-drawn at random (accuracy falls).
"""
from __future__ import annotations

from typing import Callable

import torch

from ponder.models.attention import Attention


class _AtSteps:
    """Calls the injector's `inject(model)` at the listed steps; hooks it registered in
    `_handles` are removed after the step."""

    inject: Callable[[torch.nn.Module], None]

    def __init__(self, steps):
        self.steps = set(steps)
        self._handles: list = []

    def on_step_start(self, run, step: int) -> None:
        if step + 1 in self.steps:
            self.inject(run.model)

    def on_step_end(self, run, metrics: dict) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class NaNGradients(_AtSteps):
    """At each listed step, the readout weight's gradient is NaN (the loss stays finite)."""

    def inject(self, model) -> None:
        self._handles.append(model.readout.weight.register_hook(lambda g: torch.full_like(g, float("nan"))))


class LossSpike(_AtSteps):
    """At each listed step, the token logits are multiplied by `factor`."""

    def __init__(self, steps, factor: float = 30.0):
        super().__init__(steps)
        self.factor = factor

    def inject(self, model) -> None:
        self._handles.append(model.readout.register_forward_hook(lambda m, a, out: out * self.factor))


class ExplodeAdapter(_AtSteps):
    """At each listed step, the adapter's U head weights are multiplied by `factor` (permanent)."""

    def __init__(self, steps, factor: float = 1e4):
        super().__init__(steps)
        self.factor = factor

    @torch.no_grad()
    def inject(self, model) -> None:
        w = model.adapter.to_u.weight
        # drawn on the CPU generator and moved to the weights' device (a CPU generator cannot draw
        # into CUDA memory); still at its zero init, the head gets that direction first
        direction = torch.randn(w.shape, generator=torch.Generator().manual_seed(0), device="cpu").to(w)
        w.copy_(torch.where(w.abs().amax() > 0, w, direction)).mul_(self.factor)


class CollapseAttention(_AtSteps):
    """At each listed step, every attention layer's query projection is zeroed (permanent)."""

    @torch.no_grad()
    def inject(self, model) -> None:
        for m in model.modules():
            if isinstance(m, Attention):
                d = m.qkv.weight.shape[1]
                m.qkv.weight[:d].zero_()


class ScrambleReadout(_AtSteps):
    """At each listed step, the readout weights are re-drawn at random (permanent)."""

    @torch.no_grad()
    def inject(self, model) -> None:
        w = model.readout.weight
        w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(1), device="cpu").to(w) * w.std() * 3)
