"""On a CUDA machine: train each preset family briefly with bf16 autocast and torch.compile and
print step time, achieved TFLOP/s against the device's peak, and peak memory.

    python -m benchmarks.gpu_smoke [--steps 30] [--peak-tflops X] [--presets a,b,...]

The achieved rate counts the analytic matmul FLOPs of one ACT step (ponder.models.flops) for
the global batch. The device's dense bf16 peak comes from --peak-tflops, or from the small table
below for a few common GPUs. Without a CUDA device it says so and exits 0: nothing here runs on
the CPU, and it is not part of `make bench`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ponder.models.flops import step_flops
from ponder.presets import get_config
from ponder.runs.config import apply_overrides
from ponder.runs.run import open_run
from ponder.training.loop import train_step

# dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by a substring of the name
PEAK_BF16 = {"H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 125.0, "RTX 4090": 165.0,
             "RTX 3090": 71.0, "V100": 125.0, "T4": 65.0}
FAMILIES = ("trm-sudoku9", "sudoku9", "maze9", "parity64", "demo")


def peak_of(name: str, given: float | None) -> float | None:
    if given:
        return given
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def measure(preset: str, steps: int, peak: float | None) -> dict:
    cfg = apply_overrides(get_config(preset), ["--train.device=cuda", "--train.precision=bf16",
                                               "--train.compile=true", "--train.progress=false",
                                               "--train.eval_every=0", "--train.checkpoint_every=0",
                                               "--train.tensorboard=off", f"--train.steps={steps + 5}"])
    with tempfile.TemporaryDirectory() as d:
        run = open_run(cfg, Path(d) / "run")
        torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(steps + 5):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            train_step(run)
            torch.cuda.synchronize()
            if i >= 5:  # the first steps compile
                times.append(time.perf_counter() - t0)
        flops = step_flops(cfg.model, seq_len=run.task.seq_len, vocab_size=run.task.vocab_size,
                           batch_size=cfg.train.batch_size)["total"]
    sec = statistics.median(times)
    tflops = flops / sec / 1e12
    return {"preset": preset, "step_ms": 1e3 * sec, "tflops": tflops,
            "of_peak": None if peak is None else tflops / peak,
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: the table)")
    ap.add_argument("--presets", default=",".join(FAMILIES))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (this script runs on a GPU machine)")
        return 0
    name = torch.cuda.get_device_name()
    peak = peak_of(name, args.peak_tflops)
    print(f"{name}; dense bf16 peak {peak or 'unknown (pass --peak-tflops)'} TFLOP/s; torch {torch.__version__}")
    print(f"{'preset':<16} {'step ms':>9} {'TFLOP/s':>8} {'of peak':>8} {'peak GiB':>9}")
    for preset in args.presets.split(","):
        r = measure(preset.strip(), args.steps, peak)
        frac = "n/a" if r["of_peak"] is None else f"{100 * r['of_peak']:.1f}%"
        print(f"{r['preset']:<16} {r['step_ms']:>9.1f} {r['tflops']:>8.2f} {frac:>8} {r['peak_mem_gb']:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
