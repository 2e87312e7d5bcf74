"""Precision and compile on this CPU: bf16 autocast against fp32, and torch.compile against eager,
per preset family, with the same-run matmul rates of both precisions.

For each preset a real training step (`train_step`: the objective's forward, backward, clip,
optimizer) is timed after warm-up, eager in fp32 and bf16, then compiled in each precision,
where the first steps' excess over the steady step is the compile time. The recursive presets
compile as `train.compile=true` does (the recursion stack; the recurrent cell's whole training
trajectory); the language model has no recursion, so its whole loss function is compiled here to
show what compile would give it. Matrix FLOPs per step are counted as the step runs (benchmarks.common.counted_flops),
so the achieved rate can be put beside the matmul rate of the same precision. The TRM-size step
(d=512, 2 layers, T=3, n=6, batch 64, 81 tokens) is measured the same way.

The compile rows give ponder.training.compiling.MEASURED: per family, the lowest speed-up and the
longest compile time seen (printed at the end as the table to paste there).
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import counted_flops, matmul_gflops, write_fragment
from ponder.models.recursive import ModelConfig
from ponder.presets import get_config
from ponder.runs.config import apply_overrides
from ponder.runs.run import open_run
from ponder.training.compiling import family
from ponder.training.loop import train_step
from ponder.training.precision import NATIVE_BF16_FLAGS, cpu_flags

THREADS = 2
WARMUP, TIMED, COMPILE_WARMUP = 2, 8, 3
SMALL_DATA = {"sudoku": ["--task.n_train=512", "--task.n_test=64"], "maze": ["--task.n_train=512", "--task.n_test=64"],
              "parity": ["--task.n_train=2048", "--task.n_test=64"], "lm": []}
PRESETS = ("demo", "sudoku9", "maze9", "parity64-rnn", "lm-small-hybrid", "trm-size")


def _config(name: str, precision: str, compiled: bool):
    base = "sudoku9" if name == "trm-size" else name
    cfg = get_config(base)
    over = [f"--train.precision={precision}", f"--train.compile={'true' if compiled and name in _STACKED else 'false'}",
            f"--train.threads={THREADS}", "--train.progress=false", "--train.eval_every=0",
            "--train.checkpoint_every=0", "--train.tensorboard=off", "--train.log_every=0", "--train.target=0",
            "--train.steps=100000", *SMALL_DATA[cfg.task.name]]
    if getattr(cfg.task, "curriculum", False):  # it rises on logged figures, and a timed step logs none
        over.append("--task.curriculum=false")
    if name == "trm-size":
        cfg.model = ModelConfig(d_model=512, n_heads=8, n_layers=2, mixer="attention", h_cycles=3, l_cycles=6)
        over += ["--train.batch_size=64"]
    return apply_overrides(cfg, over)


# presets whose recursion train.compile compiles (the stack of blocks; the cell's trajectory)
_STACKED = ("demo", "sudoku9", "maze9", "parity64-rnn", "trm-size")


def measure(name: str, precision: str, compiled: bool) -> dict:
    """Median step seconds after warm-up; with `compiled`, the compile seconds; FLOPs per step."""
    torch._dynamo.reset()
    cfg = _config(name, precision, compiled)
    with tempfile.TemporaryDirectory() as d:
        # a cold compile, as a run's first: inductor's on-disk caches start empty for each measurement
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(d) / "inductor")
        run = open_run(cfg, Path(d) / "run")
        if compiled and name not in _STACKED:  # no stack: compile the model's whole step here
            attr = "loss" if getattr(run.model, "token_objective", False) else "step"
            setattr(run.model, attr, torch.compile(getattr(run.model, attr)))
        run.callbacks.call("on_train_start", run)
        first = []
        for _ in range(COMPILE_WARMUP if compiled else WARMUP):
            t0 = time.perf_counter()
            train_step(run)
            first.append(time.perf_counter() - t0)
        times = []
        for _ in range(TIMED):
            t0 = time.perf_counter()
            train_step(run)
            times.append(time.perf_counter() - t0)
        flops = counted_flops(lambda: train_step(run)) if not compiled else None
        params = sum(p.numel() for p in run.model.parameters())
        kind = family(run.model)
    step = statistics.median(times)
    out = {"preset": name, "precision": precision, "compiled": compiled, "step_s": step, "family": kind,
           "params": params}
    if compiled:
        out["compile_s"] = max(0.0, sum(first) - len(first) * step)
    else:
        out["flops"] = flops
    return out


def main() -> None:
    torch.set_num_threads(THREADS)
    flags = cpu_flags() or set()
    native = [f for f in NATIVE_BF16_FLAGS if f in flags]
    rate = {"fp32": matmul_gflops(THREADS), "bf16": matmul_gflops(THREADS, dtype=torch.bfloat16)}
    rows = []
    for name in PRESETS:
        for precision in ("fp32", "bf16"):
            for compiled in (False, True):
                if name == "trm-size" and compiled and precision == "bf16":
                    continue  # minutes of compile for the row the CPU answer does not hinge on
                r = measure(name, precision, compiled)
                rows.append(r)
                print(r, flush=True)
    rate_after = {"fp32": matmul_gflops(THREADS), "bf16": matmul_gflops(THREADS, dtype=torch.bfloat16)}
    write(rows, rate, rate_after, native)


def write(rows: list[dict], rate: dict, rate_after: dict, native: list[str]) -> None:
    """The BENCHMARKS.md section and its JSON from the measured rows (a preset without compiled
    rows shows n/a there)."""
    get = {(r["preset"], r["precision"], r["compiled"]): r for r in rows}
    presets = [p for p in PRESETS if (p, "fp32", False) in get]
    md = ["## Precision and compile on the CPU", "",
          f"`python -m benchmarks.bench_precision_compile`, {THREADS} threads. Native bf16 flags of this CPU: "
          f"{', '.join(native) or 'none'}. Same-run 1024x1024 matmul: fp32 {rate['fp32']:.0f} GFLOP/s, bf16 "
          f"{rate['bf16']:.0f} GFLOP/s at the start ({rate_after['fp32']:.0f} / {rate_after['bf16']:.0f} at the end). "
          "A step is `train_step` (forward, backward, clip, optimizer) after warm-up, median of "
          f"{TIMED} (the TRM-size step: fewer, see the JSON); FLOPs are the matrix FLOPs the step really ran (counted); \"of matmul\" is the achieved rate "
          "over the same-run matmul rate of that precision. Compile time: the first steps' excess over the "
          f"steady step. Load average when the section was written: {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores (other jobs shared the machine: compare the matmul rates with an idle run's).", "",
          "| preset | params | GFLOP/step | fp32 ms | bf16 ms | bf16 speed-up | fp32 of matmul | bf16 of matmul | "
          "compiled fp32 ms (x) | compiled bf16 ms (x) | compile s |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in presets:
        e32, e16 = get[(name, "fp32", False)], get[(name, "bf16", False)]
        c32, c16 = get.get((name, "fp32", True)), get.get((name, "bf16", True))
        gf = e32["flops"] / 1e9
        ach = {p: gf / get[(name, p, False)]["step_s"] for p in ("fp32", "bf16")}

        def comp(c, e):
            return "n/a" if c is None else f"{1e3 * c['step_s']:.0f} ({e['step_s'] / c['step_s']:.2f}x)"

        secs = "/".join(f"{c['compile_s']:.0f}" for c in (c32, c16) if c is not None)
        label = name if name in _STACKED else f"{name} (whole step compiled)"
        md.append(f"| {label} | {e32['params'] / 1e6:.2f}M | {gf:.2f} | {1e3 * e32['step_s']:.0f} | "
                  f"{1e3 * e16['step_s']:.0f} | {e32['step_s'] / e16['step_s']:.2f}x | "
                  f"{100 * ach['fp32'] / rate['fp32']:.0f}% | {100 * ach['bf16'] / rate['bf16']:.0f}% | "
                  f"{comp(c32, e32)} | {comp(c16, e16)} | {secs} |")
    measured: dict[str, tuple[float, float]] = {}
    for r in rows:
        if r["compiled"] and r["preset"] in _STACKED:
            eager = get[(r["preset"], r["precision"], False)]
            speedup = eager["step_s"] / r["step_s"]
            old = measured.get(r["family"], (float("inf"), 0.0))
            measured[r["family"]] = (min(old[0], speedup), max(old[1], r["compile_s"]))
    md += ["", "What `train.compile=auto` reads (ponder.training.compiling.MEASURED, the lowest speed-up and "
           "the longest compile time per family): " + "; ".join(
               f"{k}: {s:.2f}x, {c:.0f} s" for k, (s, c) in sorted(measured.items())) + "."]
    print("MEASURED = " + repr({("cpu", k): (round(s, 2), round(c)) for k, (s, c) in measured.items()}))
    write_fragment("precision_compile", "\n".join(md), {"rows": rows, "matmul_gflops": rate,
                                                        "matmul_gflops_end": rate_after, "native_bf16": native,
                                                        "measured": {k: list(v) for k, v in measured.items()}})


if __name__ == "__main__":
    main()
