"""Language models: Gated DeltaNet (recurrent and chunked), hybrid stacks, a causal recursive LM
with per-token halting, code and text corpora with a byte-level BPE tokenizer."""
