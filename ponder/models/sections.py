"""What every model section tells the health wing, for the models that have no adapter and no
soft logit clamp (the recurrent-cell reasoner and the language models)."""
from __future__ import annotations

import math
from typing import ClassVar


class PlainSection:
    """Base of the config sections of models without an adapter or a logit clamp: the health wing
    reads the recursive reasoner's adapter and logit-clamp settings from any model section; these
    models have neither (no adapter: its norm levels never fire; no soft clamp)."""

    adapter_max_norm: ClassVar[float] = math.inf
    logit_clamp: ClassVar[float] = 0.0  # 0 = off
    logit_clamp_max: ClassVar[float] = math.inf
