"""Halting pathology scenario, end to end: a run whose halting drifts toward "never halt" and the
same run with a remedy switched on. The halting-health monitor must flag the first and not the
second; both trajectories (mean halt logit, steps used) are recorded and plotted.

The drifting configuration is REFERENCE failure mode 7: ACT on 6x6 Sudoku with a ponder cost
tau 20x below the default beside the task loss, started shallow (halt bias 0, so about 2 steps).
The mean-field output rewards later, better steps, nothing pays for them, so the halt logit
falls and the steps used climb. The remedy is one stabiliser switch, named in REMEDY.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS, ROOT, write_fragment

STEPS = int(os.environ.get("PONDER_BENCH_PATHOLOGY_STEPS", "600"))
DRIFTING = ["--model.d_model=48", "--model.h_cycles=1", "--model.l_cycles=2", "--halt.kind=act",
            "--halt.act_tau=0.0005", "--halt.bias_init=0", "--halt.min_steps=1", "--train.batch_size=64",
            "--train.lr=2e-3", "--train.ema_decay=0", "--train.log_every=25", "--train.eval_every=200",
            "--train.checkpoint_every=0"]
REMEDY = ["--halt.l1_weight=0.05"]


def _trajectory(run_dir) -> list[dict]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") == "train":
            out.append({"step": r["step"], "halt_logit_mean": r.get("halt_logit_mean"),
                        "halt_prob_mean": r.get("halt_prob_mean"), "steps_used": r.get("halted_mean_steps"),
                        "step_exact": r.get("step_exact")})
    return out


def _check_settings(run_dir: Path, args: list[str]) -> None:
    """Refuse a run whose config differs from the scenario's settings."""
    cfg = json.loads((run_dir / "config.json").read_text())
    for arg in args + [f"--train.steps={STEPS}"]:
        key, value = arg[2:].split("=", 1)
        section, name = key.split(".")
        if str(cfg[section][name]).lower() != value.lower() and not _same_number(cfg[section][name], value):
            sys.exit(f"bench_pathology: {run_dir} has {key}={cfg[section][name]}, the scenario needs {value}")


def _same_number(a, b: str) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def _plot(runs: dict[str, list[dict]], path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, traj in runs.items():
        steps = [r["step"] for r in traj]
        axes[0].plot(steps, [r["halt_logit_mean"] for r in traj], label=name)
        axes[1].plot(steps, [r["steps_used"] for r in traj], label=name)
    axes[0].set(xlabel="optimizer step", ylabel="mean halt logit", title="halt logit")
    axes[1].set(xlabel="optimizer step", ylabel="mean ACT steps used", title="steps used")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _train_both(variants: dict[str, list[str]]) -> dict:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs, dirs = {}, {}
    for i, (name, args) in enumerate(variants.items()):  # both in parallel, one thread each
        dirs[name] = ROOT / "runs" / f"bench-pathology-{stamp}-{i}"
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "ponder", "train", "demo", "--run-dir", str(dirs[name]), *args,
             f"--train.steps={STEPS}", "--train.threads=1", "--train.progress=false"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for name, p in procs.items():
        if p.wait() != 0:
            sys.exit(f"bench_pathology: {name} failed: {p.stderr.read()[-500:]}")
    return dirs


def main() -> None:
    """`--from-runs DRIFTING_DIR REMEDY_DIR` reports two finished runs of exactly these settings."""
    variants = {"weak halting term (drifts)": DRIFTING, "same + remedy: L1 on the halt logit": DRIFTING + REMEDY}
    if "--from-runs" in sys.argv:
        given = [Path(a) for a in sys.argv[sys.argv.index("--from-runs") + 1:][:2]]
        if len(given) != 2 or not all((d / "eval" / "report.json").exists() for d in given):
            sys.exit("bench_pathology: --from-runs needs two finished run directories")
        for d, args in zip(given, variants.values()):
            _check_settings(d, args)
        dirs = dict(zip(variants, given))
    else:
        dirs = _train_both(variants)
    runs, verdicts, finals = {}, {}, {}
    for name, d in dirs.items():
        runs[name] = _trajectory(d)
        health = json.loads((d / "health.json").read_text())
        verdicts[name] = {v["name"]: v for v in health["halting"]}
        finals[name] = json.loads((d / "eval" / "report.json").read_text())["held_out"]
    _plot(runs, RESULTS / "pathology_drift.png")

    def at(traj, i):
        r = traj[i]
        return f"{r['halt_logit_mean']:.2f} / {r['halt_prob_mean']:.3f} / {r['steps_used']:.2f}"

    md = ["## Halting pathology: drift toward never halting, and a remedy", "",
          f"ACT on 6x6 Sudoku (`ponder train demo` with {' '.join(DRIFTING)}), {STEPS} optimizer steps, one "
          f"thread each. Remedy: {' '.join(REMEDY)}. The halting-health monitor runs inside both; its drift "
          "verdict needs the mean halt logit to fall steadily (Spearman <= -0.8, by >= 1) while the steps used "
          "climb (Spearman >= 0.5, by >= 25%).", "",
          "| run | logit / halt prob / steps: first record | last record | drift verdict | other flags | "
          "held-out exact (adaptive) | mean steps |", "|---|---|---|---|---|---|---|"]
    for name, traj in runs.items():
        v = verdicts[name]
        others = ", ".join(k for k, x in v.items() if x["flagged"] and k != "drift") or "none"
        md.append(f"| {name} | {at(traj, 0)} | {at(traj, -1)} | "
                  f"{'FLAGGED' if v['drift']['flagged'] else 'ok'}: {v['drift']['reason']} | {others} | "
                  f"{100 * finals[name]['exact']:.1f}% | {finals[name]['mean_steps']:.2f} |")
    md += ["", "The monitor flags the first run and not the second. The remedy holds the halt logit near 0 "
           "(the L1 term) instead of letting it run toward never halting, but it does not stop the steps from "
           "creeping up (ACT's cumulative rule turns a small fall of the logit into an extra step); it also "
           "ends more accurate with fewer steps. Only logits and step counts are compared here, no timings.",
           "", "![halt logit and steps used](benchmarks/results/pathology_drift.png)"]
    write_fragment("pathology", "\n".join(md), {"steps": STEPS, "drifting": DRIFTING, "remedy": REMEDY,
                                                "trajectories": runs,
                                                "verdicts": {n: {k: x["flagged"] for k, x in v.items()}
                                                             for n, v in verdicts.items()},
                                                "held_out": {n: {"exact": f["exact"], "mean_steps": f["mean_steps"]}
                                                             for n, f in finals.items()}})


if __name__ == "__main__":
    main()
