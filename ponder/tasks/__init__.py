"""Task families, one wing each. Importing this package registers every task in `TASKS`:
adding a task is adding a folder beside these and one line here.

A wing owns its data (generation and file readers), metric, trivial baselines, renderer and its
own `ponder` verbs, behind the task protocol of `ponder.core.task`. Wings may import `core`,
`models`, `training`, `health` and `tasks.common`, never each other nor the run layer above
(`ponder.runs`): a verb that needs a trained run is handed the run layer's loader by the CLI.
"""
from ponder.core.task import TASKS, Split, TaskData, build_task
from ponder.tasks import arc as _arc  # noqa: F401  (each wing registers its task when imported)
from ponder.tasks import lm as _lm  # noqa: F401
from ponder.tasks import mazes as _mazes  # noqa: F401
from ponder.tasks import parity as _parity  # noqa: F401
from ponder.tasks import sudoku as _sudoku  # noqa: F401

__all__ = ["TASKS", "Split", "TaskData", "build_task"]
