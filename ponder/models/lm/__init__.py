"""Language models: Gated DeltaNet (recurrent and chunked forms), hybrid stacks with attention at
chosen layers, and a causal recursive LM with per-token halting. May import `ponder.core` and the
rest of `ponder.models`."""

LM_KINDS = ("hybrid_lm", "recursive_lm")  # the `model.kind`s that are language models
