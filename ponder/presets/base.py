"""The preset registry: a preset is a named function returning a full `Config`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ponder.core.registry import Registry
from ponder.runs.config import Config

DEFAULT_PRESET = "demo"


@dataclass(frozen=True)
class Preset:
    make: Callable[[], Config]
    summary: str  # task and model size
    expected_time: str  # on this project's reference machine: 2 CPU cores


PRESETS: Registry[Preset] = Registry("preset")


def preset(name: str, summary: str, expected_time: str):
    def decorate(fn: Callable[[], Config]) -> Callable[[], Config]:
        def make() -> Config:
            cfg = fn()
            cfg.preset = name
            return cfg

        PRESETS.add(name, Preset(make, summary, expected_time))
        return fn

    return decorate


def get_config(name: str) -> Config:
    return PRESETS.get(name).make()
