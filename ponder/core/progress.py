"""Progress bars with an ETA for long work (evaluation, ARC inference, fine-tuning, report pages).

`bar(...)` is a tqdm bar on stderr, shown on a terminal only, and never inside `silenced()`, which a
command enters under `--quiet` (or a run with `train.progress=false`), so quiet stays quiet however
deep the loop sits.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterable, Iterator

from tqdm import tqdm

_shown: ContextVar[bool] = ContextVar("ponder_progress_shown", default=True)


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it") -> tqdm:
    """A progress bar (off under `silenced()`, and where stderr is not a terminal)."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                disable=None if _shown.get() else True)


@contextlib.contextmanager
def silenced(quiet: bool = True) -> Iterator[None]:
    """No progress bar inside the block when `quiet`."""
    token = _shown.set(_shown.get() and not quiet)
    try:
        yield
    finally:
        _shown.reset(token)
