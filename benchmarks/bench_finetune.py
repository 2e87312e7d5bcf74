"""Fine-tuning a trained 9x9 Sudoku run from M to 2M steps (`--init-from`), against a control
that fine-tunes for the same number of optimizer steps at M: accuracy on the hardest difficulty
bucket before and after. Needs the run of the sudoku9 benchmark (the newest runs/bench-sudoku9-*)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from benchmarks.common import ROOT, write_fragment

STEPS = int(os.environ.get("PONDER_BENCH_FINETUNE_STEPS", "600"))


def _hardest(report: dict) -> dict:
    bucket = report["held_out"]["by_difficulty"][-1]
    return {"range": f"{bucket['lo']:g}-{bucket['hi']:g}", "n": bucket["n"], "adaptive": bucket["exact"],
            "full_budget": bucket["exact_by_budget"][-1], "mean_steps": bucket["mean_steps"],
            "overall": report["held_out"]["exact"], "overall_full": report["held_out"]["exact_by_budget"][-1]}


def main() -> None:
    sources = sorted((ROOT / "runs").glob("bench-sudoku9-*"))
    if not sources:
        sys.exit("bench_finetune: run the sudoku9 benchmark first (no runs/bench-sudoku9-*)")
    source = sources[-1]
    m = json.loads((source / "config.json").read_text())["halt"]["max_steps"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    variants = {f"control: M={m}": [], f"longer: M={2 * m}": [f"--halt.max_steps={2 * m}"]}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs, dirs = {}, {}
    for name, extra in variants.items():  # both in parallel, one thread each
        dirs[name] = ROOT / "runs" / f"bench-finetune-{stamp}-{'control' if 'control' in name else 'longer'}"
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "ponder", "train", "sudoku9", "--init-from", str(source), "--run-dir", str(dirs[name]),
             f"--train.steps={STEPS}", "--train.warmup_steps=50", "--train.threads=1", "--train.progress=false",
             "--train.eval_every=0", *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for name, p in procs.items():
        if p.wait() != 0:
            sys.exit(f"bench_finetune: {name} failed: {p.stderr.read()[-500:]}")
    before = _hardest(json.loads((source / "eval" / "report.json").read_text()))
    rows = [("before (source run)", m, before)] + [
        (name, 2 * m if "longer" in name else m, _hardest(json.loads((d / "eval" / "report.json").read_text())))
        for name, d in dirs.items()]
    md = [f"## Fine-tuning to more steps: 9x9 Sudoku, M={m} -> {2 * m}", "",
          f"From the sudoku9 benchmark run, `ponder train sudoku9 --init-from RUN --halt.max_steps={2 * m}` "
          f"for {STEPS} more optimizer steps (one thread), against a control that fine-tunes for the same steps "
          f"at M={m}. Hardest difficulty bucket (solver hardness {before['range']}, n={before['n']}):", "",
          "| model | M | hardest: exact adaptive | hardest: exact at M steps | hardest: mean steps | all: exact adaptive | all: exact at M |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {name} | {mm} | {100 * r['adaptive']:.1f}% | {100 * r['full_budget']:.1f}% | {r['mean_steps']:.2f} | "
           f"{100 * r['overall']:.1f}% | {100 * r['overall_full']:.1f}% |" for name, mm, r in rows]
    write_fragment("finetune", "\n".join(md), {"source": source.name, "steps": STEPS,
                                               "rows": [{"model": n, "M": mm, **r} for n, mm, r in rows]})


if __name__ == "__main__":
    main()
