"""The maze wing: generated mazes (shortest-path labels, Maze-Hard's path-length rule), Maze-Hard's
published files, batched breadth-first search, baselines and the picture of a sample. Registers
the task "maze"."""
from ponder.core.task import TASKS, TaskEntry
from ponder.tasks.mazes.task import MazeConfig, build_maze

TASKS.add("maze", TaskEntry(MazeConfig, build_maze))
