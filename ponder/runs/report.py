"""The evaluation report of a run: held-out and training scores with adaptive halting, scores
per step budget, steps histogram, rank correlation with difficulty, the task's trivial
baselines; written as JSON, Markdown, a PNG plot and pictures of held-out samples drawn by the
task's renderer (samples.html) under RUN_DIR/eval/.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ponder.core.files import atomic_write_text, save_figure
from ponder.core.metrics import FRACTION, figure_formats, figure_text, lower_is_better
from ponder.core.render import samples_html
from ponder.core.task import TASKS, TaskData
from ponder.training.calibrate import describe as describe_calibration
from ponder.training.calibrate import wants_calibration
from ponder.training.carry import batch_of
from ponder.training.checkpoint import write_eval_report
from ponder.training.distributed import SINGLE, Shard
from ponder.training.evaluate import adaptive_inference, describe_evaluation, evaluate_split


def evaluate_run(model, task: TaskData, cfg, run_dir: Path, *, device: torch.device,
                 split: str = "test", quiet: bool = False, shard: Shard = SINGLE, out: Path | None | str = "eval",
                 about: dict | None = None) -> dict:
    """Full evaluation of `model` on the held-out split (and a training subset); writes its files
    into `out` (a folder of the run, RUN_DIR/eval by default; None: print only, write nothing).
    `about` says what is evaluated (split, overrides, halting head and threshold, weights,
    checkpoint) and is written into the report.
    Across processes every rank evaluates its part of each split and rank 0 writes. A task with
    its own `evaluate_run` (language models, ponder.tasks.lm.task) writes its own report. With
    halt.threshold=auto the model must have been calibrated (ponder.training.calibrate.calibrate; the
    callers in ponder.runs.run do it): its record is written as `halt_calibration`."""
    out = Path(run_dir) / out if isinstance(out, str) else out
    own = TASKS.get(cfg.task.name).evaluate_run
    if own is not None:  # the task's own evaluation (language models, ARC)
        return own(model, task, cfg, run_dir, device=device, split=split, quiet=quiet, shard=shard, out=out,
                   about=about)
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
        "evaluation": about,
        "difficulty_name": task.difficulty_name,
        "columns": list(task.metric.columns),
        "formats": figure_formats(task.metric),
        "lower_is_better": sorted(lower_is_better(task.metric)),
        "held_out": evaluate_split(model, held_out, task.metric, max_steps=m, batch_size=ec.batch_size, device=device,
                                   shard=shard),
        "train": evaluate_split(model, train_sub, task.metric, max_steps=m, batch_size=ec.batch_size,
                                device=device, budgets=False, shard=shard),
        "baselines": task.baselines(held_out, task.train),
    }
    if wants_calibration(cfg):
        report["halt_calibration"] = model.halting.calibration
    if not shard.main:
        return report
    text = format_report(report)
    if out is not None:
        write_eval_report(out, report, text)
        plot_budget_curve(report, out / "accuracy_vs_steps.png")
        if task.render is not None and ec.samples_drawn > 0:
            draw_samples(model, task, held_out, ec.samples_drawn, m, out / "samples.html", device=device)
    if not quiet:
        print(text)
    return report


def sample_figures(model, task: TaskData, split, k: int, max_steps: int, *, device: torch.device) -> list[str]:
    """The first `k` samples of `split` with the model's answers, as HTML figures: the task's own
    `sample_figures` when it has them (a language model's tokens shaded by depth), else each
    sample drawn by the task's renderer as an SVG with its adaptive-halting answer and a caption
    (steps used, difficulty)."""
    if task.sample_figures is not None:
        return task.sample_figures(model, split, k, device)
    sub = split.slice(0, k)
    batch = batch_of(sub).to(device)
    was_training = model.training
    model.eval()
    answers, steps = adaptive_inference(model, batch, max_steps=max_steps)
    model.train(was_training)
    preds = answers.argmax(-1).cpu().numpy()
    svgs = [task.render(sub.inputs[i], sub.labels[i], preds[i]) for i in range(len(sub))]
    titles = [f"held-out sample {i}: {int(steps[i])} of {max_steps} steps, {task.difficulty_name.split(' (')[0]} "
              f"{sub.difficulty[i]:g}" for i in range(len(sub))]
    return [f"<figcaption>{t}</figcaption>{svg}" for t, svg in zip(titles, svgs)]


def draw_samples(model, task: TaskData, split, k: int, max_steps: int, path: Path, *, device: torch.device) -> None:
    """`sample_figures` as one self-contained HTML page."""
    figures = sample_figures(model, task, split, k, max_steps, device=device)
    atomic_write_text(path, samples_html(figures, f"{task.name}: held-out samples"), what="the sample pictures")


def split_label(split: str) -> str:
    """How a report names the split it scored: "held-out" for the test split, else the split's name."""
    return "held-out" if split == "test" else f"{split}-split"


def format_report(r: dict) -> str:
    """Markdown tables of a report dict (what `ponder eval` prints): one column per figure of the
    task's metric (headline first, each in its own format), baselines below the model."""
    h, t = r["held_out"], r["train"]
    m = h["max_steps"]
    cols = r.get("columns", ["exact", "cell"])
    formats = r.get("formats", {})

    def fig(c: str, x) -> str:
        return figure_text(x, formats.get(c, FRACTION))

    head = cols[0]
    where = split_label(r.get("split", "test"))
    lines = [f"## {r['preset'] or r['task']}: {r['split']} split ({h['n']} samples)", "",
             *([describe_evaluation(r["evaluation"]), ""] if r.get("evaluation") else []),
             "| model / baseline | " + " | ".join(f"{c} ({where})" for c in cols) + f" | {head} (train) | mean steps |",
             "|---" * (len(cols) + 3) + "|",
             "| model, adaptive halting | " + " | ".join(fig(c, h[c]) for c in cols) + f" | {fig(head, t[head])} | "
             f"{h['mean_steps']:.2f} of {m} |",
             f"| model, always {m} steps | " + " | ".join(fig(c, h[f"{c}_by_budget"][-1]) for c in cols) + f" | | {m} |"]
    for name, b in r["baselines"].items():
        lines.append(f"| baseline: {name} | " + " | ".join(fig(c, b.get(c)) for c in cols) + " | | |")
    corr = h["spearman_steps_difficulty"]
    lines += ["", "| step budget | " + " | ".join(str(i + 1) for i in range(m)) + " |",
              "|---" * (m + 1) + "|",
              *[f"| {c} | " + " | ".join(fig(c, x) for x in h[f"{c}_by_budget"]) + " |" for c in cols],
              "| samples halting here | " + " | ".join(str(c) for c in h["steps_histogram"]) + " |", "",
              f"Spearman rank correlation of steps used with {r['difficulty_name']}: "
              + ("n/a (constant)" if corr is None else f"{corr:.3f}"),
              f"Wall time: adaptive {h['seconds_adaptive']:.2f}s vs always-{m}-steps {h['seconds_all_steps']:.2f}s; "
              f"early-exit steps agree with the full rollout's halting step for "
              f"{figure_text(h['halt_consistent'])} of samples.",
              *([describe_calibration(r["halt_calibration"]) + "."] if r.get("halt_calibration") else []),
              ""]
    return "\n".join(lines)


def plot_budget_curve(r: dict, path: Path) -> None:
    """Exact accuracy against step budget (overall and per difficulty bucket), adaptive points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = r["held_out"]
    head = r.get("columns", ["exact"])[0]
    budgets = np.arange(1, h["max_steps"] + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(budgets, h[f"{head}_by_budget"], "k-o", label="all")
    ax.plot([h["mean_steps"]], [h[head]], "k*", markersize=14, label="adaptive halting")
    short = r["difficulty_name"].split(" (")[0]  # e.g. "solver hardness", "path length"
    for b in h.get("by_difficulty", []):
        line, = ax.plot(budgets, b[f"{head}_by_budget"], "--", alpha=0.8,
                        label=f"{short} {b['lo']:g}-{b['hi']:g} (n={b['n']})")
        ax.plot([b["mean_steps"]], [b[head]], "*", color=line.get_color(), markersize=10)
    ax.set_xlabel("step budget (ACT steps)")
    ax.set_ylabel(f"{head} ({split_label(r.get('split', 'test'))})")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{r['preset'] or r['task']}: {head} vs compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, "the accuracy-vs-steps plot", dpi=110)
    plt.close(fig)


def evaluation_name(overrides: list[str], split: str) -> str:
    """The folder under RUN_DIR/eval/ of an evaluation with these overrides or another split ("" for
    the run's own evaluation: the held-out split, no overrides), e.g. "split-train+halt.threshold=0.95"."""
    parts = ([f"split-{split}"] if split != "test" else []) + [o.lstrip("-") for o in overrides]
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", "+".join(parts))[:120]


def about_evaluation(cfg, ckpt: Path, *, split: str, overrides: list[str], use_ema: bool) -> dict:
    """What an evaluation measures, recorded in its report: split, overrides, halting head and
    threshold, weights and checkpoint."""
    halt = {"kind": cfg.halt.kind}
    if hasattr(cfg.halt, "threshold"):
        halt["threshold"] = cfg.halt.threshold
    return {"split": split, "overrides": list(overrides), "halt": halt, "checkpoint": str(ckpt),
            "weights": "EMA" if use_ema and cfg.train.ema_decay > 0 else "raw"}
