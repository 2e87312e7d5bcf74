"""The training step's one read from the device.

On a GPU every `.item()`, `float(tensor)`, boolean-mask index or `.tolist()` makes the host wait
until the device has finished all the work queued before it; a training step used to wait 15-20
times (each figure, the finiteness checks, the gradient norm, the carry's halted slots). The step
now hands everything the host needs (its figures, the refusal flag, what the objective's commit
and the callbacks need) to `fetch`, which reads them in one copy (tests/test_transfer.py counts).
"""
from __future__ import annotations

from typing import Any

import torch


def fetch(values: dict[str, Any]) -> dict[str, Any]:
    """The step's one host transfer: every tensor among `values` (0-dim, or a (b,) mask or count)
    is read in one copy; 0-dim ones come back as Python numbers, others as numpy arrays of their
    kind (the host side of a step works in numpy and Python, so nothing there reads the device
    again); other values pass through."""
    tensors = {k: v.detach() for k, v in values.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        return dict(values)
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors.values()]).cpu().numpy()  # the one sync
    out, i = dict(values), 0
    for k, t in tensors.items():
        part = flat[i:i + t.numel()]
        i += t.numel()
        kind = bool if t.dtype == torch.bool else int if not t.dtype.is_floating_point else float
        out[k] = kind(part[0]) if t.dim() == 0 else part.astype(kind)
    return out
