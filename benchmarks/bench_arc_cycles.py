"""ARC-AGI: fine-tuning a trained run to more recursion steps (the "8 -> 20 cycles" experiment).

From one run of the ARC protocol (bench_arc_runs; default: the per-task-embedding run of seed 0,
trained at M = 6), four arms are scored on the small ARC-1 evaluation tasks by ARC's rules:

- the run as trained, at M = 6, and the same weights simply run to M = 15 (no training);
- `--init-from` the run, fine-tuned for `--minutes` at M = 15 (6 -> 15 keeps the ratio of 8 -> 20);
- the control: `--init-from` the run, fine-tuned for the same minutes at M = 6, so any gain of the
  long arm over the run is not just more training.

Both fine-tunes run at once, one torch thread each; their load reports (init_from.json) must show
every weight loaded.

    python -m benchmarks.bench_arc_cycles --root RUNS [--base RUNS/arc-small-embedding-s0] [--minutes 10]
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

from benchmarks.common import ROOT, matmul_gflops, write_fragment
from ponder.runs.config import apply_overrides
from ponder.runs.run import read_run_config, train_run
from ponder.runs.trained import load_trained
from ponder.tasks.arc.data import DATA_VERSION
from ponder.tasks.arc.evaluation import evaluate_arc, write_arc_eval
from ponder.training.checkpoint import resolve_checkpoint

SPLIT = "arc1-eval"
LONG = 15


def _finetune(base: Path, out: Path, max_steps: int, minutes: float) -> None:
    cfg = apply_overrides(read_run_config(resolve_checkpoint(base)),
                          [f"--halt.max_steps={max_steps}", f"--train.max_minutes={minutes:g}", "--train.threads=1",
                           "--train.progress=false", "--train.tensorboard=off"])
    t0 = time.perf_counter()
    train_run(cfg, out, init_from=base, final_eval=False)
    (out / "bench_train.json").write_text(json.dumps({"wall_seconds": time.perf_counter() - t0}))


def _score(run: Path, max_steps: int, out: Path) -> dict:
    if not (out / "report.json").exists():
        model, task, cfg, ckpt = load_trained(run, [f"--halt.max_steps={max_steps}"])
        result = evaluate_arc(model, cfg, SPLIT, metric=task.metric, device=torch.device("cpu"),
                              run=f"{run.name}/checkpoints/{ckpt.name} at M = {max_steps}")
        write_arc_eval(result, out)
    return json.loads((out / "report.json").read_text())


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def markdown(data: dict) -> str:
    md = ["## ARC-AGI: fine-tuning to more recursion steps", "",
          f"From `{data['base']}` ({data['base_steps']} optimizer steps at M = 6, the ARC protocol run of this "
          f"machine), scored on {SPLIT} by ARC's rules ({data['data_version']}). Fine-tunes: `--init-from` the run, "
          f"{data['minutes']:g} minutes each, both at once with one torch thread each, the run's own settings "
          f"otherwise (the long arm's load report: {data['load_report']}). fp32 1024 matmul "
          f"{data['matmul_gflops_1_thread']:.1f} GFLOP/s on one thread; load average when they started: "
          f"{', '.join(f'{x:.1f}' for x in data['loadavg_before'])}"
          + (" (other jobs shared the 2 cores, so each fine-tune had less than a core)"
             if data["loadavg_before"][0] > 0.5 else "") + ". Evaluation: 2 threads, adaptive halting and always M in the same process.", "",
          "| arm | fine-tuning steps | answers | fractional pass@2 | all-or-nothing pass@2 | tasks solved "
          "(pass@2) | target cells right per view | views exact | mean steps | seconds per task |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for arm in data["arms"]:
        r = arm["report"]
        for answers, s in r["scores"].items():
            acc = r["view_accuracy"][answers]
            md.append(f"| {arm['name']} | {arm['steps']} | {answers} | {_pct(s['summary']['fractional']['pass@2'])} | "
                      f"{_pct(s['summary']['all_or_nothing']['pass@2'])} | {len(s['solved_all_tests_at_2'])} of "
                      f"{r['n_tasks']} | {_pct(acc['cell'])} | {_pct(acc['exact'])} | "
                      f"{r['mean_steps'][answers]:.2f} | {r['seconds_per_task'][answers]:.2f} |")
    by = {a["name"]: a["report"] for a in data["arms"]}
    partly = []  # test inputs right (pass@2) in tasks not solved as a whole
    for arm in data["arms"]:
        for answers, s in arm["report"]["scores"].items():
            for t in s["tasks"]:
                right = [i for i, at in enumerate(t["solved_at"]) if at is not None and at <= 2]
                if right and len(right) < t["tests"]:
                    partly.append(f"{arm['name']}, {answers}: task {t['task']}, test input(s) "
                                  f"{', '.join(map(str, right))} of {t['tests']}")

    def cell(name: str) -> float:
        r = by[name]
        return r["view_accuracy"][next(k for k in r["scores"] if k.startswith("model, always"))]["cell"]

    long_arm = _pct(cell(f"fine-tuned at M = {LONG}"))
    md += ["", f"Target cells right per view, always M: fine-tuned at M = {LONG} {long_arm}, "
               f"its control at M = 6 {_pct(cell('fine-tuned at M = 6 (control)'))}, the run at M = 6 "
               f"{_pct(cell('the run, M = 6'))} and run on to M = {LONG} without training "
               f"{_pct(cell(f'the run, M = {LONG} (no training)'))}.", "",
           "Test inputs answered right (pass@2, counting from 0) in tasks not solved as a whole: "
           + ("; ".join(partly) if partly else "none") + ".", ""]
    return "\n".join(md)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=os.path.relpath(ROOT / "runs" / "bench-arc"))
    ap.add_argument("--base", default=None)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--finetune-one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    root = Path(args.root)
    base = Path(args.base) if args.base else root / "arc-small-embedding-s0"
    if not (base / "checkpoints").is_dir():
        raise SystemExit(f"no trained run at {base}: run benchmarks.bench_arc_runs first")
    arms = {m: root / f"cycles-{base.name}-M{m}" for m in (6, LONG)}
    if args.finetune_one:
        _finetune(base, arms[args.finetune_one], args.finetune_one, args.minutes)
        return
    data = {"base": base.name, "minutes": args.minutes, "data_version": DATA_VERSION}
    todo = [m for m, d in arms.items() if not (d / "bench_train.json").exists()]
    machine_file = root / f"cycles-{base.name}-machine.json"  # the machine as the fine-tunes found it
    if todo or not machine_file.exists():
        machine = {"loadavg_before": os.getloadavg(), "matmul_gflops_1_thread": matmul_gflops(threads=1)}
        procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.bench_arc_cycles", "--root", str(root),
                                   "--base", str(base), "--minutes", str(args.minutes), "--finetune-one", str(m)])
                 for m in todo]
        if any(p.wait() != 0 for p in procs):
            raise SystemExit("a fine-tune failed")
        machine_file.write_text(json.dumps(machine))
    data.update(json.loads(machine_file.read_text()))
    report = json.loads((arms[LONG] / "init_from.json").read_text())
    data["load_report"] = (f"{len(report['loaded'])} tensors loaded, {len(report['newly_initialised'])} newly "
                           f"initialised, {len(report['shape_mismatched'])} shape-mismatched, "
                           f"{len(report['unexpected'])} unexpected")
    torch.set_num_threads(2)
    step = lambda d: int(resolve_checkpoint(d).name.split("-")[-1])  # noqa: E731
    data["base_steps"] = step(base)
    data["arms"] = [
        {"name": "the run, M = 6", "steps": 0, "report": _score(base, 6, root / f"cycles-{base.name}-eval-M6")},
        {"name": f"the run, M = {LONG} (no training)", "steps": 0,
         "report": _score(base, LONG, root / f"cycles-{base.name}-eval-M{LONG}")},
        {"name": "fine-tuned at M = 6 (control)", "steps": step(arms[6]),
         "report": _score(arms[6], 6, arms[6] / "arc-eval")},
        {"name": f"fine-tuned at M = {LONG}", "steps": step(arms[LONG]),
         "report": _score(arms[LONG], LONG, arms[LONG] / "arc-eval")}]
    write_fragment("arc_cycles", markdown(data), data)
    print(markdown(data))


if __name__ == "__main__":
    main()
