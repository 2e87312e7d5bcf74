"""Content-addressed on-disk cache for generated data sets.

The key is a SHA-256 of the generator's name, version and config, so a change to either makes
a new file. Files are written atomically (temp file + rename), so an interrupted generation
never leaves a truncated cache entry behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np


def cache_dir() -> Path:
    """`$PONDER_CACHE_DIR` if set, else `~/.cache/ponder`."""
    return Path(os.environ.get("PONDER_CACHE_DIR", Path.home() / ".cache" / "ponder"))


def content_key(kind: str, version: int, params: dict) -> str:
    blob = json.dumps({"kind": kind, "version": version, "params": params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_arrays(kind: str, version: int, params: dict, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Return the arrays `make()` builds for these params, from the cache when present."""
    path = cache_dir() / f"{kind}-{content_key(kind, version, params)}.npz"
    if path.exists():
        try:
            with np.load(path) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError):
            path.unlink(missing_ok=True)  # corrupt entry: rebuild it
    arrays = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return arrays
