"""The first script to run on a GPU: train every preset family for a few steps and print what
each costs, in the GPU recipe (bf16 autocast; torch.compile where the model has a recursion
stack, timed against eager).

    python -m benchmarks.gpu_smoke [--steps 20] [--presets a,b,...] [--peak-tflops X]
    python -m benchmarks.gpu_smoke --device cpu      # every family, two steps, small data: a check, no figures

Per preset: the step time eager and compiled (median after warm-up), the compile time (the first
compiled steps' excess over the steady step), the matrix FLOPs one optimizer step really ran,
counted as the objective runs them (benchmarks.common.counted_flops: whole trajectories for
PonderNet and ACT, the extra no-grad forward of Q-continue, the language models' cycles), the
achieved TFLOP/s against the card's dense bf16 peak, peak memory, and the compiled graphs and
graph breaks TorchDynamo reports. The card and its peak come from PEAK_BF16, which tells SXM,
PCIe and NVL apart. At the end it prints the ("cuda", family) entries for
ponder.training.compiling.MEASURED, so that `train.compile=auto` can decide on this card.

Without a CUDA device and without --device cpu it says so and exits 0. The CPU mode runs each
family for two steps with small data, a batch of 8, one cycle per ACT step and at most two ACT
steps (tests/test_gpu_smoke.py): it checks that every family runs through the same code, and
measures nothing.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch._dynamo.utils import counters

from benchmarks.common import counted_flops
from ponder.presets import get_config
from ponder.runs.config import apply_overrides
from ponder.runs.run import open_run
from ponder.training.compiling import family, stacks
from ponder.training.loop import train_step

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets, in match
# order: (pattern on the device name, the card as printed, peak). An H100 or H200 whose name says
# neither NVL nor PCIe is the SXM module ("NVIDIA H100 80GB HBM3", "NVIDIA H200").
PEAK_BF16: list[tuple[str, str, float]] = [
    (r"H100.*NVL", "H100 NVL", 835.5),
    (r"H100.*PCIE", "H100 PCIe", 756.5),
    (r"H100", "H100 SXM", 989.4),
    (r"H200.*NVL", "H200 NVL", 835.5),
    (r"H200", "H200 SXM", 989.4),
    (r"A100.*PCIE", "A100 PCIe", 312.0),
    (r"A100", "A100 SXM", 312.0),
    (r"L40S", "L40S", 362.1),
    (r"\bL4\b", "L4", 121.0),
    (r"\bA10\b", "A10", 125.0),
    (r"RTX 4090", "RTX 4090 (fp32 accumulate)", 165.2),
    (r"RTX 3090", "RTX 3090 (fp32 accumulate)", 71.0),
]
FAMILIES = ("trm-sudoku9", "sudoku9", "maze9", "demo", "parity64", "parity64-rnn", "parity64-rnn-act",
            "lm-small-hybrid", "lm-small-recursive")
# the CPU mode's small data, per task (the model and its settings stay the preset's)
SMALL_DATA = {"sudoku": ["--task.n_train=64", "--task.n_test=16"], "maze": ["--task.n_train=64", "--task.n_test=16"],
              "parity": ["--task.n_train=256", "--task.n_test=16"], "lm": ["--task.max_files=20"]}


def card(name: str, given: float | None = None) -> tuple[str, float | None]:
    """(the card as the table names it, its dense bf16 peak) for a CUDA device name; `given`
    (--peak-tflops) wins; an unknown card has no peak."""
    for pattern, label, peak in PEAK_BF16:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return label, given or peak
    return name, given


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _config(preset: str, device: str, *, compiled: bool, steps: int, small: bool, overrides: tuple = ()):
    cfg = get_config(preset)
    over = [f"--train.device={device}", f"--train.precision={'bf16' if device == 'cuda' else 'fp32'}",
            f"--train.compile={'true' if compiled else 'false'}", "--train.progress=false", "--train.eval_every=0",
            "--train.checkpoint_every=0", "--train.tensorboard=off", "--train.log_every=0", "--train.target=0",
            f"--train.steps={steps + 10}"]
    if getattr(cfg.task, "curriculum", False):  # it rises on logged figures, and a timed step logs none
        over.append("--task.curriculum=false")
    if small:  # the CPU mode: every code path of the family, at a size a test can afford
        over += [*SMALL_DATA.get(cfg.task.name, []), "--train.batch_size=8"]
        if cfg.kind("model") == "recursive":
            over += ["--model.h_cycles=1", "--model.l_cycles=1"]
        if cfg.kind("model") != "hybrid_lm":  # the hybrid LM has no halting head
            over += [f"--halt.max_steps={max(2, cfg.halt.min_steps)}"]
    return apply_overrides(cfg, [*over, *overrides])


def measure(preset: str, *, device: str, steps: int, warmup: int, compiled: bool, small: bool = False,
            overrides: tuple = ()) -> dict:
    """Train `preset` (with `overrides`) for warmup + steps optimizer steps (plus one counted step
    when eager)."""
    torch._dynamo.reset()  # each preset starts with an empty compile cache and counters
    counters.clear()
    cfg = _config(preset, device, compiled=compiled, steps=steps + warmup + 1, small=small, overrides=overrides)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with tempfile.TemporaryDirectory() as d:
        run = open_run(cfg, Path(d) / "run")
        run.callbacks.call("on_train_start", run)  # the health monitors' hooks (the loop's own start)

        def timed() -> float:
            _sync(dev)
            t0 = time.perf_counter()
            train_step(run)
            _sync(dev)
            return time.perf_counter() - t0

        first = [timed() for _ in range(warmup)]
        flops = None if compiled else counted_flops(lambda: train_step(run))  # eager: every op is seen
        times = [timed() for _ in range(steps)]
        run.callbacks.call("on_train_end", run)
        kind, has_stack = family(run.model), bool(stacks(run.model))
    sec = statistics.median(times)
    return {"preset": preset, "family": kind, "compiled": compiled, "has_stack": has_stack, "step_s": sec,
            "compile_s": max(0.0, sum(first) - len(first) * sec) if compiled else None, "flops": flops,
            "graphs": counters["stats"]["unique_graphs"], "breaks": sum(counters["graph_break"].values()),
            "peak_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--steps", type=int, default=20, help="timed steps per preset (the CPU mode takes 2)")
    ap.add_argument("--warmup", type=int, default=5, help="steps before timing (they compile)")
    ap.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak (default: the table)")
    ap.add_argument("--presets", default=",".join(FAMILIES))
    args = ap.parse_args(argv)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (run this on a GPU machine, or --device cpu to check the families)")
        return 0
    cpu = args.device == "cpu"
    steps, warmup = (2, 0) if cpu else (args.steps, args.warmup)
    if cpu:
        label, peak = "CPU (check mode: two steps, small data and models, batch 8, fp32)", None
    else:
        label, peak = card(torch.cuda.get_device_name(), args.peak_tflops)
    print(f"{label}; dense bf16 peak {peak if peak else 'unknown (pass --peak-tflops)'} TFLOP/s; torch "
          f"{torch.__version__}")
    print(f"{'preset':<20} {'family':<22} {'eager ms':>9} {'comp. ms':>9} {'compile s':>9} {'GFLOP/st':>9} "
          f"{'TFLOP/s':>8} {'of peak':>8} {'peak GiB':>8} {'graphs':>6} {'breaks':>6}")
    measured = {}
    for preset in presets:
        eager = measure(preset, device=args.device, steps=steps, warmup=warmup, compiled=False, small=cpu)
        comp = None
        if not cpu and eager["has_stack"]:
            comp = measure(preset, device=args.device, steps=steps, warmup=warmup, compiled=True)
        best = comp if comp is not None and comp["step_s"] < eager["step_s"] else eager
        tflops = eager["flops"] / best["step_s"] / 1e12
        frac = "n/a" if peak is None else f"{100 * tflops / peak:.1f}%"
        mem = (comp or eager)["peak_gib"]
        print(f"{preset:<20} {eager['family']:<22} {1e3 * eager['step_s']:>9.1f} {_ms(comp):>9} {_secs(comp):>9} "
              f"{eager['flops'] / 1e9:>9.3g} {tflops:>8.3f} {frac:>8} {'-' if mem is None else f'{mem:.2f}':>8} "
              f"{_n(comp, 'graphs'):>6} {_n(comp, 'breaks'):>6}", flush=True)
        if comp is not None:
            speedup = eager["step_s"] / comp["step_s"]
            old = measured.get(eager["family"], (float("inf"), 0.0))
            measured[eager["family"]] = (min(old[0], speedup), max(old[1], comp["compile_s"]))
    if measured:
        print("for ponder/training/compiling.py MEASURED (lowest speed-up, longest compile seconds per family):")
        print("    " + ", ".join(f'("cuda", "{k}"): ({s:.2f}, {c:.0f})' for k, (s, c) in sorted(measured.items())))
    return 0


def _ms(r: dict | None) -> str:
    return "-" if r is None else f"{1e3 * r['step_s']:.1f}"


def _secs(r: dict | None) -> str:
    return "-" if r is None else f"{r['compile_s']:.0f}"


def _n(r: dict | None, key: str) -> str:
    return "-" if r is None else str(r[key])


if __name__ == "__main__":
    sys.exit(main())
