"""Configuration: one small dataclass per component, gathered in `Config`.

Each section belongs to one component and is typed by it: `task` (the task family's config),
`model` (the chosen model kind's own dataclass: the recursive reasoner "recursive", the
recurrent-cell reasoner "cell", or the language models "hybrid_lm" and "recursive_lm"), `halt` (the chosen halting head's own
settings), `estimator` (the chosen gradient estimator's own dataclass), `optim` (the chosen
update rule's constants), `train`, `eval`, `health` and `halting_health`. The sections `model`,
`halt`, `estimator` and `optim` have several kinds:
`--halt.kind=act` switches the section to ACT's settings (keeping the values of the settings
both kinds share), and a key the chosen kind does not have is refused, never ignored.

A preset (ponder.presets) is a function returning a full `Config`. The command line changes any
field with `--section.key=value`, parsed by the field's type; every value is checked against
its declared range (ponder.core.settings) and each section's own rules. A resolved config is saved as
JSON with a `_type` key per section and reloads to an equal object; configs saved by earlier
versions of ponder are migrated on load (`_migrate`).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from ponder.core.errors import PonderError
from ponder.core.files import atomic_write_text
from ponder.core.settings import KindRegistry, field_types, parse
from ponder.health.config import HaltingHealthConfig, TrainingHealthConfig
from ponder.models.cell import CellConfig
from ponder.models.halting import HALT_SETTINGS, HALTING, HaltSettings
from ponder.models.halting.q_halt import QHaltSettings
from ponder.models.lm import LM_KINDS
from ponder.models.lm.hybrid import HybridConfig
from ponder.models.lm.recursive_lm import RecursiveLMConfig
from ponder.models.recursive import ModelConfig
from ponder.tasks import TASKS
from ponder.training.estimator_hook import ESTIMATOR_SETTINGS, TRMRule, validate_estimator
from ponder.training.evaluate import EvalConfig
from ponder.training.train_config import TrainConfig
from ponder.training.optim import OPTIMIZERS, AdamWSettings

SECTIONS = ("task", "model", "halt", "estimator", "optim", "train", "eval", "health", "halting_health")


class ModelKinds(KindRegistry):
    """The kinds of the `model` section. `ModelConfig` (the recursive reasoner) predates model
    kinds and has no `kind` attribute, so a class's kind may be given when it is registered."""

    def __init__(self) -> None:
        super().__init__("model")
        self._kind_of_class: dict[type, str] = {}

    def register(self, cls: type, kind: str | None = None, **defaults: Any) -> type:
        kind = kind or getattr(cls, self.key)
        if kind in self.classes:
            raise ValueError(f"model kind {kind!r} registered twice")
        self.classes[kind], self.defaults[kind] = cls, defaults
        self._kind_of_class[cls] = kind
        return cls

    def kind_of(self, obj: Any) -> str:
        kind = self._kind_of_class.get(type(obj))
        if kind is None:
            raise PonderError(f"model section of type {type(obj).__name__} is not a registered model kind")
        return kind


MODELS = ModelKinds()
MODELS.register(ModelConfig, "recursive")  # the recursive reasoner (TRM/HRM) of the puzzle tasks
MODELS.register(HybridConfig)  # "hybrid_lm": Gated DeltaNet + attention language model
MODELS.register(RecursiveLMConfig)  # "recursive_lm": shared stack in cycles, per-token halting
MODELS.register(CellConfig, "cell")  # a recurrent cell reading the whole input each step (PonderNet, ACT)
LM_TASKS = ("lm",)
KIND_SECTIONS: dict[str, KindRegistry] = {"model": MODELS, "halt": HALT_SETTINGS, "estimator": ESTIMATOR_SETTINGS,
                                          "optim": OPTIMIZERS}
# sections a config saved by an earlier version may lack: they load with their defaults
OPTIONAL_SECTIONS = ("estimator", "optim", "health", "halting_health")


@dataclass(kw_only=True)
class Config:
    """Everything one run needs. `task` is the config dataclass of the chosen task family."""

    preset: str = ""
    task: Any
    model: Any = field(default_factory=ModelConfig)
    halt: HaltSettings = field(default_factory=QHaltSettings)
    estimator: Any = field(default_factory=TRMRule)
    optim: Any = field(default_factory=AdamWSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    health: TrainingHealthConfig = field(default_factory=TrainingHealthConfig)
    halting_health: HaltingHealthConfig = field(default_factory=HaltingHealthConfig)

    def validate(self) -> None:
        """Every section's own checks, then the rules that span sections (PonderError, one line)."""
        TASKS.get(getattr(self.task, "name", None))
        self.task.validate()
        self.model.validate()
        self.halt.validate()
        validate_estimator(self.estimator)
        self.optim.validate()
        self.train.validate()
        self.eval.validate()
        self.health.validate()
        self.halting_health.validate()
        if getattr(self.task, "curriculum", False) and not self.train.log_every:
            raise PonderError("task.curriculum rises on the logged training figures, but train.log_every=0 logs none")
        if not isinstance(self.estimator, TRMRule) and HALTING.get(self.halt.kind).trains_on != "step":
            raise PonderError(f"estimator.kind={self.estimator.name} needs a halting head trained one step at a time "
                              f"(q_halt, q_continue); halt.kind={self.halt.kind} trains on whole trajectories")
        self._validate_model_kind()

    def _validate_model_kind(self) -> None:
        """The rules between the model's kind and the other sections (PonderError, one line)."""
        kind, task = self.kind("model"), getattr(self.task, "name", None)
        if kind not in LM_KINDS:
            if task in LM_TASKS:
                raise PonderError(f"task {task!r} needs a language model: --model.kind=hybrid_lm or recursive_lm "
                                  f"(model.kind={kind} is the puzzle reasoner)")
            return
        m = self.model
        if task not in LM_TASKS:
            raise PonderError(f"model.kind={kind} is a language model; task {task!r} is not text (use a task lm preset)")
        if m.vocab_size != self.task.vocab_size:
            raise PonderError(f"model.vocab_size={m.vocab_size} must equal task.vocab_size={self.task.vocab_size} "
                              f"(the model reads the task's tokens)")
        if m.max_len < self.task.seq_len:
            raise PonderError(f"model.max_len={m.max_len} is shorter than task.seq_len={self.task.seq_len}")
        refused = [(not isinstance(self.estimator, TRMRule), f"estimator.kind={self.estimator.name}",
                    "a language model trains on whole sequences with the model's own gradient"),
                   (self.train.loss != "softmax", f"train.loss={self.train.loss}", "language models use softmax cross-entropy"),
                   (self.train.target > 0, f"train.target={self.train.target:g}",
                    "a language model's headline figure is a perplexity, not a share to reach"),
                   (self.health.controller, "health.controller=true", "language models declare no controller knobs"),
                   (self.train.compile is True, "train.compile=true",
                    "it compiles the recursion of the recursive reasoner and of the recurrent cell only")]
        if kind == "hybrid_lm":
            default = QHaltSettings()  # the section's default (Config.halt)
            refused += [(self.halt != default, "a non-default halt section", "model.kind=hybrid_lm has no halting head"),
                        (self.halting_health != HaltingHealthConfig(), "a non-default halting_health section",
                         "model.kind=hybrid_lm has no halting head")]
        else:
            default = HALT_SETTINGS.make(self.halt.kind)
            refused += [(self.halt.pool != default.pool, f"halt.pool={self.halt.pool}",
                         "per-token halting reads one position, the token's own"),
                        (self.halt.min_steps != default.min_steps, f"halt.min_steps={self.halt.min_steps}",
                         "the recursive LM halts by the head's rule alone"),
                        (getattr(self.halt, "threshold", None) == "auto", "halt.threshold=auto",
                         "the threshold is calibrated per sample, and the recursive LM halts per token"),
                        (getattr(self.halt, "explore_prob", None) != getattr(default, "explore_prob", None),
                         f"halt.explore_prob={getattr(self.halt, 'explore_prob', None)}",
                         "the recursive LM trains on whole trajectories from fresh, with no exploration")]
        for bad, what, why in refused:
            if bad:
                raise PonderError(f"{what} does not apply to model.kind={kind}: {why}")

    def kind(self, section: str) -> str:
        return KIND_SECTIONS[section].kind_of(getattr(self, section))


def _copy(cfg: Config) -> Config:
    return dataclasses.replace(cfg, **{s: dataclasses.replace(getattr(cfg, s)) for s in SECTIONS})


def _split(raw: str) -> tuple[str, str, str]:
    text = raw[2:] if raw.startswith("--") else raw
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise PonderError(f"override {raw!r} is not of the form --section.key=value")
    dotted, value = text.split("=", 1)
    section, key = dotted.split(".", 1)
    if section not in SECTIONS:
        raise PonderError(f"unknown config section {section!r}; valid: {', '.join(SECTIONS)}")
    return section, key, value


def valid_keys(section: Any, name: str) -> list[str]:
    keys = [f.name for f in fields(section) if f.init]
    return (["kind"] + keys) if name in KIND_SECTIONS else keys


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """A validated copy of `cfg` with `--section.key=value` overrides applied: first the kinds
    (`--halt.kind=act`), then every other key, in order."""
    cfg = _copy(cfg)
    parsed = [_split(raw) for raw in overrides]
    for section, key, value in parsed:
        if key == "kind" and section in KIND_SECTIONS:
            setattr(cfg, section, KIND_SECTIONS[section].switch(getattr(cfg, section), value))
    for section, key, value in parsed:
        if key == "kind" and section in KIND_SECTIONS:
            continue
        target = getattr(cfg, section)
        valid = valid_keys(target, section)
        if key not in valid:
            where = f"section {section!r}" + (f" (kind {cfg.kind(section)})" if section in KIND_SECTIONS else "")
            raise PonderError(f"unknown key {key!r} in {where}; valid: {', '.join(valid)}")
        if section == "task" and key == "name":
            raise PonderError("task.name is fixed by the preset; choose another preset instead")
        setattr(target, key, parse(value, field_types(type(target))[key], f"--{section}.{key}"))
    cfg.validate()
    return cfg


def to_dict(cfg: Config) -> dict:
    out: dict[str, Any] = {"preset": cfg.preset}
    for name in SECTIONS:
        section = getattr(cfg, name)
        kind = {"kind": cfg.kind(name)} if name in KIND_SECTIONS else {}
        out[name] = {"_type": type(section).__name__, **kind, **dataclasses.asdict(section)}
    return out


def _section_classes() -> dict[str, type]:
    classes = {c.__name__: c for c in (TrainConfig, EvalConfig, TrainingHealthConfig, HaltingHealthConfig)}
    for registry in KIND_SECTIONS.values():
        classes.update({c.__name__: c for c in registry.classes.values()})
    for name in TASKS.names():
        cls = TASKS.get(name).config
        classes[cls.__name__] = cls
    return classes


def _migrate(data: dict) -> dict:
    """A config saved by an earlier version in today's layout: the one `HaltConfig` for every
    head becomes the chosen head's own settings (the settings it never used are dropped); the
    optimizer and estimator settings move from `train` to their own sections (AdamATan2 runs of
    that time used a = 1.27); a model section saved before model kinds is the recursive reasoner;
    a train section without `precision` or `compile` (older than their "auto") trained in fp32
    without compile."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    model = data.get("model")
    if isinstance(model, dict) and "kind" not in model and model.get("_type") == "ModelConfig":
        model["kind"] = "recursive"
    halt = data.get("halt")
    if isinstance(halt, dict) and halt.get("_type") == "HaltConfig":
        cls = HALT_SETTINGS.get(halt.get("kind", "q_halt"))
        keep = {f.name for f in fields(cls)}
        data["halt"] = {"_type": cls.__name__, **{k: v for k, v in halt.items() if k in keep}}
    train = data.get("train")
    if isinstance(train, dict):
        # runs saved before "auto" existed trained in fp32 without compile: they resume that way
        train.setdefault("precision", "fp32")
        train.setdefault("compile", False)
    if isinstance(train, dict) and "optimizer" in train and "optim" not in data:
        kind = train.pop("optimizer")
        optim = {k: train.pop(k) for k in ("beta1", "beta2", "weight_decay") if k in train}
        cls = OPTIMIZERS.get(kind)
        data["optim"] = {"_type": cls.__name__, **optim, **({"a": 1.27, "b": 1.0} if kind == "adam_atan2" else {})}
    if isinstance(train, dict) and "estimator" in train and "estimator" not in data:
        name = train.pop("estimator")
        old = {k: train.pop(f"estimator_{k}") for k in ("k", "tol", "max_iter", "solver") if f"estimator_{k}" in train}
        settings = {"truncated": ("k",), "phantom": ("k",)}.get(name, ())
        mapped = {k: old[k] for k in settings if k in old}
        if name == "implicit":
            mapped = {"solver": old.get("solver", "fixed_point"), "tol": old.get("tol", 1e-4),
                      "max_iter": old.get("max_iter", 50), "adjoint_tol": old.get("tol", 1e-4),
                      "adjoint_max_iter": old.get("max_iter", 50)}
        cls = ESTIMATOR_SETTINGS.get(name)
        data["estimator"] = {"_type": cls.__name__, **mapped}
    return data


def from_dict(data: dict) -> Config:
    """Inverse of `to_dict`; unknown types or keys and invalid values are a PonderError."""
    if not isinstance(data, dict) or any(not isinstance(data.get(s), dict) for s in SECTIONS
                                         if s not in OPTIONAL_SECTIONS):
        raise PonderError(f"config must have the sections {', '.join(s for s in SECTIONS if s not in OPTIONAL_SECTIONS)}")
    data = _migrate(data)
    classes = _section_classes()
    sections = {}
    for name in SECTIONS:
        if name not in data:
            continue  # an optional section: its dataclass defaults
        if not isinstance(data[name], dict):
            raise PonderError(f"config section {name!r} is not a mapping")
        raw = dict(data[name])
        type_name = raw.pop("_type", None)
        kind = raw.pop("kind", None) if name in KIND_SECTIONS else None
        if type_name not in classes:
            raise PonderError(f"config section {name!r} has unknown type {type_name!r}")
        cls = classes[type_name]
        if name == "model" and kind is not None and MODELS._kind_of_class.get(cls) != kind:
            raise PonderError(f"config section 'model' says kind {kind!r} but holds a {type_name}")
        valid = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(raw) - valid)
        if unknown:
            raise PonderError(f"config section {name!r} has unknown keys {unknown}; valid: {', '.join(sorted(valid))}")
        try:
            sections[name] = cls(**raw)
        except TypeError as e:
            raise PonderError(f"config section {name!r} is malformed ({e})") from None
    preset = data.get("preset", "")
    if not isinstance(preset, str):
        raise PonderError(f"config preset must be a string, got {preset!r}")
    cfg = Config(preset=preset, **sections)
    cfg.validate()
    return cfg


def save_config(cfg: Config, path: Path) -> None:
    atomic_write_text(Path(path), json.dumps(to_dict(cfg), indent=2) + "\n", what="the run's config")


def load_config(path: Path) -> Config:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PonderError(f"no config at {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        raise PonderError(f"config {path} is corrupt (not valid JSON)") from None
    except OSError as e:
        raise PonderError(f"cannot read config {path} ({e.strerror})") from None
    try:
        return from_dict(data)
    except PonderError as e:
        raise PonderError(f"config {path}: {e}") from None


def describe(cfg: Any) -> str:
    """One line `key=value, ...` of a config section (for logs)."""
    assert is_dataclass(cfg)
    return ", ".join(f"{f.name}={getattr(cfg, f.name)}" for f in fields(cfg))
