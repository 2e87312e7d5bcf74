"""`ponder report RUN_DIR [RUN_DIR ...]`: one self-contained HTML page per run or comparison.

The page needs no network and no script to view: the figures are inline SVG (matplotlib), the
samples are the task renderer's own SVG pictures. It shows, for each run: the headline figures
beside the task's baselines, training curves, accuracy against step budget, steps used against
difficulty (a heatmap), the halting-health verdicts, the controller's actions on a timeline, the
health checklist and held-out samples. With several runs, the curves are overlaid and the
figures sit side by side.

Every number on the page comes from the run's files (metrics.jsonl, eval/report.json,
health.json); the figures plotted are also embedded as JSON (`<script type="application/json"
id="ponder-data">`) so a test can compare the page with the run.
"""
from __future__ import annotations

import html
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ponder.core.errors import PonderError
from ponder.core.files import atomic_write_text
from ponder.core.metrics import FRACTION, ExactMatch, figure_formats, figure_text, lower_is_better
from ponder.core.progress import bar
from ponder.runs.report import sample_figures
from ponder.runs.run import health_report, load_trained
from ponder.tasks import TASKS
from ponder.training.callbacks import MetricsLog
from ponder.training.in_training import evaluation_cost

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#111;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#176117}.fail{color:#a11}.none{color:#777}
figure{margin:.6em 0}figure svg{max-width:100%;height:auto}
.samples{display:flex;flex-wrap:wrap;gap:1em}.samples figure{flex:0 1 auto}
.note{color:#555;font-size:.9em}
"""


class RunView:
    """What the page shows of one run directory, read from its files. The run's task says how its
    figures read (its metric's columns, formats and direction) and adds its own sections (ARC)."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        if not self.dir.is_dir():
            raise PonderError(f"no such run directory: {self.dir}")
        if not (self.dir / "config.json").exists():
            raise PonderError(f"{self.dir} is not a run directory (no config.json)")
        self.name = self.dir.name
        self.health = health_report(self.dir)  # also refreshes health.md / health.json
        self.config = _read_json(self.dir / "config.json")
        self.records = MetricsLog(self.dir).records()  # none yet for a run stopped before its first log line
        task_name = (self.config.get("task") or {}).get("name")
        self.entry = TASKS.get(task_name) if task_name in TASKS.names() else None
        metric = self.entry.metric if self.entry else ExactMatch
        eval_file = self.dir / "eval" / "report.json"
        report = _read_json(eval_file) if eval_file.exists() else None
        self.report = report if isinstance(report, dict) else None  # the run's own evaluation, any task
        # per-sample evaluations (puzzles, language models) have "held_out"; ARC's is by task and view
        self.eval = self.report if self.report and "held_out" in self.report else None
        self.columns = list((self.eval or {}).get("columns") or metric.columns)
        self.formats = {**figure_formats(metric), **(self.eval or {}).get("formats", {})}
        self.lower = set(lower_is_better(metric)) | set((self.eval or {}).get("lower_is_better", []))
        self.others = {p.parent.name: r for p in sorted((self.dir / "eval").glob("*/report.json"))
                       if isinstance(r := _read_json(p), dict)}  # evaluations with overrides or another split

    def fmt(self, column: str):
        kind = self.formats.get(column, FRACTION)
        return lambda x: figure_text(x, kind)

    def series(self, kind: str, key: str) -> tuple[list[int], list[float]]:
        rows = [(r["step"], r[key]) for r in self.records if r.get("kind") == kind and isinstance(r.get(key), (int, float))]
        return [s for s, _ in rows], [float(v) for _, v in rows]

    def actions(self) -> list[dict]:
        return [r for r in self.records if r.get("kind") == "action"]

    def flags(self) -> list[dict]:
        return [r for r in self.records if r.get("kind") == "halting_flag"]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PonderError(f"{path} is unreadable or corrupt ({type(e).__name__})") from None


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


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


# ---------------------------------------------------------------------- figures


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
            head = _head(v)
            steps, values = v.series(kind, key.format(head=head))
            if steps:
                ax.plot(steps, values, "-o" if len(steps) < 30 else "-", markersize=3, label=v.name)
        head = _head(views[0])
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
    evals = [v for v in evals if f"{_head(v)}_by_budget" in v.eval["held_out"]]
    if not evals:
        return None
    for v in evals:
        h, head = v.eval["held_out"], _head(v)
        budgets = np.arange(1, h["max_steps"] + 1)
        line, = ax.plot(budgets, h[f"{head}_by_budget"], "-o", markersize=4, label=f"{v.name}: always t steps")
        ax.plot([h["mean_steps"]], [h[head]], "*", color=line.get_color(), markersize=14,
                label=f"{v.name}: adaptive ({h['mean_steps']:.2f} steps)")
    ax.set_xlabel("step budget t")
    head = _head(evals[0])
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


def _head(v: RunView) -> str:
    return v.columns[0]


def summary_table(views: list[RunView]) -> str:
    """Headline figures, one column per run; each cell carries the exact value it shows."""
    rows: list[tuple[str, str, list[Any]]] = []

    def row(label: str, key: str, pick, fmt=figure_text):
        rows.append((label, key, [(pick(v), fmt) for v in views]))

    row("preset", "preset", lambda v: v.config.get("preset"), str)
    row("task", "task", lambda v: v.config.get("task", {}).get("name"), str)
    row("optimizer steps logged", "steps", lambda v: max((r["step"] for r in v.records), default=0), str)
    row("evaluated", "evaluation", lambda v: _evaluated(v), str)
    row("evaluation inside training", "eval_cost", lambda v: evaluation_cost(v.records), _cost_text)
    cols = sorted({c for v in views if v.eval for c in v.columns},
                  key=lambda c: [_head(v) for v in views].count(c), reverse=True)
    fmt = {c: next(v.fmt(c) for v in views if c in v.columns) for c in cols}
    for c in cols:
        row(f"held-out {c}, adaptive halting", f"held_out.{c}", lambda v, c=c: _eval(v, "held_out", c), fmt[c])
        row(f"held-out {c}, always M steps", f"held_out.{c}_at_M",
            lambda v, c=c: (_eval(v, "held_out", f"{c}_by_budget") or [None])[-1], fmt[c])
        row(f"training {c}", f"train.{c}", lambda v, c=c: _eval(v, "train", c), fmt[c])
    row("mean steps used (held-out)", "held_out.mean_steps", lambda v: _eval(v, "held_out", "mean_steps"),
        lambda x: "n/a" if x is None else f"{x:.2f}")
    row("step cap M", "held_out.max_steps", lambda v: _eval(v, "held_out", "max_steps"), str)
    row("halting threshold (evaluation)", "halt.threshold", _threshold_shown, lambda x: "n/a" if x is None else str(x))
    row("Spearman(steps, difficulty)", "held_out.spearman_steps_difficulty",
        lambda v: _eval(v, "held_out", "spearman_steps_difficulty"), lambda x: "n/a" if x is None else f"{x:.3f}")
    names = sorted({b for v in views if v.eval for b in v.eval.get("baselines", {})})
    for b in names:
        for c in cols:
            row(f"baseline: {b} ({c})", f"baselines.{b}.{c}",
                lambda v, b=b, c=c: ((v.eval or {}).get("baselines", {}).get(b) or {}).get(c), fmt[c])
    head = "".join(f"<th>{_esc(v.name)}</th>" for v in views)
    body = []
    always = {"preset", "task", "steps"}
    rows = [r for r in rows if r[1] in always or any(val is not None for val, _ in r[2])]  # rows that apply
    for label, key, cells in rows:
        tds = "".join(f'<td class="num" data-key="{_esc(key)}" data-value="{_esc(json.dumps(val))}">'
                      f"{_esc(fmt(val) if val is not None else 'n/a')}</td>" for val, fmt in cells)
        body.append(f"<tr><th>{_esc(label)}</th>{tds}</tr>")
    return f'<table id="summary"><tr><th></th>{head}</tr>{"".join(body)}</table>'


def _eval(v: RunView, part: str, key: str):
    return None if not v.eval else v.eval.get(part, {}).get(key)


def _threshold_shown(v: RunView):
    """The halting threshold the evaluation used: "auto: T" with the calibrated T, the threshold the
    evaluation recorded, the run's own, or None for a head without one."""
    calibration = (v.eval or {}).get("halt_calibration")
    if calibration:
        return f"auto: {calibration['threshold']:g}"
    recorded = ((v.report or {}).get("evaluation") or {}).get("halt", {})
    if "threshold" in recorded:
        return recorded["threshold"]
    return v.config.get("halt", {}).get("threshold")


def _evaluated(v: RunView) -> str | None:
    """What the run's own evaluation measured (split, overrides), or None when there is none."""
    if v.report is None:
        return None
    about = v.report.get("evaluation") or {}
    split = about.get("split", v.report.get("split", "test"))
    over = " ".join(about.get("overrides", [])) or "no overrides"
    return f"{'held-out' if split == 'test' else split + ' split'}, {over}"


def _cost_text(cost: dict) -> str:
    """What evaluation inside training cost (ponder.training.in_training.evaluation_cost), in words."""
    share = "" if cost["share"] is None else f", {100 * cost['share']:.1f}% of the loop's {cost['loop_seconds']:.0f} s"
    return f"{cost['evaluations']} evaluations, {cost['seconds']:.1f} s{share}"


def _mark(passed) -> str:
    if passed is None:
        return '<span class="none">no data</span>'
    return '<span class="pass">passed</span>' if passed else '<span class="fail">FAILED</span>'


def checklist_table(v: RunView) -> str:
    rows = "".join(f"<tr><td>{_esc(c['name'])}</td><td>{_mark(c['passed'])}</td><td>{_esc(c['summary'])}</td></tr>"
                   for c in v.health.get("checks", []))
    return f'<table class="checklist"><tr><th>training check</th><th>result</th><th>summary</th></tr>{rows}</table>'


def verdicts_table(v: RunView) -> str:
    first = v.health.get("halting_first_flagged", {}) or {}

    def history(h: dict) -> str:
        step = first.get(h["name"])
        if step is None:
            return "never" if not h["flagged"] else ""
        return f"from step {step}" if h["flagged"] else f"at step {step}, cleared by the end"

    rows = "".join(
        f"<tr><td>{_esc(h['name'])}</td><td>{_mark(not h['flagged'])}</td>"
        f"<td>{_esc(history(h))}</td><td>{_esc(h['reason'])}</td></tr>"
        for h in v.health.get("halting", []))
    return (f'<table class="verdicts"><tr><th>halting verdict</th><th>at the end</th><th>flagged during training</th>'
            f"<th>reason</th></tr>{rows}</table>")


def actions_table(v: RunView) -> str:
    acts = v.actions()
    if not acts:
        on = (v.config.get("health") or {}).get("controller")
        return f'<p class="note">{"The controller took no action." if on else "The controller was off in this run."}</p>'
    rows = "".join(f"<tr><td class=\"num\">{a['step']}</td><td>{_esc(a['action'])}</td>"
                   f"<td>{_esc(', '.join(a.get('causes', [])))}</td><td>{_esc(a.get('reason', ''))}</td></tr>"
                   for a in acts)
    return f'<table class="actions"><tr><th>step</th><th>action</th><th>causes</th><th>reason</th></tr>{rows}</table>'


def samples_section(v: RunView, k: int) -> str:
    """Held-out samples drawn by the task's renderer with the trained model's answers."""
    if k <= 0:
        return ""
    if not (v.dir / "checkpoints").exists():
        return '<p class="note">No checkpoint yet: no samples to draw.</p>'
    model, task, cfg, _ = load_trained(v.dir)
    if task.render is None and task.sample_figures is None:
        return f'<p class="note">The task {task.name!r} has no renderer.</p>'
    held_out = task.test
    figures = sample_figures(model, task, held_out, min(k, len(held_out)), cfg.halt.max_steps,
                             device=next(model.parameters()).device)  # load_trained put it on the run's device
    return '<div class="samples">' + "".join(f"<figure>{f}</figure>" for f in figures) + "</div>"


def other_evaluations_table(v: RunView) -> str:
    """The evaluations written beside the run's own (other splits, overrides): what each measured
    and its headline figure."""
    head = _head(v)
    rows = []
    for name, r in v.others.items():
        about = r.get("evaluation") or {}
        h = r.get("held_out") or {}
        rows.append(f"<tr><td><code>eval/{_esc(name)}</code></td><td>{_esc(about.get('split', r.get('split', '?')))}</td>"
                    f"<td>{_esc(' '.join(about.get('overrides', [])) or 'none')}</td>"
                    f"<td>{_esc((about.get('halt') or {}).get('threshold', 'n/a'))}</td>"
                    f"<td class=\"num\">{_esc(v.fmt(head)(h.get(head)))}</td>"
                    f"<td class=\"num\">{_esc(figure_text(h.get('mean_steps'), 'number'))}</td></tr>")
    return (f'<table class="others"><tr><th>folder</th><th>split</th><th>overrides</th><th>halting threshold</th>'
            f"<th>{_esc(head)}, adaptive</th><th>mean steps</th></tr>{''.join(rows)}</table>")


# ---------------------------------------------------------------------- the page


def page_data(views: list[RunView]) -> dict:
    """The figures the page plots and tabulates, per run (embedded as JSON in the page)."""
    out = {}
    for v in views:
        head = _head(v)
        out[v.name] = {"loss": v.series("train", "loss"), f"test_{head}": v.series("eval", f"test_{head}"),
                       "halted_mean_steps": v.series("train", "halted_mean_steps"),
                       "actions": [[a["step"], a["action"]] for a in v.actions()],
                       "health_passed": v.health.get("passed")}
        if v.eval:
            h = v.eval["held_out"]
            out[v.name]["held_out"] = {k: h[k] for k in (head, "mean_steps", "max_steps", f"{head}_by_budget")}
    return out


def build_page(run_dirs: list[Path], *, samples: int = 6) -> str:
    views = [RunView(Path(d)) for d in bar(run_dirs, desc="reading runs", unit="run")]
    names = [v.name for v in views]
    if len(set(names)) != len(names):  # two runs of the same folder name: use the paths
        for v in views:
            v.name = str(v.dir)
    title = f"ponder: {views[0].name}" if len(views) == 1 else f"ponder: {len(views)} runs compared"
    parts = [f"<h1>{_esc(title)}</h1>",
             f'<p class="note">Written {time.strftime("%Y-%m-%d %H:%M")} from '
             + ", ".join(f"<code>{_esc(v.dir)}</code>" for v in views) + ".</p>",
             "<h2>Figures</h2>", summary_table(views),
             "<h2>Training curves</h2>", f"<figure>{curves_svg(views)}</figure>"]
    budget = budget_svg(views)
    heads = sorted({_head(v) for v in views})
    if budget:
        parts += [f"<h2>Held-out {_esc(' / '.join(heads))} against step budget</h2>", f"<figure>{budget}</figure>"]
    elif not any(v.report for v in views):
        parts += ["<h2>Evaluation</h2>", '<p class="note">No evaluation yet (ponder eval RUN_DIR).</p>']
    progress = bar(total=len(views), desc="drawing runs (samples: the trained model)", unit="run")
    for v in views:
        sub = f" ({_esc(v.name)})" if len(views) > 1 else ""
        if v.entry is not None and v.entry.page_sections is not None and v.report is not None:
            for title, body in v.entry.page_sections(v.dir, v.report):
                parts += [f"<h2>{_esc(title)}{sub}</h2>", body]
        if v.others:
            parts += [f"<h2>Other evaluations{sub}</h2>", other_evaluations_table(v)]
        heat = heatmap_svg(v)
        if heat:  # tasks with a difficulty per sample (not text, not ARC's voted views)
            parts += [f"<h2>Steps used against difficulty{sub}</h2>", f"<figure>{heat}</figure>"]
        parts += [f"<h2>Halting health{sub}</h2>", verdicts_table(v),
                  f"<h2>Controller actions{sub}</h2>", f"<figure>{timeline_svg(v)}</figure>", actions_table(v),
                  f"<h2>Health checklist{sub}</h2>", checklist_table(v),
                  f"<h2>Held-out samples{sub}</h2>", samples_section(v, samples)]
        progress.update(1)
    progress.close()
    data = json.dumps(page_data(views)).replace("</", "<\\/")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n"
            f"<title>{_esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n" + "\n".join(parts)
            + f'\n<script type="application/json" id="ponder-data">{data}</script>\n</body>\n</html>\n')


def write_page(run_dirs: list[Path], out: Path | None = None, *, samples: int = 6) -> Path:
    """Write the page (default RUN_DIR/report.html for one run, ./ponder-report.html for several)."""
    if not run_dirs:
        raise PonderError("name at least one RUN_DIR")
    if samples < 0:
        raise PonderError(f"--samples must be >= 0, got {samples}")
    for d in run_dirs:
        if not Path(d).is_dir():
            raise PonderError(f"no such run directory: {d}")
    out = Path(out) if out else (Path(run_dirs[0]) / "report.html" if len(run_dirs) == 1 else Path("ponder-report.html"))
    if out.exists() and out.is_dir():
        raise PonderError(f"--out {out} is a directory; name a file")
    if not out.parent.exists():
        raise PonderError(f"--out: no such directory: {out.parent}")
    atomic_write_text(out, build_page([Path(d) for d in run_dirs], samples=samples), what="the report page")
    return out
