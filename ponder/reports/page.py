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
import json
import time
from pathlib import Path
from typing import Any

from ponder.core.errors import PonderError
from ponder.core.files import atomic_write_text
from ponder.core.metrics import figure_text
from ponder.core.progress import bar
from ponder.reports.figures import budget_svg, curves_svg, heatmap_svg, timeline_svg
from ponder.reports.view import RunView, headline_column
from ponder.runs.report import sample_figures
from ponder.runs.trained import load_trained
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


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


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
                  key=lambda c: [headline_column(v) for v in views].count(c), reverse=True)
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
    head = headline_column(v)
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
        head = headline_column(v)
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
    heads = sorted({headline_column(v) for v in views})
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
