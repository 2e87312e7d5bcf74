"""Fine-tuning a trained 9x9 Sudoku run from M to 2M steps (`--init-from`), against a control
that fine-tunes for the same number of optimizer steps at M: accuracy on the hardest difficulty
bucket before and after, over several fine-tuning seeds. Needs the run of the sudoku9 benchmark
(the newest runs/bench-sudoku9-*).

`--add-seeds` keeps the seeds already in results/finetune.json (same source and steps) and runs
only the missing ones.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from statistics import mean, pstdev

from benchmarks.common import RESULTS, ROOT, write_fragment

STEPS = int(os.environ.get("PONDER_BENCH_FINETUNE_STEPS", "600"))
SEEDS = int(os.environ.get("PONDER_BENCH_FINETUNE_SEEDS", "3"))


def _hardest(report: dict) -> dict:
    bucket = report["held_out"]["by_difficulty"][-1]
    return {"range": f"{bucket['lo']:g}-{bucket['hi']:g}", "n": bucket["n"], "adaptive": bucket["exact"],
            "full_budget": bucket["exact_by_budget"][-1], "mean_steps": bucket["mean_steps"],
            "overall": report["held_out"]["exact"], "overall_full": report["held_out"]["exact_by_budget"][-1]}


def _run_seed(source, m: int, seed: int, stamp: str) -> list[dict]:
    """Both arms for one fine-tuning seed, in parallel, one thread each."""
    arms = {"control": (m, []), "longer": (2 * m, [f"--halt.max_steps={2 * m}"])}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = {}
    for arm, (_, extra) in arms.items():
        run_dir = ROOT / "runs" / f"bench-finetune-{stamp}-{arm}-s{seed}"
        procs[arm] = (run_dir, subprocess.Popen(
            [sys.executable, "-m", "ponder", "train", "sudoku9", "--init-from", str(source), "--run-dir", str(run_dir),
             f"--train.steps={STEPS}", f"--train.seed={seed}", "--train.warmup_steps=50", "--train.threads=1",
             "--train.progress=false", "--train.eval_every=0", *extra],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    rows = []
    for arm, (run_dir, p) in procs.items():
        if p.wait() != 0:
            sys.exit(f"bench_finetune: {arm} seed {seed} failed: {p.stderr.read()[-500:]}")
        rows.append({"arm": arm, "M": arms[arm][0], "seed": seed, "run": run_dir.name,
                     **_hardest(json.loads((run_dir / "eval" / "report.json").read_text()))})
    return rows


def main() -> None:
    sources = sorted((ROOT / "runs").glob("bench-sudoku9-*"))
    if not sources:
        sys.exit("bench_finetune: run the sudoku9 benchmark first (no runs/bench-sudoku9-*)")
    source = sources[-1]
    m = json.loads((source / "config.json").read_text())["halt"]["max_steps"]
    rows: list[dict] = []
    if "--add-seeds" in sys.argv and (RESULTS / "finetune.json").exists():
        previous = json.loads((RESULTS / "finetune.json").read_text())
        if previous.get("source") == source.name and previous.get("steps") == STEPS:
            rows = [r for r in previous.get("runs", []) if r["seed"] < SEEDS]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for seed in range(SEEDS):
        if not any(r["seed"] == seed for r in rows):
            rows += _run_seed(source, m, seed, stamp)
    before = _hardest(json.loads((source / "eval" / "report.json").read_text()))

    def cell(arm: str, key: str) -> str:
        vals = [100 * r[key] for r in rows if r["arm"] == arm]
        return f"{mean(vals):.1f}% ± {pstdev(vals):.1f}" if len(vals) > 1 else f"{vals[0]:.1f}%"

    def steps(arm: str) -> str:
        return f"{mean(r['mean_steps'] for r in rows if r['arm'] == arm):.2f}"

    md = [f"## Fine-tuning to more steps: 9x9 Sudoku, M={m} -> {2 * m}", "",
          f"From the sudoku9 benchmark run, `ponder train sudoku9 --init-from RUN --halt.max_steps={2 * m}` "
          f"for {STEPS} more optimizer steps (one thread), against a control that fine-tunes for the same steps "
          f"at M={m}; {SEEDS} fine-tuning seeds (mean ± spread over seeds; the source run is one). Hardest "
          f"difficulty bucket (solver hardness {before['range']}, n={before['n']}):", "",
          "| model | M | hardest: exact adaptive | hardest: exact at M steps | hardest: mean steps | "
          "all: exact adaptive | all: exact at M |", "|---|---|---|---|---|---|---|",
          f"| before (source run) | {m} | {100 * before['adaptive']:.1f}% | {100 * before['full_budget']:.1f}% | "
          f"{before['mean_steps']:.2f} | {100 * before['overall']:.1f}% | {100 * before['overall_full']:.1f}% |"]
    for arm, mm in (("control", m), ("longer", 2 * m)):
        md.append(f"| {arm}: M={mm} | {mm} | {cell(arm, 'adaptive')} | {cell(arm, 'full_budget')} | {steps(arm)} | "
                  f"{cell(arm, 'overall')} | {cell(arm, 'overall_full')} |")
    gains = [100 * (lo["full_budget"] - c["full_budget"]) for s in range(SEEDS)
             for lo in rows if lo["arm"] == "longer" and lo["seed"] == s
             for c in rows if c["arm"] == "control" and c["seed"] == s]
    md += ["", "Hardest bucket at the full budget, longer minus control, per seed: "
           + ", ".join(f"{g:+.1f}" for g in gains) + " points"
           + (f" (mean {mean(gains):+.1f}, spread {pstdev(gains):.1f}: "
              + ("no gain beyond seed spread)." if abs(mean(gains)) <= pstdev(gains) else "larger than the seed spread).")
              if len(gains) > 1 else ".")]
    write_fragment("finetune", "\n".join(md), {"source": source.name, "steps": STEPS, "seeds": SEEDS,
                                               "before": before, "runs": rows})


if __name__ == "__main__":
    main()
