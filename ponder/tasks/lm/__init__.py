"""The language-modelling wing: offline corpora (the Python standard library or any text), a
byte-level BPE tokenizer cached by content hash, n-gram baselines, per-token evaluation with early
exit, and text generation (`ponder generate`). Registers the task "lm"."""
from ponder.core.task import TASKS, TaskEntry
from ponder.tasks.lm.evaluate import write_lm_report
from ponder.tasks.lm.task import LMTaskConfig, NextToken, build_lm

TASKS.add("lm", TaskEntry(LMTaskConfig, build_lm, metric=NextToken, evaluate_run=write_lm_report))
