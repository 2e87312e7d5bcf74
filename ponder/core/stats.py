"""Small statistics shared by evaluation and the health checks."""
from __future__ import annotations

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
