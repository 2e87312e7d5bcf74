"""Gradient estimators on a trained recursive reasoner: peak memory and time per gradient against
the number of cycles T (BPTT, truncated-1, implicit), and the `ponder diagnose gradients` table.

The model is the `demo` preset (6x6 Sudoku TRM-mlp) trained by this script with one thread, or
the run given with `--from-run RUN_DIR`. One estimator step is one full outer cycle (2 latent
updates + 1 answer update) of the model's own composed step (ponder.training.estimator_hook).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import ROOT, write_fragment

THREADS = 1
TS = (8, 16, 32, 64, 128)
REPEATS = 5
BATCH = 16


def _trained_run() -> tuple[Path, float | None]:
    if len(sys.argv) > 2 and sys.argv[1] == "--from-run":
        return Path(sys.argv[2]), None
    from ponder.presets import get_config
    from ponder.runs.config import apply_overrides
    from ponder.runs.run import train_run

    cfg = apply_overrides(get_config("demo"), ["--train.progress=false", f"--train.threads={THREADS}"])
    run_dir = ROOT / "runs" / f"bench-estimators-demo-{time.strftime('%Y%m%d-%H%M%S')}"
    t0 = time.perf_counter()
    train_run(cfg, run_dir)
    return run_dir, time.perf_counter() - t0


def memory_scan(run_dir: Path) -> list[dict]:
    """Median time and peak torch bytes per gradient for each estimator and T."""
    from ponder.estimators import BPTT, Implicit, Truncated
    from ponder.experiments.diagnose import load_model_and_batch, peak_torch_bytes
    from ponder.training.estimator_hook import recursion_problem
    from ponder.training.objectives import task_loss

    model, b, cfg, _ = load_model_and_batch(str(run_dir), BATCH)
    prob = recursion_problem(model, model.init_state(len(b)), model.prepare(b),
                             lambda lg: task_loss(lg, b.labels, cfg.train.loss))
    ests = {"bptt": BPTT(), "truncated-1": Truncated(k=1),
            # forward solve capped at T iterations; GMRES adjoint with a fixed budget of 20 products
            "implicit": Implicit(solver="fixed_point", tol=1e-5, max_iter=None, adjoint="gmres", adjoint_tol=1e-5,
                                 adjoint_max_iter=20)}
    rows = []
    for T in TS:
        for name, est in ests.items():
            def call(est=est, T=T):
                return est.estimate(prob.step_fn, prob.z0, prob.leaf, prob.loss_fn, steps=T, params=prob.params)

            times = []
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                roll = call()
                times.append(time.perf_counter() - t0)
            peaks = [peak_torch_bytes(call)[1] for _ in range(2)]
            rows.append({"estimator": name, "T": T, "seconds": statistics.median(times), "peak_bytes": min(peaks),
                         "peak_bytes_runs": peaks, "stats": dict(roll.stats)})
            print(f"  {name:<12} T={T:<4} {statistics.median(times) * 1e3:8.1f} ms  {min(peaks) / 2**20:8.1f} MiB",
                  flush=True)
    return rows


def slopes(rows: list[dict]) -> dict[str, dict]:
    out = {}
    for name in dict.fromkeys(r["estimator"] for r in rows):
        sub = [r for r in rows if r["estimator"] == name]
        T = np.array([r["T"] for r in sub], float)
        out[name] = {"bytes_per_step": float(np.polyfit(T, [r["peak_bytes"] for r in sub], 1)[0]),
                     "seconds_per_step": float(np.polyfit(T, [r["seconds"] for r in sub], 1)[0])}
    return out


def main() -> None:
    torch.set_num_threads(THREADS)
    run_dir, train_seconds = _trained_run()
    load0 = os.getloadavg()
    rows = memory_scan(run_dir)
    fit = slopes(rows)
    from ponder.experiments.diagnose import diagnose_gradients, format_table

    tables = []
    for T in (2, 8):
        result = diagnose_gradients(os.path.relpath(run_dir), steps=T, ref_steps=32, batch=32, repeats=3,
                                    progress=False)
        tables.append(result)
        print(format_table(result), flush=True)
    load1 = os.getloadavg()
    report = run_dir / "eval" / "report.json"
    held = json.loads(report.read_text())["held_out"] if report.exists() else None
    quality = (f" (held-out exact {100 * held['exact']:.1f}%, {held['mean_steps']:.2f} mean ACT steps)" if held else "")

    md = ["## Gradient estimators on a trained reasoner (`ponder diagnose gradients`)", "",
          "Model: the `demo` preset (6x6 Sudoku, d=64 TRM-mlp, T=2 cycles of 2 latent + 1 answer update) "
          + (f"trained here in {train_seconds / 60:.1f} min on {THREADS} thread" if train_seconds else
             f"from run `{run_dir.name}` (`ponder train demo --train.threads=1`)") + quality
          + f"; {THREADS} thread; load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end "
          "(the machine is shared: times are noisy, memory is not). One estimator step = one full cycle "
          "of the model's own composed step (`ponder.training.estimator_hook`). Peak memory = peak live bytes of PyTorch's CPU "
          "allocator during one gradient, from torch.profiler allocation events (tracemalloc does not see them).", "",
          f"### Peak memory and time per gradient against T (batch {BATCH}, median of {REPEATS})", "",
          "| T | " + " | ".join(f"{n} MiB | {n} ms" for n in fit) + " | implicit forward iterations (mean / max) |",
          "|---|" + "---|---|" * len(fit) + "---|"]
    for T in TS:
        cells = []
        for n in fit:
            r = next(r for r in rows if r["estimator"] == n and r["T"] == T)
            cells += [f"{r['peak_bytes'] / 2**20:.1f}", f"{r['seconds'] * 1e3:.0f}"]
        st = next(r for r in rows if r["estimator"] == "implicit" and r["T"] == T)["stats"]
        md.append(f"| {T} | " + " | ".join(cells) + f" | {st['fwd_iters_mean']:.1f} / {st['fwd_iters_max']:.0f} |")
    md += ["", "Least-squares slopes over T: " + "; ".join(
        f"{n} {round(v['bytes_per_step'] / 2**20, 3) + 0.0:.3f} MiB/step ({round(v['bytes_per_step']) + 0:d} B), "
        f"{v['seconds_per_step'] * 1e3:.1f} ms/step" for n, v in fit.items())
        + ". Implicit: forward fixed-point iteration capped at T (tolerance 1e-5), GMRES adjoint with at most 20 "
        "products; its time follows the forward iterations actually run (last column), its memory does not "
        "depend on them. Truncated-1 still runs T-1 cycles without a graph, so its time grows with T.", ""]
    for result in tables:
        md += [f"### Agreement at T={result['steps']} (batch {result['batch']}, references: BPTT over "
               f"{result['ref_steps']} cycles, tight implicit)", "", "```", format_table(result), "```", ""]
        st = result["state"]
        own = next(r for r in result["rows"] if r["name"] == "bptt" and not r["estimator"].startswith("reference"))
        md += [f"At T={result['steps']} the relative residual at z_T is {st['residual_rel_z_T']:.2e} (at z*: "
               f"{st['residual_rel_z_star']:.1e}); BPTT through the deployed T has cosine "
               f"{own['bptt_long']['cosine']:.3f} and norm ratio {own['bptt_long']['norm_ratio']:.3g} against "
               f"BPTT over {result['ref_steps']} cycles.", ""]
    write_fragment("estimators", "\n".join(md), {"run_dir": str(run_dir.name), "train_seconds": train_seconds,
                                                 "load": [load0, load1], "scan": rows, "slopes": fit,
                                                 "diagnose": tables})


if __name__ == "__main__":
    main()
