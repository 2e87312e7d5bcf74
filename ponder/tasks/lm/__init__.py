"""The language-modelling wing: offline corpora (the Python standard library or any text), a
byte-level BPE tokenizer cached by content hash, n-gram baselines, per-token evaluation with early
exit, and text generation (`ponder generate`). Registers the task "lm"."""
