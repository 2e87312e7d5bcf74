"""The run layer: the whole `Config` (one section per component), building every part of a run
from it, the run directory (open, resume, init-from, load a trained run) and the run's evaluation
report. May import every package below it: `core`, `models`, `estimators`, `dynamics`,
`training`, `health` and `tasks`."""
