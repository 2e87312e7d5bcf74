"""The shared kernel: what every other package of ponder may use.

Errors (`PonderError`), registries, the core records (`Batch`, `State`, `StepOutput`), typed and
range-checked settings, statistics, metrics, SVG pictures of samples, the data cache and the task
protocol (`Split`, `TaskData`, the `TASKS` registry). Imports nothing of ponder outside `core`.
"""
