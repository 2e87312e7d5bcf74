"""Parity (PonderNet's task) on the CPU preset, for each halting head, beside a reference model.

Each head trains `parity16` (or its extrapolation split) for STEPS optimizer steps per seed, one
thread each; the table gives held-out accuracy, mean steps and the rank correlation of steps with
the number of non-zeros. The reference is a permutation-invariant set model (token embedding,
mean over positions, 2-layer ReLU MLP) trained on the same data for the same steps: it shows
what the data allows in that budget, so a reasoner at chance is the reasoner's failure, not the
data's. Settings: PONDER_BENCH_PARITY_STEPS (default 2500), PONDER_BENCH_PARITY_SEEDS (default 3).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from statistics import mean, pstdev

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import RESULTS, ROOT, write_fragment
from ponder.presets import get_config
from ponder.tasks import build_task

STEPS = int(os.environ.get("PONDER_BENCH_PARITY_STEPS", "2500"))
SEEDS = int(os.environ.get("PONDER_BENCH_PARITY_SEEDS", "3"))
HEADS = {"pondernet": [], "act": ["--halt.act_tau=0.01"], "q_halt": ["--halt.bias_init=-5"]}
SPLITS = {"interpolation": "parity16", "extrapolation": "parity16-extrapolation"}


def set_model_reference(preset: str, steps: int, seed: int) -> float:
    """Held-out accuracy of the mean-pooled set MLP after `steps` Adam steps of batch 128."""
    torch.manual_seed(seed)
    task = build_task(get_config(preset).task)
    x_tr, y_tr = (torch.as_tensor(np.asarray(a)) for a in (task.train.inputs, task.train.labels[:, 0]))
    x_te, y_te = (torch.as_tensor(np.asarray(a)) for a in (task.test.inputs, task.test.labels[:, 0]))
    embed = torch.nn.Embedding(int(max(x_tr.max(), y_tr.max())) + 1, 64)
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128), torch.nn.ReLU(),
                              torch.nn.Linear(128, embed.num_embeddings))
    opt = torch.optim.Adam([*embed.parameters(), *mlp.parameters()], 1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(0, len(x_tr), (128,), generator=gen)
        loss = F.cross_entropy(mlp(embed(x_tr[i]).mean(1)), y_tr[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (mlp(embed(x_te).mean(1)).argmax(1) == y_te).float().mean().item()


def majority_baseline(preset: str) -> float:
    """Held-out accuracy of always answering the test split's most frequent parity (the parity
    task's own baseline)."""
    task = build_task(get_config(preset).task)
    return task.baselines(task.test, task.train)["majority class of this split"]["exact"]


def verdict(rows: list[dict], steps: int) -> str:
    """The issue's goal, checked against the PonderNet rows: >= 99% interpolation, >= 95%
    extrapolation (means over seeds), and steps rising with the number of non-zeros (Spearman > 0)."""
    def cell(split):
        return [r for r in rows if r["head"] == "pondernet" and r["split"] == split]
    if not cell("interpolation") or not cell("extrapolation"):
        return f"Goal (issue), PonderNet at {steps} steps: not checked (PonderNet was not run on both splits)."
    interp, extrap = (mean(r["exact"] for r in cell(s)) for s in SPLITS)
    rho = [r["spearman"] for r in cell("interpolation") + cell("extrapolation") if r["spearman"] is not None]
    checks = [(f"interpolation >= 99% (measured {100 * interp:.1f}%)", interp >= 0.99),
              (f"extrapolation >= 95% (measured {100 * extrap:.1f}%)", extrap >= 0.95),
              ("steps rising with the number of non-zeros (mean Spearman "
               + (f"{mean(rho):+.2f})" if rho else "undefined: constant steps)"), bool(rho) and mean(rho) > 0)]
    return (f"Goal (issue), PonderNet at {steps} steps: "
            + "; ".join(("met: " if ok else "NOT met: ") + text for text, ok in checks) + ".")


def _run_row(run_dir: Path) -> dict:
    """One table row from a finished run: head, split, seed, steps and preset from its config, then
    the held-out figures: adaptive exact accuracy, the best exact accuracy of any fixed step budget
    1..M (every sample runs that many steps), mean steps, Spearman(steps, non-zeros)."""
    report = run_dir / "eval" / "report.json"
    if not report.exists():
        sys.exit(f"bench_parity: {run_dir} is not a finished run (no eval/report.json)")
    cfg = json.loads((run_dir / "config.json").read_text())
    if cfg.get("preset") not in {*SPLITS.values(), "parity16-long"}:
        sys.exit(f"bench_parity: {run_dir} is a run of {cfg.get('preset')!r}, not a parity16 preset")
    held = json.loads(report.read_text())["held_out"]
    return {"head": cfg["halt"]["kind"], "split": cfg["task"]["split"], "seed": cfg["train"]["seed"],
            "steps": cfg["train"]["steps"], "preset": cfg["preset"], "exact": held["exact"],
            "best_fixed": max(held["exact_by_budget"]), "best_budget": 1 + int(np.argmax(held["exact_by_budget"])),
            "mean_steps": held["mean_steps"], "spearman": held["spearman_steps_difficulty"], "run": run_dir.name}


def _runs() -> list[dict]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    jobs = [(head, split, seed) for head in HEADS for split in SPLITS for seed in range(SEEDS)]  # PonderNet first
    out, running = [], []

    def finish(job, proc, run_dir):
        if proc.wait() != 0:
            sys.exit(f"bench_parity: {job} failed: {proc.stderr.read()[-500:]}")
        out.append(_run_row(run_dir))

    for job in jobs:  # two at a time, one thread each
        head, split, seed = job
        run_dir = ROOT / "runs" / f"bench-parity-{stamp}-{split}-{head}-{seed}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "ponder", "train", SPLITS[split], "--run-dir", str(run_dir), f"--halt.kind={head}",
             *HEADS[head], f"--train.seed={seed}", f"--train.steps={STEPS}", "--train.threads=1",
             "--train.progress=false", "--train.checkpoint_every=0"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        running.append((job, proc, run_dir))
        if len(running) == 2:
            finish(*running.pop(0))
    for r in running:
        finish(*r)
    return out


def _collect(stamp: str) -> list[dict]:
    """Rows of the finished runs `runs/bench-parity-STAMP-*` (unfinished ones are skipped)."""
    finished = sorted(d for d in (ROOT / "runs").glob(f"bench-parity-{stamp}-*") if (d / "eval" / "report.json").exists())
    if not finished:
        sys.exit(f"bench_parity: no finished runs named runs/bench-parity-{stamp}-*")
    return [_run_row(d) for d in finished]


def _values_after(flag: str) -> list[str]:
    """The command-line arguments after `flag`, up to the next option."""
    rest = sys.argv[sys.argv.index(flag) + 1:]
    return rest[:next((i for i, a in enumerate(rest) if a.startswith("--")), len(rest))]


def main() -> None:
    """`--collect STAMP` takes the finished head runs of an earlier bench from runs/ instead of
    training them (the reference is re-measured); `--long-run RUN_DIR [RUN_DIR ...]` adds rows for
    longer parity16 runs (one row per split, head and step count, mean over the runs);
    `--rerender` rewrites the section from the measurements saved in results/parity.json."""
    torch.set_num_threads(1)
    if "--rerender" in sys.argv:
        saved = json.loads((RESULTS / "parity.json").read_text())
        render(saved["runs"], saved["long_runs"], saved["reference"], saved["majority"], saved["steps"],
               measured=saved["measured"], on=saved["machine"])
        return
    stamp = _values_after("--collect") if "--collect" in sys.argv else None
    if stamp is not None and len(stamp) != 1:
        sys.exit("bench_parity: --collect needs one time stamp, e.g. --collect 20261123-154100")
    long_dirs = _values_after("--long-run") if "--long-run" in sys.argv else []
    if "--long-run" in sys.argv and not long_dirs:
        sys.exit("bench_parity: --long-run needs at least one run directory")
    long_runs = [_run_row(Path(d)) for d in long_dirs]  # longer runs of a parity16 preset, trained separately
    rows = _collect(stamp[0]) if stamp else _runs()  # --collect: the runs of an earlier (e.g. interrupted) bench
    budgets = {r["steps"] for r in rows}
    if len(budgets) != 1:
        sys.exit(f"bench_parity: the head runs have different step counts {sorted(budgets)}")
    steps = budgets.pop()
    reference = {split: [set_model_reference(preset, steps, s) for s in range(SEEDS)] for split, preset in SPLITS.items()}
    majority = {split: majority_baseline(preset) for split, preset in SPLITS.items()}
    render(rows, long_runs, reference, majority, steps)


def render(rows: list[dict], long_runs: list[dict], reference: dict, majority: dict, steps: int, *,
           measured: str | None = None, on: str | None = None) -> None:
    """Write the section from the measured rows (`measured`/`on`: when re-rendering saved ones)."""

    def fmt(values, pct=True):
        vals = [v for v in values if v is not None]
        if not vals:
            return "n/a"
        scale = 100 if pct else 1
        spread = f" ± {scale * pstdev(vals):.1f}" if len(vals) > 1 else ""
        return f"{scale * mean(vals):.1f}{'%' if pct else ''}{spread}"

    def per_seed(cell):
        return ", ".join(f"{100 * r['exact']:.1f}" for r in sorted(cell, key=lambda r: r["seed"]))

    def fixed(cell):
        budgets = ", ".join(str(r["best_budget"]) for r in sorted(cell, key=lambda r: r["seed"]))
        return f"{fmt([r['best_fixed'] for r in cell])} ({budgets})"

    md = ["## Parity (PonderNet's task), CPU preset", "",
          f"`parity16` (16 entries, 1-16 non-zeros) and `parity16-extrapolation` (train 1-8, test 9-16): "
          f"attention without positions, d=64, 1 layer, M=6, LR 3e-4, {steps} optimizer steps of batch 128 per run, "
          f"{max(Counter((r['split'], r['head']) for r in rows).values())} seed(s) per cell (mean ± spread over seeds), one thread each. Held-out exact = the parity is "
          "right. Trivial baseline: the majority class of the test split. Reference: a set model (embedding, mean "
          f"over positions, 2-layer ReLU MLP) trained on the same data for the same {steps} steps.", "",
          "| split | head | held-out exact, adaptive halting | per seed | mean steps | best fixed budget "
          "(budget per seed) | Spearman(steps, non-zeros) | majority class | reference set model |",
          "|---|---|---|---|---|---|---|---|---|"]
    for split in SPLITS:
        for head in HEADS:
            cell = [r for r in rows if r["split"] == split and r["head"] == head]
            md.append(f"| {split} | {head} | {fmt([r['exact'] for r in cell])} | {per_seed(cell)} | "
                      f"{fmt([r['mean_steps'] for r in cell], pct=False)} | {fixed(cell)} | "
                      f"{fmt([r['spearman'] for r in cell], pct=False)} | {100 * majority[split]:.1f}% | "
                      f"{fmt(reference[split])} |")
    for key in dict.fromkeys((r["split"], r["head"], r["steps"]) for r in long_runs):
        cell = [r for r in long_runs if (r["split"], r["head"], r["steps"]) == key]
        md.append(f"| {key[0]} | {key[1]}, {key[2]} steps | {fmt([r['exact'] for r in cell])} | {per_seed(cell)} | "
                  f"{fmt([r['mean_steps'] for r in cell], pct=False)} | {fixed(cell)} | "
                  f"{fmt([r['spearman'] for r in cell], pct=False)} | {100 * majority[key[0]]:.1f}% | |")
    md += ["", verdict(rows, steps), "",
           "Why extrapolation is hard for this model: without positions, entries with the same value have identical "
           "states at every step (the model is permutation-equivariant), so the recursion cannot take the +1 entries "
           "one at a time; what it learns is a function of the counts, fitted on at most 8 +1 entries, with no reason "
           "to hold for 9-16. Runs shared the 2 cores with up to 3 other one-thread jobs; only accuracies are "
           "reported, no timings."]
    if long_runs:
        runs = ", ".join(f"`{r['run']}` ({r['preset']})" for r in long_runs)
        md += ["", "Rows with a step count are longer runs trained separately, one per seed: " + runs + ". "
               "`parity16-long` is `parity16` with 5000 steps, a cosine LR decay and a weight EMA of 0.995, made "
               "because runs at a constant LR reached high accuracy and then fell back."]
    data = {"steps": steps, "runs": rows, "long_runs": long_runs, "reference": reference, "majority": majority}
    if measured is None:
        write_fragment("parity", "\n".join(md), data)
    else:  # re-rendered: the measurement's own date and machine stay
        (RESULTS / "parity.md").write_text("\n".join(md).rstrip() + f"\n\n_Measured {measured} on: {on}._\n")


if __name__ == "__main__":
    main()
