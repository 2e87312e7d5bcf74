"""bf16 against fp32 at the same steps: does training under bf16 autocast reach the accuracy of
fp32 within the spread of seeds? (issue "A CPU hour that counts": the row "bf16 against fp32,
same steps: held-out exact of the demo and sudoku9".)

For each preset, SEEDS seeds are trained in fp32 and under `train.precision=bf16` for the same
number of optimizer steps (the demo preset without its early stop at its target, so both stop at
the same step; `sudoku9` for STEPS_SUDOKU9 steps, fewer than its 30-minute recipe), one run at a
time on every core. The section gives held-out exact (adaptive halting) per seed, the mean and the
spread of each precision, whether the difference of the means lies within the larger spread, and
the minutes each run took (wall time of training, evaluations included).

On a CPU without native bf16 (no amx_bf16 or avx512_bf16 flag) `train.precision=bf16` is refused;
the script then says so and measures nothing.

The runs live in OUT (default runs/bench-bf16-accuracy/): a finished run is kept, an interrupted
one resumed. `--rewrite` writes the section from the finished runs without training.

Settings (environment): PONDER_BENCH_BF16_SEEDS (3), PONDER_BENCH_BF16_STEPS_DEMO (1000),
PONDER_BENCH_BF16_STEPS_SUDOKU9 (1000), PONDER_BENCH_BF16_PRESETS ("demo,sudoku9"),
PONDER_BENCH_BF16_OUT.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from statistics import mean, pstdev

from benchmarks.common import ROOT, cpu_summary, finished_run, run_jobs, write_fragment
from ponder.training.in_training import wall_seconds
from ponder.training.precision import cpu_flags, native_bf16

SEEDS = int(os.environ.get("PONDER_BENCH_BF16_SEEDS", "3"))
STEPS = {"demo": int(os.environ.get("PONDER_BENCH_BF16_STEPS_DEMO", "1000")),
         "sudoku9": int(os.environ.get("PONDER_BENCH_BF16_STEPS_SUDOKU9", "1000"))}
PRESETS = [p for p in os.environ.get("PONDER_BENCH_BF16_PRESETS", "demo,sudoku9").split(",") if p]
OUT = Path(os.environ.get("PONDER_BENCH_BF16_OUT", str(ROOT / "runs" / "bench-bf16-accuracy")))
PRECISIONS = ("fp32", "bf16")


def run_name(preset: str, precision: str, seed: int) -> str:
    return f"{preset}-{precision}-s{seed}"


def train_all() -> None:
    """Every run in OUT, one at a time (each uses every core): finished kept, interrupted resumed."""
    commands = []
    for preset in PRESETS:
        for seed in range(SEEDS):
            for precision in PRECISIONS:  # alternating, so a drift of the machine hits both alike
                run_dir = OUT / run_name(preset, precision, seed)
                if finished_run(run_dir):
                    continue
                if (run_dir / "config.json").exists():
                    commands.append([sys.executable, "-m", "ponder", "train", preset, "--resume", str(run_dir)])
                    continue
                commands.append([sys.executable, "-m", "ponder", "train", preset, "--run-dir", str(run_dir),
                                 f"--train.precision={precision}", f"--train.seed={seed}",
                                 f"--train.steps={STEPS[preset]}", "--train.target=0", "--train.progress=false"])
    run_jobs(commands, 1, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def row(run_dir: Path) -> dict:
    cfg = json.loads((run_dir / "config.json").read_text())
    held = json.loads((run_dir / "eval" / "report.json").read_text())["held_out"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("kind") == "eval"]
    trains = [r for r in records if r.get("kind") == "train"]
    seconds = [t for t in wall_seconds(evals) if t is not None]
    return {"run": run_dir.name, "preset": cfg["preset"], "precision": cfg["train"]["precision"],
            "seed": cfg["train"]["seed"], "steps": trains[-1]["step"] if trains else 0,
            "exact": held["exact"], "cell": held["cell"], "mean_steps": held["mean_steps"],
            "minutes": max(seconds, default=0.0) / 60}


def section(rows: list[dict], flags: list[str]) -> str:
    md = ["## bf16 against fp32 at the same steps", "",
          "`python -m benchmarks.bench_bf16_accuracy`: each preset trained in fp32 and under bf16 autocast "
          "(`--train.precision=bf16`: weights, optimizer state, norms, losses and the halting arithmetic stay fp32) "
          f"for the same steps, {SEEDS} seeds each, one run at a time on every core, the demo without its early stop "
          f"at its target. CPU: {cpu_summary()['cpu']}; native bf16 flags: {', '.join(flags)}. Held-out exact with "
          "adaptive halting; minutes: wall time to the end of training, evaluations included, on the machine as it "
          "was (other jobs may have shared it: the speed of each precision's step is in the precision and compile "
          "section).", "",
          "| preset | steps | precision | held-out exact per seed | mean ± spread | cell | mean steps | "
          "minutes per run | difference of the means |", "|---|---|---|---|---|---|---|---|---|"]
    for preset in PRESETS:
        by = {p: sorted((r for r in rows if r["preset"] == preset and r["precision"] == p), key=lambda r: r["seed"])
              for p in PRECISIONS}
        if not all(by.values()):
            continue
        means = {p: mean(r["exact"] for r in by[p]) for p in PRECISIONS}
        spread = {p: pstdev([r["exact"] for r in by[p]]) for p in PRECISIONS}
        diff = means["bf16"] - means["fp32"]
        bar = max(spread.values())
        verdict = ("within the seed spread" if abs(diff) <= bar else
                   "bf16 higher by more than the seed spread" if diff > 0 else "bf16 lower by more than the seed spread")
        for p in PRECISIONS:
            cell = by[p]
            md.append(f"| {preset} | {'/'.join(sorted({str(r['steps']) for r in cell}))} | {p} | "
                      + ", ".join(f"{100 * r['exact']:.1f}%" for r in cell)
                      + f" | {100 * means[p]:.1f}% ± {100 * spread[p]:.1f} | "
                      f"{100 * mean(r['cell'] for r in cell):.1f}% | {mean(r['mean_steps'] for r in cell):.2f} | "
                      f"{mean(r['minutes'] for r in cell):.2f} | "
                      + (f"bf16 - fp32 = {100 * diff:+.1f} points: **{verdict}**" if p == "bf16" else "") + " |")
    md += ["", "Runs: " + ", ".join(f"`{r['run']}`" for r in rows) + "."]
    return "\n".join(md)


def main() -> None:
    flags = native_bf16(cpu_flags()) or []
    if not flags:
        sys.exit("bench_bf16_accuracy: this CPU has no native bf16 (no amx_bf16 or avx512_bf16 flag): "
                 "train.precision=bf16 is refused here, nothing to compare")
    if "--rewrite" not in sys.argv:
        train_all()
    dirs = [OUT / run_name(p, q, s) for p in PRESETS for s in range(SEEDS) for q in PRECISIONS]
    missing = [d for d in dirs if not finished_run(d)]
    if missing:
        sys.exit(f"bench_bf16_accuracy: {len(missing)} runs are not finished, e.g. {missing[0]}")
    rows = [row(d) for d in dirs]
    md = section(rows, flags)
    write_fragment("bf16_accuracy", md, {"rows": rows, "seeds": SEEDS, "steps": STEPS, "native_bf16": flags})
    print(md)


if __name__ == "__main__":
    main()
