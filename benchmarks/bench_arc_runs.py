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

from benchmarks.common import RESULTS, matmul_gflops, write_fragment
from ponder.arc.data import DATA_VERSION
from ponder.arc.evaluation import evaluate_arc, to_dict, write_arc_eval
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
    """The run's training log records (every log_every steps) and its evaluation records."""
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") == "train":
            rows.append({"kind": "train", **{k: r.get(k) for k in ("step", "loss", "step_exact", "step_cell",
                                                                    "halted_mean_steps", "time_sec_per_step")}})
        elif r.get("kind") == "eval":
            rows.append({"kind": "eval", **{k: r.get(k) for k in ("step", "test_exact", "test_cell", "train_exact",
                                                                   "train_cell", "test_mean_steps")}})
    return rows


def _table(rows: list[tuple[str, dict]]) -> list[str]:
    out = ["| | fractional pass@1 | fractional pass@2 | all-or-nothing pass@1 | all-or-nothing pass@2 | "
           "tasks solved (all tests, pass@2) |", "|---|---|---|---|---|---|"]
    for name, r in rows:
        f, a = r["summary"]["fractional"], r["summary"]["all_or_nothing"]
        out.append(f"| {name} | {_pct(f['pass@1'])} | {_pct(f['pass@2'])} | {_pct(a['pass@1'])} | {_pct(a['pass@2'])} "
                   f"| {len(r['solved_all_tests_at_2'])} of {r['n_tasks']} |")
    return out


def markdown(data: dict) -> str:
    """The fragment, from the saved figures (so it can be rewritten without re-running)."""
    machine, runs = data["machine_load"], data["runs"]
    head = [f"Two short CPU runs, scored by ARC's rules (`ponder arc eval`; {data['data_version']}). **Far below "
            f"the issue's protocol** (one hour x 3 seeds per mode): one seed, at most {data['minutes']:g} minutes of "
            f"training each, both runs at once with one torch thread each at `nice -n 10` on a shared 2-core "
            f"machine (load average before: {', '.join(f'{x:.1f}' for x in machine['loadavg_before'])}; after "
            f"training: {', '.join(f'{x:.1f}' for x in machine['loadavg_after_training'])}; fp32 1024 matmul "
            f"{machine['matmul_gflops_1_thread']:.1f} GFLOP/s on one thread). Both models are essentially untrained "
            f"after this budget: read the scores as a check of the pipeline, not of the method. Training tasks are "
            f"the first {data['train_tasks']} small training tasks (seen in training).", "",
            "| run | optimizer steps | wall time (data + training) | last training log | last evaluation record |",
            "|---|---|---|---|---|"]
    for preset, e in runs.items():
        tr = [c for c in e["curve"] if c["kind"] == "train"]
        ev = [c for c in e["curve"] if c["kind"] == "eval"]
        t = (f"step {tr[-1]['step']}: loss {tr[-1]['loss']:.3f}, per-step cell {_pct(tr[-1]['step_cell'])}, "
             f"exact {_pct(tr[-1]['step_exact'])}") if tr else "none (fewer steps than log_every)"
        v = (f"step {ev[-1]['step']}: held-out cell {_pct(ev[-1]['test_cell'])}, exact {_pct(ev[-1]['test_exact'])}; "
             f"training cell {_pct(ev[-1]['train_cell'])}; mean steps {ev[-1]['test_mean_steps']:.2f}") if ev else "none"
        head.append(f"| {preset} | {e['steps']} | {e['train_wall_seconds'] / 60:.1f} min | {t} | {v} |")
    md = []
    for preset, e in runs.items():
        for split, r in e["splits"].items():
            md += [f"### {preset} on {split}: {r['n_tasks']} tasks ({r['label']})", ""]
            md += _table([(n, x) for n, x in r["scores"].items()]
                         + [(f"baseline: {n}", x) for n, x in r["baselines"].items()])
            md.append("")
            for n, x in r["scores"].items():
                ids = x["solved_all_tests_at_2"]
                md.append(f"- {n}: inference {r['seconds'][n]:.1f} s ({r['seconds_per_task'][n]:.2f} s per task), "
                          f"mean steps {r['mean_steps'][n]:.2f}; solved: {', '.join(ids) if ids else 'none'}")
            for n, x in r["baselines"].items():
                if x["solved_all_tests_at_2"]:
                    md.append(f"- baseline {n} solves: {', '.join(x['solved_all_tests_at_2'])}")
            if r.get("ttft"):
                upd = [t["updates"] for t in r["ttft"]]
                sec = [t["seconds"] for t in r["ttft"]]
                md.append(f"- test-time fine-tuning: {sum(upd) / len(upd):.1f} updates per task (min {min(upd)}, max "
                          f"{max(upd)}); fine-tuning took {sum(sec) / len(sec):.2f} s per task (max {max(sec):.2f} s: "
                          f"the budget can be overrun by one update, whose cost is unknown before the first)")
            md.append("")
    return "## ARC-AGI: short CPU runs of both modes\n\n" + "\n".join(head + [""] + md)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--minutes", type=float, default=12.0)
    ap.add_argument("--train-tasks", type=int, default=77)
    ap.add_argument("--ttft-seconds", type=float, default=0.0)
    ap.add_argument("--train-one", default=None)
    ap.add_argument("--rewrite", action="store_true", help="rebuild the Markdown from results/arc_runs.json and "
                    "the runs' metrics.jsonl (no training, no evaluation)")
    args = ap.parse_args(argv)
    root = Path(args.root)
    if args.train_one:
        _train_one(args.train_one, root / args.train_one, args.minutes)
        return
    if args.rewrite:
        data = json.loads((RESULTS / "arc_runs.json").read_text())
        data.setdefault("train_tasks", args.train_tasks)
        for preset, e in data["runs"].items():
            e["curve"] = _curve(root / preset)
            e["steps"] = int(e["checkpoint"].split("-")[-1])
            for r in e["splits"].values():
                r["run"] = f"{preset}/checkpoints/{e['checkpoint']}"  # relative to --root
        for k in ("measured", "machine"):
            data.pop(k, None)
        write_fragment("arc_runs", markdown(data), data)
        print(markdown(data))
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
    runs = {}
    for preset in PRESET_NAMES:
        run_dir = root / preset
        model, task, cfg, ckpt = load_trained(run_dir)
        trained = json.loads((run_dir / "bench_train.json").read_text())
        entry = {"checkpoint": ckpt.name, "steps": int(ckpt.name.split("-")[-1]),
                 "train_wall_seconds": trained["wall_seconds"], "curve": _curve(run_dir), "splits": {}}
        for split, max_tasks in (("arc1-eval", 0), ("arc1-train", args.train_tasks)):
            ttft = (TTFTSettings(seconds=args.ttft_seconds) if args.ttft_seconds and split == "arc1-eval"
                    and cfg.task.conditioning == "demonstrations" else None)
            result = evaluate_arc(model, cfg, split, metric=task.metric, device=torch.device("cpu"),
                                  run=f"{preset}/checkpoints/{ckpt.name}",
                                  max_tasks=max_tasks, ttft=ttft)
            write_arc_eval(result, run_dir / "arc-eval" / split)
            entry["splits"][split] = to_dict(result)
        runs[preset] = entry
    machine["loadavg_end"] = os.getloadavg()
    data = {"machine_load": machine, "minutes": args.minutes, "train_tasks": args.train_tasks,
            "data_version": DATA_VERSION, "runs": runs}
    write_fragment("arc_runs", markdown(data), data)
    print(markdown(data))


if __name__ == "__main__":
    main()
