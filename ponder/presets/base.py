"""The preset registry: a preset is a named function returning a full `Config`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ponder.core.registry import Registry
from ponder.runs.config import Config
from ponder.training.train_config import TrainConfig

DEFAULT_PRESET = "demo"


def fp32_train(**settings) -> TrainConfig:
    """The `train` section of a preset whose published figures (README.md, BENCHMARKS.md, the
    golden tests) were measured in float32 without compile: it keeps that arithmetic on every
    machine instead of `train.precision=auto` (which picks bf16 where a CPU has native bf16 and a
    probe of the model measures it faster: BENCHMARKS.md, precision and compile) and
    `train.compile=auto`.
    The GPU recipes (trm-*) keep both on auto."""
    return TrainConfig(precision="fp32", compile=False, **settings)


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
