"""Shared helpers: machine description, running jobs side by side, result fragments, assembling
BENCHMARKS.md.

Each benchmark writes `benchmarks/results/NAME.md` (a Markdown section) and `NAME.json` (the
raw figures). `assemble()` joins the sections in a fixed order under a header naming the
machine, so re-running one benchmark keeps the others' sections.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ponder.training.precision import cpu_flags, native_bf16

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ORDER = ["demo", "equivalence", "sudoku9", "maze9", "thresholds", "hard_data", "hard_recipes", "finetune", "pathology", "parity",
         "parity_cell", "parity_speed", "throughput", "contention", "precision_compile", "bf16_accuracy",
         "scale_out", "deltanet",
         "lm_compare", "arc_baselines", "arc_runs", "arc_solve", "arc_cycles",
         "health", "rescue", "estimators", "decisive"]
THRESHOLDS = (0.5, 0.8, 0.9, 0.95)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_summary() -> dict:
    """What a section names of the CPU: model, cores, its native bf16 flags (ponder's own reading,
    `ponder.training.precision`) and torch's version."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "bf16_flags": native_bf16(cpu_flags()) or [],
            "torch": torch.__version__}


def machine() -> str:
    cpu = cpu_model()
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}, {platform.system()}")


def matmul_gflops(threads: int | None = None, size: int = 1024, repeats: int = 7, inner: int = 10,
                  dtype: torch.dtype = torch.float32) -> float:
    """size x size matmul rate in GFLOP/s of `dtype` (fp32 by default; median over repeats), on
    `threads` torch threads (default: the current setting, which is restored)."""
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
        a @ b
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(inner):
                a @ b
            times.append((time.perf_counter() - t0) / inner)
    finally:
        torch.set_num_threads(old)
    return 2 * size**3 / statistics.median(times) / 1e9


def counted_flops(fn) -> int:
    """Matrix FLOPs that `fn()` really runs (forward and backward alike), counted by
    torch.utils.flop_counter as the ops dispatch: what an objective computes, trajectories,
    extra forwards and all, rather than an analytic formula of one step."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    # the CPU kernel of scaled_dot_product_attention has no formula in torch's table (CUDA's do)
    # (tensor arguments arrive as their shapes)
    cpu_sdpa = {
        aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *a, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *a, out_shape=None, **kw: fc.sdpa_backward_flop_count(g, q, k, v),
    }
    with fc.FlopCounterMode(display=False, custom_mapping=cpu_sdpa) as counter:
        fn()
    return int(counter.get_total_flops())


def run_jobs(commands: list[list[str]], jobs: int, *, env: dict | None = None) -> None:
    """Run the commands, at most `jobs` at once, each starting as soon as a slot frees; the first
    failure ends the benchmark with its command and the end of its stderr."""
    pending, running = list(commands), []
    while pending or running:
        while pending and len(running) < jobs:
            log = tempfile.TemporaryFile(mode="w+")
            running.append((subprocess.Popen(pending.pop(0), env=env, stdout=subprocess.DEVNULL, stderr=log,
                                             text=True), log))
        time.sleep(1)
        for proc, log in [r for r in running if r[0].poll() is not None]:
            running.remove((proc, log))
            log.seek(0)
            tail = log.read()[-800:]
            log.close()
            if proc.returncode != 0:
                sys.exit(f"failed: {' '.join(map(str, proc.args))}\n{tail}")


def finished_run(run_dir: Path) -> bool:
    """Has the run in `run_dir` ended with its final evaluation (eval/report.json)?"""
    return (run_dir / "eval" / "report.json").exists()


def write_fragment(name: str, markdown: str, data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + f"\n\n_Measured {stamp} on: {machine()}._\n")
    (RESULTS / f"{name}.json").write_text(json.dumps({"measured": stamp, "machine": machine(), **data}, indent=1))


def assemble() -> Path:
    parts = ["# Benchmarks", "",
             "Written by `make bench` (scripts in `benchmarks/`, one section each; a section names the machine "
             "and date it was measured on). Timings on a shared 2-core machine are noisy: ratios are measured "
             "in the same run and medians are over repeats.", ""]
    for name in ORDER + sorted(p.stem for p in RESULTS.glob("*.md") if p.stem not in ORDER):
        path = RESULTS / f"{name}.md"
        if path.exists():
            parts += [path.read_text().rstrip(), ""]
    out = ROOT / "BENCHMARKS.md"
    out.write_text("\n".join(parts))
    return out


def threshold_table(run_dir: Path, threads: int, thresholds=THRESHOLDS) -> tuple[str, list[dict]]:
    """Re-evaluate a trained run with stricter Q-halt thresholds (no retraining): exact vs steps."""
    from ponder.runs.trained import load_trained
    from ponder.training.evaluate import evaluate_split
    from ponder.training.precision import autocast

    torch.set_num_threads(threads)
    rows = []
    for t in thresholds:
        model, task, cfg, _ = load_trained(run_dir, [f"--halt.threshold={t}"])
        device = next(model.parameters()).device  # the run's device, in the run's precision
        with autocast(device, cfg.train.precision):
            r = evaluate_split(model, task.test, task.metric, max_steps=cfg.halt.max_steps, batch_size=250,
                               device=device, budgets=False)
        rows.append({"threshold": t, "exact": r["exact"], "mean_steps": r["mean_steps"],
                     "wrong_halt_frac": r["wrong_halt_frac"], "seconds": r["seconds_adaptive"]})
    m = cfg.halt.max_steps
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    md = ["Stricter halting at inference (`ponder eval RUN --halt.threshold=T`, same weights): a sample "
          "halts once the probe's probability that its answer is exactly right exceeds T "
          f"(table measured {stamp}, {threads} thread(s)).", "",
          "| threshold | exact (held-out) | mean steps | share of M steps | halts on a wrong answer | inference time |",
          "|---|---|---|---|---|---|"]
    md += [f"| {r['threshold']:g} | {100 * r['exact']:.1f}% | {r['mean_steps']:.2f} | "
           f"{100 * r['mean_steps'] / m:.0f}% | {100 * (r['wrong_halt_frac'] or 0):.1f}% | {r['seconds']:.1f}s |"
           for r in rows]
    return "\n".join(md), rows
