"""The host a run computes on: its device, CPU threads and arithmetic, and the accelerator's RNG."""
from __future__ import annotations

import os

import torch

from ponder.core.errors import PonderError
from ponder.training.distributed import local_world


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; an unavailable device is a PonderError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PonderError("train.device=cuda but no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise PonderError("train.device=mps but MPS is not available")
    return torch.device(name)


def auto_threads() -> int:
    """Threads for torch on the CPU when `train.threads` is 0: one per core this process may use
    (divided among the processes torchrun started on this machine).
    ponder sets OMP_WAIT_POLICY=PASSIVE before torch loads (ponder/__init__.py): with threads that
    spin while they wait, one other busy process stalled every op of every step; waiting
    passively, a thread per core kept the idle speed of all cores and lost little to a
    competitor (BENCHMARKS.md, busy machines: both measured against one thread)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // local_world())  # processes started together by torchrun share the cores


def set_threads(threads: int) -> int:
    """Apply `train.threads` (0 = `auto_threads()`); returns the count used."""
    n = threads if threads > 0 else auto_threads()
    torch.set_num_threads(n)
    return n


def set_flush_denormal(on: bool) -> None:
    """Apply `train.flush_denormal` to this process's CPU arithmetic (both ways, so a run opened
    after another in one process computes as it would alone)."""
    torch.set_flush_denormal(on)


def device_rng_state(device: torch.device) -> torch.Tensor | None:
    """The RNG state of an accelerator `device` (None on the CPU, whose generator is torch's global one)."""
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    if device.type == "mps":
        return torch.mps.get_rng_state()
    return None


def set_device_rng_state(device: torch.device, state: torch.Tensor | None) -> None:
    """Restore `device_rng_state`; None (a checkpoint of a CPU run, or of one saved before it was
    kept) leaves the device's RNG as it is."""
    if state is None:
        return
    if device.type == "cuda":
        torch.cuda.set_rng_state(state.cpu(), device)
    elif device.type == "mps":
        torch.mps.set_rng_state(state.cpu())
