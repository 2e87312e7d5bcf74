"""The run's arithmetic: numeric precision (`train.precision`) and its autocast region.

`train.precision` is "fp32", "bf16" (autocast of the forward to bfloat16) or "auto" (the default
of a new config):

- CUDA: "auto" is bf16 where the device supports it (`torch.cuda.is_bf16_supported()`), else fp32;
- CPU: bf16 only where the CPU has native bf16 matrix instructions (`amx_bf16`, Intel Sapphire
  Rapids and later, or `avx512_bf16`, e.g. AMD Zen 4: read from /proc/cpuinfo) AND a short probe
  of this model at this batch (forward and backward of one step, fp32 and bf16 alternated) shows
  bf16 at least PROBE_GAIN times faster. Where the flags cannot be read (another OS) the probe
  alone decides. Without the flags bf16 is emulated and can be tens of times slower than fp32
  (pytorch issue 146508), so an explicit `train.precision=bf16` there is refused in one line;
- other devices (MPS): fp32; explicit bf16 is refused.

What stays float32 under bf16: the weights and the optimizer state (autocast casts a copy of each
weight once per region, which is why the loop wraps a whole objective forward in one region),
the residual stream and carried state (a bf16 matmul output added to the float32 stream gives
float32), RMSNorm, the losses (cross-entropy is on autocast's float32 list; stablemax computes in
float64), the halting logits and all halting arithmetic (`ponder.core.autocast.fp32_region`),
the attention statistics of the health monitor, and the gradient estimators' solves.

The resolved value replaces "auto" in the run's config before it is saved, so a resume (and
`ponder eval`) uses the arithmetic the run trained with, whatever machine reads it; a resume may
name another precision explicitly (the weights and optimizer state are float32 either way). The
choice and its reason are printed and kept in RUN_DIR/setup.json (`record_setup`).
"""
from __future__ import annotations

import contextlib
import copy
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

import torch

from ponder.core.errors import PonderError
from ponder.training.carry import batch_of
from ponder.training.checkpoint import atomic_write_text

PRECISIONS = ("auto", "fp32", "bf16")
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# bf16 must beat fp32 by this factor in the probe: below it the gain is within the noise of a
# shared machine, and a run's numbers should not change for a gain nobody can measure
PROBE_GAIN = 1.15
PROBE_REPEATS = 3  # timed steps per precision (after one warm-up each), alternated


@dataclass(frozen=True)
class Choice:
    """A resolved setting and why: `value` ("fp32" | "bf16" for precision, "on" | "off" for
    compile) and a one-line `reason`."""

    value: str
    reason: str


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags (Linux), or None where they cannot be read."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


def native_bf16(flags: set[str] | None) -> list[str] | None:
    """The native bf16 flags among `flags` ([] = none; None = flags unknown)."""
    return None if flags is None else [f for f in NATIVE_BF16_FLAGS if f in flags]


def autocast(device: torch.device, precision: str) -> ContextManager:
    """The autocast region of a resolved precision on `device` (a no-op for fp32 and for an
    unresolved "auto", which only a config never opened as a run still holds)."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def resolve_precision(requested: str, device: torch.device, *, flags: set[str] | None = None,
                      probe: Callable[[], tuple[float, float]] | None = None) -> Choice:
    """The precision a run on `device` uses for `train.precision=requested`, and why.

    Args:
        flags: the CPU's flags (`cpu_flags()`; None = unknown).
        probe: () -> (fp32 seconds, bf16 seconds) of one training step of the run's model (asked
            only when "auto" on a CPU needs it; None = no measurement possible: fp32).
    Raises:
        PonderError: explicit bf16 where it is not native (a CPU without the flags, MPS), or on a
            CUDA device without bf16.
    """
    if requested not in PRECISIONS:
        raise PonderError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        if requested == "bf16" and not ok:
            raise PonderError(f"train.precision=bf16: {torch.cuda.get_device_name(device)} has no bf16 support")
        if requested == "auto":
            return Choice("bf16", "CUDA device with bf16") if ok else Choice("fp32", "CUDA device without bf16")
        return Choice(requested, "asked for")
    if device.type != "cpu":
        if requested == "bf16":
            raise PonderError(f"train.precision=bf16 is for CUDA or a CPU with native bf16; this run is on {device.type}")
        return Choice("fp32", f"{device.type}: fp32" if requested == "auto" else "asked for")
    native = native_bf16(flags)
    if requested == "bf16":
        if native == []:
            raise PonderError("train.precision=bf16: this CPU has no native bf16 (neither amx_bf16 nor avx512_bf16 "
                              "among its flags), and emulated bf16 can be tens of times slower than fp32; use fp32 "
                              "or auto")
        return Choice("bf16", "asked for")
    if requested == "fp32":
        return Choice("fp32", "asked for")
    if native == []:
        return Choice("fp32", "the CPU has no native bf16 (no amx_bf16 or avx512_bf16 flag)")
    where = f"CPU flag {native[0]}" if native else "CPU flags unknown"
    if probe is None:
        return Choice("fp32", f"{where}, but no probe of the model was possible")
    t32, t16 = probe()
    gain = t32 / max(t16, 1e-12)
    verdict = "bf16" if gain >= PROBE_GAIN else "fp32"
    return Choice(verdict, f"{where}; probe step {1e3 * t32:.1f} ms fp32 vs {1e3 * t16:.1f} ms bf16 "
                           f"({gain:.2f}x, bf16 needs {PROBE_GAIN:.2f}x)")


def probe_step(model: torch.nn.Module, batch, device: torch.device) -> Callable[[], tuple[float, float]]:
    """A probe for `resolve_precision`: the median seconds of one forward and backward of `model`
    on `batch` (a Batch) in fp32 and under bf16 autocast, alternated so that a busy machine
    slows both alike. It works on a deep copy (the run's weights, gradients and halting state
    are untouched) and restores the global RNG state, so a probed run's numbers do not depend on
    whether it was probed.

    The step is the model's own: a language model's `loss(inputs, labels, 0)`; otherwise one ACT
    step from fresh latents (`prepare`, `init_state`, `step`) and the backward of its logits."""
    def one(m: torch.nn.Module, precision: str) -> float:
        t0 = time.perf_counter()
        with autocast(device, precision):
            if getattr(m, "token_objective", False):
                loss = m.loss(batch.inputs, batch.labels, 0)[0]
            else:
                _, out = m.step(m.init_state(len(batch), device), m.prepare(batch))
                loss = out.logits.float().square().mean() + out.halt_logits.float().square().mean()
        loss.backward()
        m.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    def run() -> tuple[float, float]:
        with torch.random.fork_rng(devices=[]):
            m = copy.deepcopy(model)
            m.train()
            times: dict[str, list[float]] = {"fp32": [], "bf16": []}
            for rep in range(PROBE_REPEATS + 1):
                for precision in ("fp32", "bf16") if rep % 2 == 0 else ("bf16", "fp32"):
                    t = one(m, precision)
                    if rep:  # the first of each is a warm-up (allocations, weight casts)
                        times[precision].append(t)
        return statistics.median(times["fp32"]), statistics.median(times["bf16"])

    return run


def check_precision(requested: str, device: torch.device) -> None:
    """Refuse (one line) an explicit bf16 that `device` cannot run natively; called before any
    data is generated."""
    if requested == "bf16":
        resolve_precision(requested, device, flags=cpu_flags() if device.type == "cpu" else None)


def resolve_run_precision(requested: str, model: torch.nn.Module, split, device: torch.device, *,
                          batch_size: int, shard=None) -> Choice:
    """`resolve_precision` for a run: the CPU's flags, and (for "auto" where it matters) a probe of
    `model` on the first `batch_size` samples of `split`. Rank 0 decides and every rank adopts its
    choice (`shard`: ponder.training.distributed.Shard), so the processes never differ."""
    choice = None
    if shard is None or shard.main:
        flags = cpu_flags() if device.type == "cpu" else None
        probe = None
        if requested == "auto" and device.type == "cpu" and native_bf16(flags) != [] and len(split) > 0:
            batch = batch_of(split.slice(0, min(batch_size, len(split)))).to(device)
            probe = probe_step(model, batch, device)
        choice = resolve_precision(requested, device, flags=flags, probe=probe)
    return choice if shard is None else shard.broadcast(choice)


def record_setup(run_dir: Path, step: int, **choices: Choice) -> None:
    """Append this session's resolved settings and their reasons to RUN_DIR/setup.json (one
    entry per session: a resumed run keeps the earlier ones)."""
    path = Path(run_dir) / "setup.json"
    try:
        sessions = json.loads(path.read_text()) if path.exists() else []
        if not isinstance(sessions, list):
            sessions = []
    except (OSError, ValueError):
        sessions = []  # a damaged record of earlier sessions is replaced, never fatal
    sessions.append({"step": step, **{k: {"value": c.value, "reason": c.reason} for k, c in choices.items()}})
    atomic_write_text(path, json.dumps(sessions, indent=1) + "\n")
