"""Experiments built on top of runs: `ponder compare` (two presets, seeds, one budget),
`ponder diagnose gradients` (every estimator on one batch) and the decisive equilibrium
experiment. May import everything but the command line."""
