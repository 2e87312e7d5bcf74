"""The evaluation report of a run: held-out and training accuracy with adaptive halting,
accuracy per step budget, steps histogram, rank correlation with difficulty, trivial baselines;
written as JSON, Markdown and a PNG plot under RUN_DIR/eval/.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ponder.checkpoint import atomic_write_text
from ponder.data.base import TaskData
from ponder.evaluate import baselines, evaluate_split


def evaluate_run(model, task: TaskData, cfg, run_dir: Path, *, device: torch.device,
                 split: str = "test", quiet: bool = False) -> dict:
    """Full evaluation of `model` on the held-out split (and a training subset); writes files."""
    ec = cfg.eval
    held_out = task.test if split == "test" else task.train
    if ec.max_samples > 0 and ec.max_samples < len(held_out):
        held_out = held_out.subset(np.arange(ec.max_samples))
    rng = np.random.default_rng(0)
    k = min(ec.train_samples, len(task.train)) if ec.train_samples > 0 else len(task.train)
    train_sub = task.train.subset(np.sort(rng.choice(len(task.train), k, replace=False)))
    m = cfg.halt.max_steps
    report = {
        "preset": cfg.preset,
        "task": task.name,
        "split": split,
        "difficulty_name": task.difficulty_name,
        "held_out": evaluate_split(model, model.halting, held_out, max_steps=m, batch_size=ec.batch_size, device=device),
        "train": evaluate_split(model, model.halting, train_sub, max_steps=m, batch_size=ec.batch_size,
                                device=device, budgets=False),
        "baselines": baselines(held_out, task.train),
    }
    out_dir = Path(run_dir) / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=1) + "\n")
    text = format_report(report)
    atomic_write_text(out_dir / "report.md", text)
    plot_budget_curve(report, out_dir / "accuracy_vs_steps.png")
    if not quiet:
        print(text)
    return report


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def format_report(r: dict) -> str:
    """Markdown tables of a report dict (what `ponder eval` prints)."""
    h, t = r["held_out"], r["train"]
    m = h["max_steps"]
    lines = [f"## {r['preset'] or r['task']}: {r['split']} split ({h['n']} held-out samples)", "",
             "| model / baseline | exact (held-out) | cell (held-out) | exact (train) | mean steps |",
             "|---|---|---|---|---|",
             f"| model, adaptive halting | {_pct(h['exact'])} | {_pct(h['cell'])} | {_pct(t['exact'])} | "
             f"{h['mean_steps']:.2f} of {m} |",
             f"| model, always {m} steps | {_pct(h['exact_by_budget'][-1])} | {_pct(h['cell_by_budget'][-1])} | | {m} |"]
    for name, b in r["baselines"].items():
        lines.append(f"| baseline: {name} | {_pct(b['exact'])} | {_pct(b['cell'])} | | |")
    corr = h["spearman_steps_difficulty"]
    lines += ["", "| step budget | " + " | ".join(str(i + 1) for i in range(m)) + " |",
              "|---" * (m + 1) + "|",
              "| exact | " + " | ".join(_pct(x) for x in h["exact_by_budget"]) + " |",
              "| cell | " + " | ".join(_pct(x) for x in h["cell_by_budget"]) + " |",
              "| samples halting here | " + " | ".join(str(c) for c in h["steps_histogram"]) + " |", "",
              f"Spearman rank correlation of steps used with {r['difficulty_name']}: "
              + ("n/a (constant)" if corr is None else f"{corr:.3f}"),
              f"Wall time: adaptive {h['seconds_adaptive']:.2f}s vs always-{m}-steps {h['seconds_all_steps']:.2f}s; "
              f"early-exit steps agree with the full rollout's halting step for {_pct(h['halt_consistent'])} of samples.",
              ""]
    return "\n".join(lines)


def plot_budget_curve(r: dict, path: Path) -> None:
    """Exact accuracy against step budget (overall and per difficulty bucket), adaptive points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = r["held_out"]
    budgets = np.arange(1, h["max_steps"] + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(budgets, h["exact_by_budget"], "k-o", label="all")
    ax.plot([h["mean_steps"]], [h["exact"]], "k*", markersize=14, label="adaptive halting")
    short = r["difficulty_name"].split(" (")[0]  # e.g. "solver hardness", "path length"
    for b in h.get("by_difficulty", []):
        line, = ax.plot(budgets, b["exact_by_budget"], "--", alpha=0.8,
                        label=f"{short} {b['lo']:g}-{b['hi']:g} (n={b['n']})")
        ax.plot([b["mean_steps"]], [b["exact"]], "*", color=line.get_color(), markersize=10)
    ax.set_xlabel("step budget (ACT steps)")
    ax.set_ylabel("exact accuracy (held-out)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{r['preset'] or r['task']}: accuracy vs compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
