"""Where mixed precision stops: regions that compute in float32 under autocast.

Autocast (`train.precision=bf16`, ponder.training.precision) runs matrix products in bfloat16.
On the CPU, unlike CUDA, it does not move norms, softmax, exp or sums to float32 by itself, so
the parts whose resolution decides something (the halting logits compared with a threshold, the
attention statistics the health monitor judges) leave autocast explicitly through `fp32_region`.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

_AUTOCAST_DEVICES = ("cpu", "cuda", "mps", "xpu")


def fp32_region(x: torch.Tensor) -> ContextManager:
    """A context in which autocast is off for `x`'s device (a no-op when autocast is not on),
    so the ops inside run in their inputs' dtype; cast the inputs with `.float()`."""
    kind = x.device.type
    if kind in _AUTOCAST_DEVICES and torch.is_autocast_enabled(kind):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()
