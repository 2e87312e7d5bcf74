"""Agreement between two gradient estimates (e.g. an estimator against a reference)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from ponder.core.errors import PonderError


@dataclass
class Agreement:
    """cosine: cos(a, b); norm_ratio: |a| / |b| (b is the reference); sign_agreement: fraction of
    entries, among those where a or b is non-zero, on which a and b have the same sign.
    NaN where undefined (a zero vector)."""

    cosine: float
    norm_ratio: float
    sign_agreement: float


@dataclass
class GradientComparison(Agreement):
    """Global agreement over all tensors concatenated, and the same per named tensor."""

    per_tensor: dict[str, Agreement] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _agreement(a: Tensor, b: Tensor) -> Agreement:
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    na, nb = a.norm().item(), b.norm().item()
    cos = (a @ b).item() / (na * nb) if na > 0 and nb > 0 else math.nan
    ratio = na / nb if nb > 0 else math.nan
    either = (a != 0) | (b != 0)
    n = int(either.sum())
    sign = ((torch.sign(a) == torch.sign(b)) & either).sum().item() / n if n else math.nan
    return Agreement(cosine=cos, norm_ratio=ratio, sign_agreement=sign)


def compare_gradients(a: Sequence[Tensor], b: Sequence[Tensor], names: Sequence[str] | None = None) -> GradientComparison:
    """Compare gradient lists a and b (same length and shapes); names label the tensors
    (default p0, p1, ...)."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise PonderError(f"cannot compare {len(a)} gradients with {len(b)}")
    names = list(names) if names is not None else [f"p{i}" for i in range(len(a))]
    if len(names) != len(a):
        raise PonderError(f"{len(names)} names for {len(a)} gradients")
    for n, x, y in zip(names, a, b):
        if x.shape != y.shape:
            raise PonderError(f"gradient {n}: shapes {tuple(x.shape)} and {tuple(y.shape)} differ")
    glob = _agreement(torch.cat([x.flatten() for x in a]), torch.cat([y.flatten() for y in b]))
    return GradientComparison(cosine=glob.cosine, norm_ratio=glob.norm_ratio, sign_agreement=glob.sign_agreement,
                              per_tensor={n: _agreement(x, y) for n, x, y in zip(names, a, b)})
