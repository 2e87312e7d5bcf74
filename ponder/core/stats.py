"""Small statistics shared by evaluation and the health checks."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from scipy.stats import spearmanr


def spearman_or_none(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> Optional[float]:
    """Spearman rank correlation of x and y; None when undefined (fewer than 3 points or a constant
    side), so an undefined correlation is reported as such, never as 0."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return None
    return float(spearmanr(a, b).statistic)


def largest_drop(values: Sequence[float]) -> tuple[float, float, float]:
    """(largest fall from a running peak, peak, last value) of a non-empty series."""
    peak, drop = -np.inf, 0.0
    for v in values:
        peak = max(peak, v)
        drop = max(drop, peak - v)
    return drop, max(values), values[-1]


def wilson_upper(successes: float, n: int, z: float = 1.645) -> float:
    """One-sided upper confidence bound of a proportion observed as `successes` of `n` (Wilson
    score interval; z=1.645 is 95% one-sided). 1.0 when n is 0."""
    if n <= 0:
        return 1.0
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))
