"""The report page's figures, drawn by matplotlib and inlined as SVG (no network, no script):
training curves, accuracy against step budget, steps used against difficulty, the controller's
actions on a timeline. Each takes the page's `RunView`s (ponder.reports.view)."""
from __future__ import annotations

import io

import numpy as np

from ponder.core.metrics import FRACTION
from ponder.reports.view import RunView, headline_column


def _svg_of(fig) -> str:
    """A matplotlib figure as inline SVG (without the XML prologue)."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "ponder"  # the same run gives the same page
    return plt


def curves_svg(views: list[RunView]) -> str:
    """Training loss, held-out headline figure, steps used and halting probability against step."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4))
    panels = (("train", "loss", "training loss", axes[0, 0]),
              ("eval", "test_{head}", "held-out {head} (adaptive halting)", axes[0, 1]),
              ("train", "halted_mean_steps", "steps used by halted training samples", axes[1, 0]),
              ("train", "halt_prob_mean", "mean halting probability (training batch)", axes[1, 1]))
    for kind, key, title, ax in panels:
        for v in views:
            head = headline_column(v)
            steps, values = v.series(kind, key.format(head=head))
            if steps:
                ax.plot(steps, values, "-o" if len(steps) < 30 else "-", markersize=3, label=v.name)
        head = headline_column(views[0])
        if key == "test_{head}":
            _figure_axis(ax, views[0], head)
        ax.set_title(title.format(head=head), fontsize=10)
        ax.set_xlabel("optimizer step", fontsize=9)
        ax.grid(alpha=0.3)
    if len(views) > 1:
        axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return _svg_of(fig)


def budget_svg(views: list[RunView]) -> str | None:
    """Held-out headline figure against step budget, with each run's adaptive-halting point."""
    evals = [v for v in views if v.eval]
    if not evals:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    evals = [v for v in evals if f"{headline_column(v)}_by_budget" in v.eval["held_out"]]
    if not evals:
        return None
    for v in evals:
        h, head = v.eval["held_out"], headline_column(v)
        budgets = np.arange(1, h["max_steps"] + 1)
        line, = ax.plot(budgets, h[f"{head}_by_budget"], "-o", markersize=4, label=f"{v.name}: always t steps")
        ax.plot([h["mean_steps"]], [h[head]], "*", color=line.get_color(), markersize=14,
                label=f"{v.name}: adaptive ({h['mean_steps']:.2f} steps)")
    ax.set_xlabel("step budget t")
    head = headline_column(evals[0])
    ax.set_ylabel(f"held-out {head}")
    _figure_axis(ax, evals[0], head)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _svg_of(fig)


def _figure_axis(ax, v: RunView, column: str) -> None:
    """The y axis of a task's figure: a share from 0 to 1, or a plain number (log scale where
    lower is better, as perplexity)."""
    if v.formats.get(column, FRACTION) == FRACTION:
        ax.set_ylim(-0.02, 1.02)
    elif column in v.lower:
        ax.set_yscale("log")


def heatmap_svg(v: RunView) -> str | None:
    """Held-out samples counted by steps used (rows) and difficulty (columns, up to 12 bins)."""
    if not v.eval or "steps" not in v.eval["held_out"] or "difficulty" not in v.eval["held_out"]:
        return None
    h = v.eval["held_out"]
    steps, diff, m = np.asarray(h["steps"]), np.asarray(h["difficulty"], dtype=float), h["max_steps"]
    values = np.unique(diff)
    edges = (np.append(values, values[-1] + 1) - 0.5) if len(values) <= 12 else np.linspace(diff.min(), diff.max(), 13)
    counts, _, _ = np.histogram2d(steps, diff, bins=[np.arange(0.5, m + 1.5), edges])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    im = ax.imshow(counts, origin="lower", aspect="auto", cmap="viridis",
                   extent=(edges[0], edges[-1], 0.5, m + 0.5))
    fig.colorbar(im, ax=ax, label="held-out samples")
    ax.set_xlabel(v.eval.get("difficulty_name", "difficulty"), fontsize=8)
    ax.set_ylabel("steps used")
    ax.set_title(f"{v.name}: steps used against difficulty", fontsize=10)
    return _svg_of(fig)


def timeline_svg(v: RunView) -> str:
    """The learning rate over training with the controller's actions, the halting flags and the
    refused (non-finite) steps marked where they happened."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 2.6))
    steps, lr = v.series("train", "lr")
    if steps:
        ax.plot(steps, lr, "k-", linewidth=1, label="learning rate (logged)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    top = max(lr) if lr else 1.0
    for i, a in enumerate(v.actions()):
        ax.axvline(a["step"], color="tab:red", alpha=0.6)
        ax.annotate(a["action"], (a["step"], top * (0.95 - 0.12 * (i % 5))), fontsize=7, color="tab:red", rotation=0)
    for f in v.flags():
        ax.axvline(f["step"], color="tab:orange", linestyle="--", alpha=0.7)
        ax.annotate(f"halting: {f['verdict']}", (f["step"], top * 0.4), fontsize=7, color="tab:orange")
    s_steps, skipped = v.series("train", "skipped_steps")
    prev = 0.0
    for s, k in zip(s_steps, skipped):
        if k > prev:
            ax.axvline(s, color="tab:purple", linestyle=":", alpha=0.7)
        prev = k
    ax.grid(alpha=0.3)
    ax.set_title(f"{v.name}: controller actions (red), halting flags (orange), refused steps (purple)", fontsize=9)
    fig.tight_layout()
    return _svg_of(fig)


# ---------------------------------------------------------------------- tables
