"""9x9 Sudoku after 30 minutes of CPU training: exact accuracy beside the baselines, the
accuracy-vs-step-budget curve, and adaptive halting against always running M steps.

Settings (environment): PONDER_BENCH_MINUTES (30), PONDER_BENCH_THREADS (1: steady under other
load), PONDER_BENCH_PRECISION (the preset's fp32; `bf16` on a CPU with native bf16). The section
names the CPU, its native bf16 flags and the same-run fp32 and bf16 matmul rates."""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, ROOT, cpu_summary, matmul_gflops, threshold_table, write_fragment
from ponder.presets import get_config
from ponder.runs.config import apply_overrides
from ponder.runs.report import format_report
from ponder.runs.run import train_run
from ponder.training.precision import cpu_flags, native_bf16

MINUTES = float(os.environ.get("PONDER_BENCH_MINUTES", "30"))
THREADS = int(os.environ.get("PONDER_BENCH_THREADS", "1"))  # one thread: steady under other load
PRECISION = os.environ.get("PONDER_BENCH_PRECISION", "fp32")


def rates() -> dict[str, float]:
    """The same-run 1024x1024 matmul rates at THREADS threads: fp32, and bf16 where native."""
    out = {"fp32": matmul_gflops(THREADS)}
    if native_bf16(cpu_flags()):
        out["bf16"] = matmul_gflops(THREADS, dtype=torch.bfloat16)
    return out


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--thresholds-only":  # re-use a finished run
        add_thresholds(Path(sys.argv[2]))
        return
    cfg = apply_overrides(get_config("sudoku9"), [f"--train.max_minutes={MINUTES}", "--train.steps=1000000",
                                                  "--train.progress=false", f"--train.threads={THREADS}",
                                                  f"--train.precision={PRECISION}"])
    before = rates()
    run_dir = ROOT / "runs" / f"bench-sudoku9-{time.strftime('%Y%m%d-%H%M%S')}"
    t0 = time.perf_counter()
    report = train_run(cfg, run_dir)
    wall = time.perf_counter() - t0
    load = os.getloadavg()
    after = rates()
    bf16 = native_bf16(cpu_flags()) or []
    machine_text = (f"CPU: {cpu_summary()['cpu']} ({'native bf16: ' + ', '.join(bf16) if bf16 else 'no native bf16'}); "
                    "same-run 1024x1024 matmul at the start and end: "
                    + "; ".join(f"{k} {before[k]:.0f} / {after[k]:.0f} GFLOP/s" for k in before) + ".")
    steps_done = max(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").iterdir()
                     if p.name.startswith("step-"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(run_dir / "eval" / "accuracy_vs_steps.png", RESULTS / "sudoku9_accuracy_vs_steps.png")
    h = report["held_out"]
    m = h["max_steps"]
    md = [f"## 9x9 Sudoku after {MINUTES:g} minutes of CPU training (`sudoku9` preset)", "",
          f"{MINUTES:g} minutes of training in {PRECISION} on {THREADS} thread(s) (load average at the end "
          f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}; {steps_done} optimizer steps of batch {cfg.train.batch_size}; "
          f"{cfg.task.min_givens}-{cfg.task.max_givens} givens, {cfg.task.n_train} training puzzles with "
          f"augmentation, {h['n']} held-out puzzles), then evaluation of the EMA weights. Run: "
          f"`ponder train sudoku9 --train.max_minutes={MINUTES:g} --train.threads={THREADS} "
          f"--train.precision={PRECISION}`; whole benchmark {wall / 60:.1f} min. {machine_text}", "",
          # the report's "Evaluated:" line names the run's checkpoint by its path on this machine
          "\n".join(line for line in format_report(report).split("\n", 2)[2].split("\n")
                    if not line.startswith("Evaluated: ")).lstrip("\n"), "",
          f"**Adaptive halting vs always {m} steps:** {100 * h['exact']:.1f}% exact with {h['mean_steps']:.2f} "
          f"mean steps ({100 * h['mean_steps'] / m:.0f}% of the steps) vs {100 * h['exact_by_budget'][-1]:.1f}% "
          f"with {m}; inference wall time {h['seconds_adaptive']:.2f}s vs {h['seconds_all_steps']:.2f}s.", "",
          "![accuracy vs step budget](benchmarks/results/sudoku9_accuracy_vs_steps.png)"]
    write_fragment("sudoku9", "\n".join(md), {"minutes": MINUTES, "threads": THREADS, "load": load,
                                              "precision": PRECISION, "matmul_gflops": [before, after],
                                              "steps": steps_done, "wall_seconds": wall,
                                              "report": json.loads(json.dumps(report).replace(str(ROOT) + "/", "")),
                                              "run_dir": run_dir.name})
    add_thresholds(run_dir)


def add_thresholds(run_dir: Path) -> None:
    """Append the threshold table to the sudoku9 section (and its JSON)."""
    table, rows = threshold_table(run_dir, THREADS)
    md_path, json_path = RESULTS / "sudoku9.md", RESULTS / "sudoku9.json"
    text = md_path.read_text()
    marker = "\n\nStricter halting at inference"
    if marker in text:
        text = text[:text.index(marker)] + "\n\n" + text[text.index("_Measured"):]
    head, stamp = text.rsplit("\n\n_Measured", 1)
    md_path.write_text(head + "\n\n" + table + "\n\n_Measured" + stamp)
    data = json.loads(json_path.read_text())
    data["thresholds"] = rows
    json_path.write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
