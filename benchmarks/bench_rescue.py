"""Rescue: a configuration whose runs are lost without the stability controller and finish with
it, and a stable one in which the controller must cost nothing (3 seeds each, with and without).

A small 6x6 Sudoku model (demo task, d=32, one layer, HyperLoRA adapter rank 4, batch 32) is
first trained at the demo preset's LR for PRETRAIN_STEPS steps (seed 0; run `pretrain`). Every
measured run starts from its weights (`ponder train --init-from`) and trains STEPS more steps:

- rescue: the LR warmed up to HIGH_LR over WARMUP steps, then constant (continuing a trained
  model at a far too high LR: its accuracy collapses and does not come back while the LR stays);
- stable: the same, at the pretraining LR (SAFE_LR).

Lost = the run stopped before its last step, or its final loss is not finite, or its final
held-out cell accuracy is more than LOST_MARGIN below the pretrained model's (it ended worse than
it started). Held-out figures on all 500 test puzzles (EMA weights), every EVAL_EVERY steps.

    python -m benchmarks.bench_rescue [--jobs N] [--reuse]
    python -m benchmarks.bench_rescue --from-runs     # rebuild the section from the run dirs

Run directories: runs/bench-rescue-pretrain and runs/bench-rescue-{rescue,stable}-s{seed}-{on,off}.
--reuse keeps finished run directories and trains only the others; --jobs runs that many
trainings at once (one thread each).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from benchmarks.common import RESULTS, ROOT, write_fragment

NAME = "rescue"
RUNS = ROOT / "runs"
PREFIX = "bench-rescue-"
SEEDS = (0, 1, 2)
MODEL = ["--model.d_model=32", "--model.n_layers=1", "--model.adapter_rank=4", "--train.batch_size=32",
         "--train.schedule=constant", "--train.threads=1", "--train.progress=false", "--train.log_every=10",
         "--eval.during_training_samples=500", "--eval.train_samples=128"]
SAFE_LR = 2e-3  # the demo preset's LR
PRETRAIN_STEPS = 800
HIGH_LR = 0.1
WARMUP = 50
STEPS = 300
EVAL_EVERY = 50
LOST_MARGIN = 0.10
SCENARIOS = {"rescue": HIGH_LR, "stable": SAFE_LR}


def pretrain_args() -> list[str]:
    return [*MODEL, f"--train.lr={SAFE_LR}", "--train.warmup_steps=200", f"--train.steps={PRETRAIN_STEPS}",
            "--train.eval_every=100", "--train.checkpoint_every=0", "--train.seed=0"]


def run_args(scenario: str, seed: int, controller: bool) -> list[str]:
    return [*MODEL, f"--train.lr={SCENARIOS[scenario]}", f"--train.warmup_steps={WARMUP}", f"--train.steps={STEPS}",
            f"--train.eval_every={EVAL_EVERY}", f"--train.checkpoint_every={STEPS}", f"--train.seed={seed}",
            f"--health.controller={str(controller).lower()}"]


def run_dir(scenario: str, seed: int, controller: bool) -> Path:
    return RUNS / f"{PREFIX}{scenario}-s{seed}-{'on' if controller else 'off'}"


def _records(d: Path) -> list[dict]:
    path = d / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _finished(d: Path, steps: int) -> bool:
    """A run that got to its end: a train record at its last step and an eval there, or an abort
    (the controller's or the non-finite streak's), which is a result too."""
    recs = _records(d)
    done = any(r["kind"] == "train" and r["step"] == steps for r in recs) and \
        any(r["kind"] == "eval" and r["step"] == steps for r in recs)
    return done or (d / "bench-error.txt").exists()


def _train(d: Path, args: list[str], init_from: Path | None) -> dict:
    """One `ponder train demo` in a child process (nice 10). Returns the seconds it took and the
    load average before and after; a one-line `ponder: error:` is kept in RUN_DIR/bench-error.txt."""
    if d.exists():
        shutil.rmtree(d)
    cmd = [sys.executable, "-m", "ponder", "train", "demo", "--run-dir", str(d), *args]
    if init_from is not None:
        cmd += ["--init-from", str(init_from)]
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    out = subprocess.run(["nice", "-n", "10", *cmd], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode == 2 and "ponder: error:" in out.stderr:
        d.mkdir(parents=True, exist_ok=True)
        (d / "bench-error.txt").write_text(out.stderr.strip().splitlines()[-1] + "\n")
    elif out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    timing = {"seconds": seconds, "load_avg": [load0, os.getloadavg()[0]]}
    (d / "bench-timing.json").write_text(json.dumps(timing))
    return timing


def train_all(jobs: int, reuse: bool) -> None:
    pre = RUNS / f"{PREFIX}pretrain"
    if not (reuse and _finished(pre, PRETRAIN_STEPS)):
        print(f"pretraining {pre.name}", flush=True)
        _train(pre, pretrain_args(), None)
    todo = [(s, seed, c) for c in (False, True) for s in SCENARIOS for seed in SEEDS
            if not (reuse and _finished(run_dir(s, seed, c), STEPS))]
    print(f"{len(todo)} runs to train ({jobs} at a time)", flush=True)

    def one(job):
        d = run_dir(*job)
        t = _train(d, run_args(*job), pre)
        print(f"{d.name}: {t['seconds']:.0f} s", flush=True)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, todo))


# ----------------------------------------------------------------------------- figures


def summarize(d: Path, start_cell: float, steps: int) -> dict:
    recs = _records(d)
    if not recs:
        raise SystemExit(f"bench_rescue: no metrics in {d}; train it first (without --from-runs)")
    train = [r for r in recs if r["kind"] == "train"]
    evals = [r for r in recs if r["kind"] == "eval"]
    error_file = d / "bench-error.txt"
    error = error_file.read_text().strip() if error_file.exists() else None
    last_step = max((r["step"] for r in train), default=0)
    last = evals[-1] if evals else {}
    final_loss = train[-1]["loss"] if train else math.nan
    cell = last.get("test_cell")
    reasons = []
    if error or last_step < steps:
        reasons.append(f"stopped at step {last_step}")
    if not math.isfinite(final_loss):
        reasons.append("final loss not finite")
    if cell is None or cell < start_cell - LOST_MARGIN:
        reasons.append("final held-out cell accuracy more than "
                       f"{100 * LOST_MARGIN:.0f} points below the start")
    kinds: dict[str, int] = {}
    for r in recs:
        if r["kind"] == "action":
            kinds[r["action"]] = kinds.get(r["action"], 0) + 1
    timing_file = d / "bench-timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    return {"run_dir": d.name, "error": error, "last_step": last_step, "final_loss": final_loss,
            "test_exact": last.get("test_exact"), "test_cell": cell,
            "peak_test_cell": max((r["test_cell"] for r in evals), default=None),
            "lost": bool(reasons), "lost_because": reasons, "actions": kinds,
            "lr_final": train[-1]["lr"] if train else None,
            "eval_curve": [(r["step"], r["test_cell"]) for r in evals],
            "lr_curve": [(r["step"], r["lr"]) for r in train], **timing}


def collect() -> dict:
    pre = RUNS / f"{PREFIX}pretrain"
    pre_evals = [r for r in _records(pre) if r["kind"] == "eval"]
    if not pre_evals:
        raise SystemExit(f"bench_rescue: no evaluation in {pre}; train it first (without --from-runs)")
    start = pre_evals[-1]
    rows = [{"scenario": s, "seed": seed, "controller": c,
             **summarize(run_dir(s, seed, c), start["test_cell"], STEPS)}
            for s in SCENARIOS for seed in SEEDS for c in (False, True)]
    return {"start": {"test_exact": start["test_exact"], "test_cell": start["test_cell"], "step": start["step"]},
            "settings": {"safe_lr": SAFE_LR, "high_lr": HIGH_LR, "warmup": WARMUP, "steps": STEPS,
                         "pretrain_steps": PRETRAIN_STEPS, "eval_every": EVAL_EVERY, "lost_margin": LOST_MARGIN,
                         "seeds": list(SEEDS)},
            "rows": rows}


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, scenario in zip(axes, SCENARIOS):
        for r in (r for r in data["rows"] if r["scenario"] == scenario):
            color = "tab:blue" if r["controller"] else "tab:red"
            label = f"{'with' if r['controller'] else 'without'} controller" if r["seed"] == 0 else None
            if r["eval_curve"]:  # from the pretrained start at step 0
                s, cell = zip((0, data["start"]["test_cell"]), *r["eval_curve"])
                ax.plot(s, cell, color=color, alpha=0.8, lw=1, marker="o", ms=3, label=label)
        ax.axhline(data["start"]["test_cell"], color="gray", ls=":", lw=1, label="pretrained start")
        lr = HIGH_LR if scenario == "rescue" else SAFE_LR
        ax.set(xlabel="optimizer step", title=f"{scenario}: LR warmed up to {lr:g} over {WARMUP} steps")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("held-out cell accuracy")
    fig.suptitle("6x6 Sudoku, adapter on, from a pretrained model; 3 seeds each")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def render(data: dict, png: Path) -> str:
    st, start = data["settings"], data["start"]
    md = ["## Training health: a run the controller saves", "",
          f"A 6x6 Sudoku model (demo task, d=32, one layer, HyperLoRA adapter rank 4, batch 32, EMA weights "
          f"evaluated) is pretrained for {st['pretrain_steps']} steps at the demo preset's LR {st['safe_lr']:g} "
          f"(seed 0; held-out exact {_pct(start['test_exact'])}, cell {_pct(start['test_cell'])}). Every run "
          f"below starts from those weights (`--init-from`) and trains {st['steps']} more steps, seeds "
          f"{', '.join(map(str, st['seeds']))}, one thread each, with the controller at its default settings or "
          f"without it. **Rescue**: the LR warmed up to {st['high_lr']:g} over {st['warmup']} steps, then constant. "
          f"**Stable**: the same at {st['safe_lr']:g}. Held-out figures on all 500 test puzzles every "
          f"{st['eval_every']} steps. Lost = stopped early, non-finite final loss, or final held-out cell accuracy "
          f"more than {100 * st['lost_margin']:.0f} points below the pretrained start.", "",
          "| scenario | seed | controller | held-out exact | held-out cell (peak) | lost | actions | final LR |",
          "|---|---|---|---|---|---|---|---|"]
    rows = data["rows"]
    for r in rows:
        acts = ", ".join(f"{k} x{v}" for k, v in sorted(r["actions"].items())) or "none"
        lost = "**lost**: " + "; ".join(r["lost_because"]) if r["lost"] else "no"
        md.append(f"| {r['scenario']} | {r['seed']} | {'on' if r['controller'] else 'off'} | {_pct(r['test_exact'])} | "
                  f"{_pct(r['test_cell'])} ({_pct(r['peak_test_cell'])}) | {lost} | {acts} | "
                  f"{r['lr_final']:.2g} |")
    md += ["", "| scenario | controller | runs lost | mean held-out exact | mean held-out cell | mean actions |",
           "|---|---|---|---|---|---|"]
    means = {}
    for s in SCENARIOS:
        for c in (False, True):
            sel = [r for r in rows if r["scenario"] == s and r["controller"] == c]
            m = {"lost": sum(r["lost"] for r in sel), "n": len(sel),
                 "exact": statistics.mean(r["test_exact"] or 0 for r in sel),
                 "cell": statistics.mean(r["test_cell"] or 0 for r in sel),
                 "actions": statistics.mean(sum(r["actions"].values()) for r in sel)}
            means[s, c] = m
            md.append(f"| {s} | {'on' if c else 'off'} | {m['lost']}/{m['n']} | {_pct(m['exact'])} | "
                      f"{_pct(m['cell'])} | {m['actions']:.1f} |")
    res_on, res_off = means["rescue", True], means["rescue", False]
    st_on, st_off = means["stable", True], means["stable", False]
    by_seed = {(r["scenario"], r["seed"], r["controller"]): r for r in rows}
    beat = sum((by_seed["rescue", s, True]["test_cell"] or 0) >= (by_seed["stable", s, False]["test_cell"] or 0)
               for s in st["seeds"])
    no_lower = sum((by_seed["stable", s, True]["test_cell"] or 0) >= (by_seed["stable", s, False]["test_cell"] or 0)
                   for s in st["seeds"])
    md += ["", f"Measured: without the controller {res_off['lost']} of {res_off['n']} rescue runs were lost, with it "
           f"{res_on['lost']} of {res_on['n']}. With the controller the rescue runs ended at a mean held-out cell "
           f"accuracy of {_pct(res_on['cell'])} (exact {_pct(res_on['exact'])}) against {_pct(st_off['cell'])} "
           f"(exact {_pct(st_off['exact'])}) for the stable runs without it at the same budget; per seed the rescued "
           f"run reached at least the stable run's cell accuracy in {beat} of {len(st['seeds'])} (the pretrained "
           f"start: {_pct(start['test_cell'])}). In the stable scenario the controller took {st_on['actions']:.1f} actions "
           f"per run on average and the runs ended at {_pct(st_on['cell'])} cell, {_pct(st_on['exact'])} exact with "
           f"it against {_pct(st_off['cell'])} cell, {_pct(st_off['exact'])} exact without; per seed not lower in "
           f"{no_lower} of {len(st['seeds'])}.",
           "", f"![held-out accuracy]({png.relative_to(ROOT).as_posix()})"]
    loads = [x for r in rows for x in r.get("load_avg", [])]
    secs = [r["seconds"] for r in rows if "seconds" in r]
    if loads and secs:
        md[2] += (f" Each run took {min(secs) / 60:.1f}-{max(secs) / 60:.1f} min (two at a time, load average "
                  f"{min(loads):.1f}-{max(loads):.1f} on 2 cores shared with other jobs).")
    return "\n".join(md)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("PONDER_BENCH_RESCUE_JOBS", "2")),
                    help="trainings at once (default 2)")
    ap.add_argument("--reuse", action="store_true", help="keep finished run directories, train the others")
    ap.add_argument("--from-runs", action="store_true", help="train nothing: rebuild the section from the run dirs")
    args = ap.parse_args(argv if argv is not None else [])
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")
    torch.set_num_threads(1)  # the machine line names the runs' one thread each
    if not args.from_runs:
        train_all(args.jobs, args.reuse)
    data = collect()
    png = RESULTS / "rescue_accuracy.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(data, png)
    write_fragment(NAME, render(data, png), data)


if __name__ == "__main__":
    main(sys.argv[1:])
