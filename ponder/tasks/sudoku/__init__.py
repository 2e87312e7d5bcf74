"""The Sudoku wing: generated puzzles (by givens, or minimal puzzles filtered by backtracks),
Sudoku-Extreme's published files, the solver and search-work measures, digit-permutation and
band/stack augmentation, baselines and the picture of a sample. Registers the task "sudoku"."""
from ponder.core.task import TASKS, TaskEntry
from ponder.tasks.sudoku.task import SudokuConfig, build_sudoku

TASKS.add("sudoku", TaskEntry(SudokuConfig, build_sudoku))
