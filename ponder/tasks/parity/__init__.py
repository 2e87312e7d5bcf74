"""The parity wing: PonderNet's parity vectors (interpolation and extrapolation splits), majority
baselines and the picture of a sample. Registers the task "parity"."""
