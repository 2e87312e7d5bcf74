"""torch.compile of the recursion (`train.compile`), and settling a run's arithmetic.

`train.compile` is True, False or "auto" (the default of a new config; configs saved with a
boolean load unchanged). What compiles is the recursion:
- the recursive reasoner's stack of blocks (`ReasoningNet.compile_stack`): the model's step
  around it stays eager, the batch axis is dynamic, and the custom autograd Functions give way to
  plain ops inside the graph, so the recursion's hot path has no graph break and one graph per
  grad mode and autocast dtype (tests/test_compiling.py counts them);
- the recurrent cell's whole unrolled trajectory (`CellReasoner.compile_trajectory`): the M cell
  applications of a training trajectory, forward and backward, as one graph (its per-step
  operations are tiny, so the eager step is mostly dispatch); the readout, the halting head's
  loss and evaluation's early-exit steps stay eager.
The language models have no recursion: True is refused for them, "auto" is off.

"auto" turns compilation on only where a recorded measurement says it pays over the run:
MEASURED holds, per device type and model family, the compiled step's speed-up after warm-up and
the compile time, from benchmarks/bench_precision_compile.py (BENCHMARKS.md, precision and
compile). With speed-up s, compile time C, the run's remaining steps N and its eager step time t
(timed on the run's own model and batch), compile is on when N * t * (1 - 1/s) > C: the time it
saves exceeds the time it costs. No measurement for the device and family, or s <= 1: off. The
resolved value is saved in the run's config, like the precision.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable

import torch
from tqdm import tqdm

from ponder.core.errors import PonderError
from ponder.models.blocks import ReasoningNet
from ponder.training.carry import batch_of
from ponder.training.precision import Choice, autocast, resolve_run_precision

BACKEND = "inductor"  # torch.compile's backend for train.compile (tests count graphs with "eager")

# (device type, model family) -> (compiled step's speed-up over eager after warm-up, compile
# seconds); measured by benchmarks/bench_precision_compile.py on the machine BENCHMARKS.md names
# (BENCHMARKS.md, precision and compile: the lowest speed-up over the family's presets and both
# precisions, the longest compile time; a family with a slower row stays off)
MEASURED: dict[tuple[str, str], tuple[float, float]] = {
    ("cpu", "recursive-mlp"): (1.03, 23.0), ("cpu", "recursive-attention"): (0.98, 14.0),
    ("cpu", "cell-rnn"): (0.68, 26.0)}


def stacks(model: torch.nn.Module) -> list[ReasoningNet]:
    """The recursion's compilable stacks of `model` (none for the cell and the language models)."""
    networks = getattr(model, "networks", None)
    return [n for n in networks() if isinstance(n, ReasoningNet)] if networks is not None else []


def compilable(model: torch.nn.Module) -> bool:
    """Has `model` a recursion `train.compile` compiles (stacks, or a cell's trajectory)?"""
    return bool(stacks(model)) or hasattr(model, "compile_trajectory")


def family(model: torch.nn.Module) -> str:
    """The model family MEASURED is keyed by: "recursive-attention", "recursive-mlp", "cell-rnn", ...."""
    cfg = getattr(model, "cfg", None)
    mixer = getattr(cfg, "mixer", None)
    if stacks(model) and mixer:
        return f"recursive-{mixer}"
    if hasattr(model, "compile_trajectory"):
        return f"cell-{cfg.cell}"
    return type(model).__name__


def compile_model(model: torch.nn.Module, backend: str | None = None) -> int:
    """Compile the recursion of `model` with `backend` (default BACKEND), in place: every stack,
    or the cell's trajectory; parameter names, hence checkpoints, are unchanged. Returns how many
    parts were compiled."""
    nets = stacks(model)
    for net in nets:
        net.compile_stack(backend or BACKEND)
    if not nets and hasattr(model, "compile_trajectory"):
        model.compile_trajectory(backend or BACKEND)
        return 1
    return len(nets)


def resolve_compile(requested: bool | str, model: torch.nn.Module, device: torch.device, *, steps: int,
                    step_seconds: Callable[[], float]) -> Choice:
    """On or off for `train.compile=requested` and why (module docstring).

    Args:
        steps: optimizer steps the run has left.
        step_seconds: () -> the eager step time (asked only when a measurement makes it matter).
    """
    if requested is False:
        return Choice("off", "asked for")
    kind = family(model)
    if not compilable(model):
        if requested is True:
            raise PonderError(f"train.compile=true: a {kind} has no recursion to compile (the recursive "
                              f"reasoner's networks and the recurrent cell's trajectory are what train.compile "
                              f"compiles)")
        return Choice("off", f"a {kind} has no recursion to compile")
    if requested is True:
        return Choice("on", "asked for")
    measured = MEASURED.get((device.type, kind))
    if measured is None:
        return Choice("off", f"no recorded measurement of compile for {kind} on {device.type}")
    speedup, seconds = measured
    if speedup <= 1.0:
        return Choice("off", f"measured {speedup:.2f}x for {kind} on {device.type}: compiled steps are not faster")
    t = step_seconds()
    saved = steps * t * (1.0 - 1.0 / speedup)
    verdict = "on" if saved > seconds else "off"
    return Choice(verdict, f"measured {speedup:.2f}x for {kind} on {device.type} at {seconds:.0f} s to compile; "
                           f"{steps} steps of {1e3 * t:.1f} ms would save {saved:.0f} s")


def eager_step_seconds(model: torch.nn.Module, split, device: torch.device, *, batch_size: int, precision: str,
                       repeats: int = 3) -> Callable[[], float]:
    """() -> the median seconds of one training-like step of `model` (forward and backward of one
    ACT step from fresh latents) on the first `batch_size` samples of `split`, under `precision`.
    The global RNG and the model's gradients are left as they were."""
    def run() -> float:
        batch = batch_of(split.slice(0, min(batch_size, len(split)))).to(device)
        times = []
        with torch.random.fork_rng(devices=[]):
            for _ in range(repeats + 1):
                t0 = time.perf_counter()
                with autocast(device, precision):
                    _, out = model.step(model.init_state(len(batch), device), model.prepare(batch))
                    loss = out.logits.float().square().mean()
                grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad],
                                            allow_unused=True)
                del grads
                times.append(time.perf_counter() - t0)
        return statistics.median(times[1:])
    return run


def settle(cfg, model: torch.nn.Module, train_split, device: torch.device, *, shard, start_step: int = 0):
    """Resolve `train.precision` and `train.compile` for this run (rank 0 decides for all),
    compile the model when on, and print the choices with their reasons (rank 0).

    Returns:
        (the config with both values resolved, {"precision": Choice, "compile": Choice}).
    """
    tc = cfg.train
    local = shard.local_size(tc.batch_size)
    precision = resolve_run_precision(tc.precision, model, train_split, device, batch_size=local, shard=shard)
    compiled = None
    if shard.main:
        timer = eager_step_seconds(model, train_split, device, batch_size=local, precision=precision.value)
        compiled = resolve_compile(tc.compile, model, device, steps=max(0, tc.steps - start_step), step_seconds=timer)
    compiled = shard.broadcast(compiled)
    if compiled.value == "on":
        compile_model(model)
    if shard.main:
        tqdm.write(f"precision {precision.value} ({precision.reason}); compile {compiled.value} ({compiled.reason})")
    train = dataclasses.replace(tc, precision=precision.value, compile=compiled.value == "on")
    return dataclasses.replace(cfg, train=train), {"precision": precision, "compile": compiled}

