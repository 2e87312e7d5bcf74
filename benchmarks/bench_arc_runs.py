"""ARC-AGI: short CPU runs of both conditioning modes, scored by ARC's rules (`ponder arc eval`).

Trains `arc-small-demos` and `arc-small-embedding` (ARC-AGI-1 tasks whose grids all fit 10x10) for
at most `--minutes` each (both at once, one torch thread each: the machine has 2 cores), then scores
each run on the 77 small evaluation tasks and on small training tasks: pass@1/pass@2 under both
rules, beside every baseline on the same tasks, the ids of the tasks solved, and inference time with
adaptive halting against always M steps. With `--ttft-seconds`, the demonstrations run is also
scored after test-time fine-tuning. The learning curves come from the runs' metrics.jsonl.

    python -m benchmarks.bench_arc_runs --root RUNS [--minutes 12] [--train-tasks 77] [--ttft-seconds 0]

Runs already trained under --root are evaluated again, not retrained.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import matmul_gflops, write_fragment
from ponder.arc.data import DATA_VERSION
from ponder.arc.evaluation import evaluate_arc, to_dict, write_arc_eval
from ponder.arc.scoring import format_score_table
from ponder.arc.ttft import TTFTSettings
from ponder.config import apply_overrides
from ponder.presets import PRESETS
from ponder.run import load_trained, train_run

PRESET_NAMES = ("arc-small-demos", "arc-small-embedding")


def _train_one(preset: str, run_dir: Path, minutes: float) -> None:
    cfg = apply_overrides(PRESETS.get(preset).make(), [f"--train.max_minutes={minutes:g}", "--train.threads=1",
                                                      "--train.progress=false", "--train.tensorboard=off"])
    t0 = time.perf_counter()
    train_run(cfg, run_dir, final_eval=False)
    (run_dir / "bench_train.json").write_text(json.dumps({"wall_seconds": time.perf_counter() - t0}))


def _curve(run_dir: Path) -> list[dict]:
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") == "train":
            rows.append({k: r.get(k) for k in ("step", "loss", "step_exact", "step_cell", "halted_mean_steps",
                                               "time_sec_per_step")})
    return rows


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--minutes", type=float, default=12.0)
    ap.add_argument("--train-tasks", type=int, default=77)
    ap.add_argument("--ttft-seconds", type=float, default=0.0)
    ap.add_argument("--train-one", default=None)
    args = ap.parse_args(argv)
    root = Path(args.root)
    if args.train_one:
        _train_one(args.train_one, root / args.train_one, args.minutes)
        return
    machine = {"loadavg_before": os.getloadavg(), "matmul_gflops_1_thread": matmul_gflops(threads=1)}
    todo = [p for p in PRESET_NAMES if not (root / p / "bench_train.json").exists()]
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.bench_arc_runs", "--root", str(root),
                               "--minutes", str(args.minutes), "--train-one", p]) for p in todo]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"training failed: {p.args}")
    machine["loadavg_after_training"] = os.getloadavg()
    torch.set_num_threads(2)
    runs, md = {}, []
    for preset in PRESET_NAMES:
        run_dir = root / preset
        model, task, cfg, ckpt = load_trained(run_dir)
        curve = _curve(run_dir)
        trained = json.loads((run_dir / "bench_train.json").read_text())
        entry = {"checkpoint": ckpt.name, "steps": curve[-1]["step"] if curve else 0,
                 "train_wall_seconds": trained["wall_seconds"], "curve": curve, "splits": {}}
        for split, max_tasks in (("arc1-eval", 0), ("arc1-train", args.train_tasks)):
            ttft = (TTFTSettings(seconds=args.ttft_seconds) if args.ttft_seconds and split == "arc1-eval"
                    and cfg.task.conditioning == "demonstrations" else None)
            result = evaluate_arc(model, cfg, split, metric=task.metric, device=torch.device("cpu"), run=str(ckpt),
                                  max_tasks=max_tasks, ttft=ttft)
            write_arc_eval(result, run_dir / "arc-eval" / split)
            entry["splits"][split] = to_dict(result)
            md += [f"### {preset} on {split}: {result.info['n_tasks']} tasks ({result.label})", "",
                   format_score_table([(a.name, a.report) for a in result.answers]
                                      + [(f"baseline: {n}", r) for n, r in result.baselines.items()]), ""]
            for a in result.answers:
                ids = a.report.solved_ids(2)
                md.append(f"- {a.name}: inference {a.predictions.seconds:.1f} s "
                          f"({result.info['seconds_per_task'][a.name]:.2f} s per task), mean steps "
                          f"{result.info['mean_steps'][a.name]:.2f}; solved: {', '.join(ids) if ids else 'none'}")
            for n, r in result.baselines.items():
                ids = r.solved_ids(2)
                if ids:
                    md.append(f"- baseline {n} solves: {', '.join(ids)}")
            md.append("")
        runs[preset] = entry
    machine["loadavg_end"] = os.getloadavg()
    head = [f"Two short CPU runs, scored by ARC's rules (`ponder arc eval`; {DATA_VERSION}). **Far below the "
            f"issue's protocol** (one hour x 3 seeds per mode): one seed, at most {args.minutes:g} minutes of "
            f"training each, both runs at once with one torch thread each on a shared 2-core machine (load "
            f"average before: {', '.join(f'{x:.1f}' for x in machine['loadavg_before'])}; fp32 1024 matmul "
            f"{machine['matmul_gflops_1_thread']:.1f} GFLOP/s on one thread). Training tasks are the first "
            f"{args.train_tasks} small training tasks (seen in training).", "",
            "| run | optimizer steps | training wall time | loss first -> last | per-step exact (train, last log) |",
            "|---|---|---|---|---|"]
    for preset, e in runs.items():
        c = e["curve"]
        head.append(f"| {preset} | {e['steps']} | {e['train_wall_seconds'] / 60:.1f} min | "
                    f"{c[0]['loss']:.3f} -> {c[-1]['loss']:.3f} | {_pct(c[-1]['step_exact'])} |" if c else
                    f"| {preset} | 0 | | | |")
    head.append("")
    for preset, e in runs.items():
        pts = e["curve"]
        pick = pts[:: max(1, len(pts) // 8)] + ([pts[-1]] if pts and pts[-1] is not pts[:: max(1, len(pts) // 8)][-1]
                                                 else [])
        head.append(f"- {preset} learning curve (step: loss / per-step cell accuracy): "
                    + "; ".join(f"{p['step']}: {p['loss']:.3f} / {_pct(p['step_cell'])}" for p in pick))
    head.append("")
    write_fragment("arc_runs", "## ARC-AGI: short CPU runs of both modes\n\n" + "\n".join(head + md),
                   {"machine_load": machine, "minutes": args.minutes, "data_version": DATA_VERSION, "runs": runs})
    print("\n".join(head + md))


if __name__ == "__main__":
    main()
