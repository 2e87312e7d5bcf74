"""Task families. Importing this package registers every task in `TASKS`."""
from ponder.data.base import TASKS, Split, TaskData, build_task
from ponder.data import sudoku as _sudoku  # noqa: F401  (registers "sudoku")
from ponder.data import mazes as _mazes  # noqa: F401  (registers "maze")
from ponder.data import parity as _parity  # noqa: F401  (registers "parity")
from ponder.data import arc as _arc  # noqa: F401  (registers "arc")
from ponder.data import text as _text  # noqa: F401  (registers "lm")

__all__ = ["TASKS", "Split", "TaskData", "build_task"]
