"""`--halt.threshold=auto` on trained runs: the threshold it chooses on its calibration slice (the
last training samples: held out of training in a run trained with auto, seen in training in a
run trained with a fixed threshold and evaluated with auto), and on the held-out split its exact accuracy and share of M steps beside
fixed thresholds and always running M steps.

    python -m benchmarks.bench_thresholds [RUN_DIR ...] [--threads N] [--keep]

Each run directory is copied to a temporary directory and the copy is evaluated (the run itself is
left untouched). Without run directories (`make bench`): the latest runs/bench-sudoku9-* and
runs/bench-maze9-* that hold a checkpoint (written by those benchmarks, which run before this
one; trained with a fixed threshold) and a `demo` run trained here with halt.threshold=auto. `--keep` keeps the sections of the runs already in
benchmarks/results/thresholds.json that are not measured again (to add one run at a time).

Per run: `load_trained(RUN, ["--halt.threshold=auto"])` calibrates exactly as `ponder eval RUN
--halt.threshold=auto` does (ponder.training.calibrate). The held-out split is then rolled out once at M
steps and the head's own rule replayed for every threshold (ponder.training.calibrate.replay: the step each
sample halts at and whether its answer there is right); the auto choice is also evaluated with
real early exit (ponder.training.evaluate.evaluate_split), whose figures the table shows and which must
agree with the replay.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, ROOT, write_fragment
from ponder.presets import get_config
from ponder.runs.config import apply_overrides
from ponder.runs.run import train_run
from ponder.runs.trained import load_trained
from ponder.training.calibrate import replay, trace
from ponder.training.evaluate import evaluate_split

FIXED = (0.5, 0.9, 0.95, 0.99)
PRESET_ORDER = ("sudoku9", "maze9", "demo")


def _latest(pattern: str) -> Path | None:
    found = sorted(d for d in (ROOT / "runs").glob(pattern) if (d / "checkpoints" / "latest").exists())
    return found[-1] if found else None


def default_runs(threads: int) -> list[Path]:
    """The runs `make bench` measures: sudoku9 and maze9 from their benchmarks, a demo run trained now
    with halt.threshold=auto (so its calibration slice is held out of training)."""
    runs = [r for r in (_latest("bench-sudoku9-*"), _latest("bench-maze9-*")) if r is not None]
    demo = ROOT / "runs" / f"bench-thresholds-demo-{time.strftime('%Y%m%d-%H%M%S')}"
    train_run(apply_overrides(get_config("demo"), ["--train.progress=false", f"--train.threads={threads}",
                                                   "--halt.threshold=auto"]), demo)
    return [*runs, demo]


def measure(run_dir: Path, threads: int) -> dict:
    """The auto choice and the held-out figures at it, at the fixed thresholds and at always M."""
    opts = [f"--train.threads={threads}", "--train.device=cpu"]
    started, load = time.perf_counter(), [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / run_dir.name
        shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("tensorboard", "eval", "report.html"))
        t0 = time.perf_counter()
        model, task, cfg, ckpt = load_trained(copy, ["--halt.threshold=auto", *opts])
        calibration = model.halting.calibration
        calibration_seconds = time.perf_counter() - t0
        torch.set_num_threads(threads)
        m, device = cfg.halt.max_steps, torch.device("cpu")
        traces = trace(model, task.test, task.metric, max_steps=m, batch_size=cfg.eval.batch_size, device=device)
        rows = []
        for label, t in [("auto", calibration["threshold"]), *((f"{t:g}", t) for t in FIXED), (f"always {m}", 1.0)]:
            steps, solved = replay(model.halting, traces, t, m)
            early = steps < m
            rows.append({"label": label, "threshold": t, "exact": float(solved.mean()), "mean_steps": float(steps.mean()),
                         "share_of_m": float(steps.mean() / m),
                         "wrong_halt_frac": float((~solved[early]).mean()) if early.any() else None})
        real = evaluate_split(model, task.test, task.metric, max_steps=m, batch_size=cfg.eval.batch_size,
                              device=device, budgets=False)
    auto = rows[0]
    agree = abs(real["exact"] - auto["exact"]) <= 2 / len(task.test) and abs(real["mean_steps"] - auto["mean_steps"]) < 0.05
    if not agree:
        sys.exit(f"bench_thresholds: {run_dir.name}: replay ({auto['exact']:.3f}, {auto['mean_steps']:.2f}) and early "
                 f"exit ({real['exact']:.3f}, {real['mean_steps']:.2f}) disagree at threshold {auto['threshold']}")
    auto.update({"exact": real["exact"], "mean_steps": real["mean_steps"], "share_of_m": real["mean_steps"] / m,
                 "wrong_halt_frac": real["wrong_halt_frac"], "seconds_early_exit": real["seconds_adaptive"]})
    load.append(os.getloadavg()[0])
    return {"run": run_dir.name, "preset": cfg.preset, "task": task.name, "head": cfg.halt.kind, "max_steps": m,
            "checkpoint": ckpt.name, "held_out": len(task.test), "calibration": calibration,
            "calibration_seconds_with_loading": calibration_seconds, "rows": rows, "threads": threads,
            "minutes": (time.perf_counter() - started) / 60, "load_average": load,
            "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def section(r: dict) -> list[str]:
    c, m = r["calibration"], r["max_steps"]
    lines = [f"### {r['preset']} (`{r['run']}`, {r['checkpoint']}, head {r['head']}, M = {m})", "",
             f"Auto chose **{c['threshold']:g}** on the {c['source']}: solved {_pct(c['solved_at_choice'])} at "
             f"{c['mean_steps_at_choice']:.2f} mean steps ({100 * c['mean_steps_at_choice'] / m:.0f}% of M) against "
             f"{_pct(c['solved_at_max'])} always running {m} steps; margin {100 * c['margin']:g} point(s); "
             f"calibration {c['seconds']:.1f} s.", "",
             f"| threshold | exact (held-out, {r['held_out']}) | mean steps | share of M steps | halts on a wrong answer |",
             "|---|---|---|---|---|"]
    for row in r["rows"]:
        label = f"auto ({row['threshold']:g})" if row["label"] == "auto" else row["label"]
        lines.append(f"| {label} | {_pct(row['exact'])} | {row['mean_steps']:.2f} | {100 * row['share_of_m']:.0f}% | "
                     f"{_pct(row['wrong_halt_frac'])} |")
    cands = " ".join(f"{x['threshold']:g}: {_pct(x['solved'])}/{x['mean_steps']:.2f}" for x in c["candidates"])
    return lines + ["", f"Calibration candidates (threshold: solved / mean steps on the calibration slice): {cands}. "
                    f"Measured {r['measured']} on {r['threads']} thread(s), niced, in {r['minutes']:.1f} min "
                    f"(1-minute load average {r['load_average'][0]:.1f} before, {r['load_average'][1]:.1f} after).", ""]


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; argv None (as `make bench` calls it) means the defaults."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="*", type=Path, help="trained runs (default: see the module docstring)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the other runs' sections of thresholds.json")
    args = parser.parse_args([] if argv is None else argv)
    torch.set_num_threads(args.threads)
    runs = args.run_dirs or default_runs(args.threads)
    results = [measure(Path(r), args.threads) for r in runs]
    previous = RESULTS / "thresholds.json"
    if args.keep and previous.exists():
        names = {r["run"] for r in results}
        results += [r for r in json.loads(previous.read_text())["runs"] if r["run"] not in names]
    results.sort(key=lambda r: PRESET_ORDER.index(r["preset"]) if r["preset"] in PRESET_ORDER else len(PRESET_ORDER))
    md = ["## `--halt.threshold=auto`: a halting threshold that calibrates itself", "",
          "`ponder eval RUN --halt.threshold=auto` on trained runs (no retraining): the threshold is the lowest of "
          "0.5 0.6 0.7 0.8 0.9 0.95 0.98 0.99 0.995 0.999 1 whose solved fraction on the calibration slice (the "
          "last `halt.calibration_samples` = 512 samples of the training split) is within `halt.auto_margin` "
          "(1 point) of always running M steps, found by replaying the head's own halting rule on one M-step "
          "rollout of those samples. A run trained with `--halt.threshold=auto` never trains on the slice; a run "
          "trained with a fixed threshold did, and its section says \"seen in training\". Below, the "
          "held-out split: the auto row is evaluated with real early exit; the fixed thresholds and always M are "
          "the head's rule replayed on one M-step rollout of the held-out split (the auto choice's replay agreed "
          "with its early exit).", ""]
    for r in results:
        md += section(r)
    write_fragment("thresholds", "\n".join(md), {"runs": results})
    print("\n".join(md))


if __name__ == "__main__":
    main(sys.argv[1:])
