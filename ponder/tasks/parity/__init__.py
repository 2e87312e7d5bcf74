"""The parity wing: PonderNet's parity vectors (interpolation and extrapolation splits), majority
baselines and the picture of a sample. Registers the task "parity"."""
from ponder.core.task import TASKS, TaskEntry
from ponder.tasks.parity.task import ParityConfig, build_parity

TASKS.add("parity", TaskEntry(ParityConfig, build_parity))
