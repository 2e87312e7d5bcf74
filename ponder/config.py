"""Configuration: one small dataclass per component, gathered in `Config`.

A preset (ponder.presets) is a function returning a full `Config`. The command line changes
any field with `--section.key=value`, typed by the field's current value; an unknown section or
key is an error naming the valid ones. A resolved config is saved as JSON with a `_type` key per
section and reloads to an equal object.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from ponder.errors import PonderError
from ponder.evaluate import EvalConfig
from ponder.health.config import TrainingHealthConfig
from ponder.models.halting import HaltConfig
from ponder.models.recursive import ModelConfig
from ponder.train import TrainConfig

SECTIONS = ("task", "model", "halt", "train", "eval", "health")
OPTIONAL_SECTIONS = ("health",)  # configs saved before a section existed load with its defaults


@dataclass(kw_only=True)
class Config:
    """Everything one run needs. `task` is the config dataclass of the chosen task family."""

    preset: str = ""
    task: Any
    model: ModelConfig = field(default_factory=ModelConfig)
    halt: HaltConfig = field(default_factory=HaltConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    health: TrainingHealthConfig = field(default_factory=TrainingHealthConfig)


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _parse_value(text: str, current: Any, where: str) -> Any:
    """Parse `text` to the type of `current` (bool, int, float or str)."""
    try:
        if isinstance(current, bool):
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str):
            return text
    except ValueError:
        raise PonderError(f"{where} expects {type(current).__name__}, got {text!r}") from None
    raise PonderError(f"{where} cannot be set from the command line")


def _section(cfg: Config, name: str) -> Any:
    if name not in SECTIONS:
        raise PonderError(f"unknown config section {name!r}; valid: {', '.join(SECTIONS)}")
    return getattr(cfg, name)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Return a copy of `cfg` with `--section.key=value` overrides applied (in order)."""
    cfg = dataclasses.replace(cfg, **{s: dataclasses.replace(getattr(cfg, s)) for s in SECTIONS})
    for raw in overrides:
        text = raw[2:] if raw.startswith("--") else raw
        if "=" not in text or "." not in text.split("=", 1)[0]:
            raise PonderError(f"override {raw!r} is not of the form --section.key=value")
        dotted, value = text.split("=", 1)
        section_name, key = dotted.split(".", 1)
        section = _section(cfg, section_name)
        valid = [f.name for f in fields(section)]
        if key not in valid:
            raise PonderError(f"unknown key {key!r} in section {section_name!r}; valid: {', '.join(valid)}")
        if section_name == "task" and key == "name":
            raise PonderError("task.name is fixed by the preset; choose another preset instead")
        setattr(section, key, _parse_value(value, getattr(section, key), f"--{dotted}"))
    return cfg


def to_dict(cfg: Config) -> dict:
    out: dict[str, Any] = {"preset": cfg.preset}
    for name in SECTIONS:
        section = getattr(cfg, name)
        out[name] = {"_type": type(section).__name__, **dataclasses.asdict(section)}
    return out


def _section_classes() -> dict[str, type]:
    from ponder.data import TASKS

    classes = {c.__name__: c for c in (ModelConfig, HaltConfig, TrainConfig, EvalConfig, TrainingHealthConfig)}
    for name in TASKS.names():
        cls = TASKS.get(name)[0]
        classes[cls.__name__] = cls
    return classes


def from_dict(data: dict) -> Config:
    """Inverse of `to_dict`; unknown types or keys are a PonderError."""
    classes = _section_classes()
    if not isinstance(data, dict) or any(s not in data for s in SECTIONS if s not in OPTIONAL_SECTIONS):
        raise PonderError(f"config must have the sections {', '.join(SECTIONS)}")
    sections = {}
    for name in SECTIONS:
        if name not in data:
            continue  # an optional section: its dataclass defaults
        raw = dict(data[name])
        type_name = raw.pop("_type", None)
        if type_name not in classes:
            raise PonderError(f"config section {name!r} has unknown type {type_name!r}")
        cls = classes[type_name]
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - valid)
        if unknown:
            raise PonderError(f"config section {name!r} has unknown keys {unknown}; valid: {', '.join(sorted(valid))}")
        sections[name] = cls(**raw)
    return Config(preset=data.get("preset", ""), **sections)


def save_config(cfg: Config, path: Path) -> None:
    from ponder.checkpoint import atomic_write_text

    atomic_write_text(Path(path), json.dumps(to_dict(cfg), indent=2) + "\n")


def load_config(path: Path) -> Config:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PonderError(f"no config at {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PonderError(f"config {path} is corrupt (not valid JSON)") from None
    return from_dict(data)


def describe(cfg: Any) -> str:
    """One line `key=value, ...` of a config section (for logs)."""
    assert is_dataclass(cfg)
    return ", ".join(f"{f.name}={getattr(cfg, f.name)}" for f in fields(cfg))
