"""The ARC sections of a run's report page: scores under both official rules beside every baseline,
the tasks solved (and which baselines also solve them), what each answer cost, and the gallery.

Read from the ARC evaluation the run wrote (RUN_DIR/eval/report.json and gallery.png,
ponder.tasks.arc.evaluation), so drawing the page never rebuilds the task or runs the model.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

from ponder.core.metrics import figure_text

RULE_COLUMNS = (("fractional", 1), ("fractional", 2), ("all_or_nothing", 1), ("all_or_nothing", 2))


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _scores_table(report: dict) -> str:
    rows = [(name, r, False) for name, r in report.get("scores", {}).items()]
    rows += [(f"baseline: {name}", r, True) for name, r in report.get("baselines", {}).items()]
    head = "".join(f"<th>{_esc(rule.replace('_', '-'))} pass@{k}</th>" for rule, k in RULE_COLUMNS)
    body = []
    for name, r, _ in rows:
        summary = r.get("summary", {})
        cells = "".join(f'<td class="num" data-key="arc.{_esc(name)}.{rule}.{k}">'
                        f"{figure_text(summary.get(rule, {}).get(f'pass@{k}'))}</td>" for rule, k in RULE_COLUMNS)
        solved = r.get("solved_all_tests_at_2", [])
        body.append(f"<tr><th>{_esc(name)}</th>{cells}<td class=\"num\">{len(solved)} of {r.get('n_tasks', '?')}</td>"
                    f"</tr>")
    return (f'<table id="arc-scores"><tr><th></th>{head}<th>tasks solved (all tests, pass@2)</th></tr>'
            f"{''.join(body)}</table>")


def _solved_list(report: dict) -> str:
    baselines = {name: set(r.get("solved_all_tests_at_2", [])) for name, r in report.get("baselines", {}).items()}
    items = []
    for name, r in report.get("scores", {}).items():
        solved = r.get("solved_all_tests_at_2", [])
        if not solved:
            items.append(f"<li>{_esc(name)}: none</li>")
            continue
        parts = []
        for task in solved:
            also = [b for b, s in baselines.items() if task in s]
            parts.append(f"<code>{_esc(task)}</code>" + (f" (also {_esc(', '.join(also))})" if also else ""))
        items.append(f"<li>{_esc(name)}: {', '.join(parts)}</li>")
    return f"<ul>{''.join(items)}</ul>"


def _costs(report: dict) -> str:
    rows = []
    for name in report.get("scores", {}):
        steps = report.get("mean_steps", {}).get(name)
        sec = report.get("seconds_per_task", {}).get(name)
        acc = report.get("view_accuracy", {}).get(name, {})
        rows.append(f"<tr><th>{_esc(name)}</th><td class=\"num\">{figure_text(steps, 'number')}</td>"
                    f"<td class=\"num\">{figure_text(sec, 'number')}</td>"
                    f"<td class=\"num\">{figure_text(acc.get('cell'))}</td></tr>")
    return ("<table><tr><th>answers</th><th>mean steps</th><th>seconds per task</th>"
            f"<th>target cells right per view</th></tr>{''.join(rows)}</table>")


def page_sections(run_dir: Path, report: dict) -> list[tuple[str, str]]:
    """[(title, HTML)] of the ARC evaluation `report` (RUN_DIR/eval/report.json) of a run."""
    if "scores" not in report:
        return []
    scope = (f"{report.get('split', '?')} ({report.get('label', '')}), {report.get('n_tasks', '?')} tasks whose "
             f"grids fit {report.get('max_side', '?')}x{report.get('max_side', '?')}, "
             f"{report.get('views', '?')} views per task voted into two attempts; {report.get('data_version', '')}")
    sections = [("ARC scores, both rules", f'<p class="note">{_esc(scope)}</p>' + _scores_table(report)),
                ("ARC tasks solved", _solved_list(report)),
                ("ARC answers: steps and time", _costs(report))]
    gallery = Path(run_dir) / "eval" / "gallery.png"
    if gallery.exists():
        data = base64.b64encode(gallery.read_bytes()).decode()
        sections.append(("ARC gallery", f'<img alt="ARC gallery" style="max-width:100%" '
                                        f'src="data:image/png;base64,{data}"/>'))
    return sections
