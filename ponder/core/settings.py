"""Typed, range-checked settings: how every config dataclass declares and checks its fields.

A config field is declared with `setting(default, ...)`, which records its allowed range or
choices next to it. `check(obj, where)` then refuses, in one line, a value of the wrong type
(typed by the field's annotation: bool, int, float, str, `X | None`, or `X | Literal[words]` for a
value that is either an X or one of a few words, e.g. a threshold `float | Literal["auto"]`), a
non-finite float or a value outside the declared range (a word is not range-checked), so every
section is validated the same way. Cross-field rules stay in each section's own `validate()`.

A section may also say which of its fields do nothing under its current values
(`inactive() -> {field: why}`, e.g. adapter settings with the adapter off): `check` refuses such a
field when it differs from its default, so no setting is ever silently ignored.

Sections with several kinds (halting heads, gradient estimators, optimizers) are a registry of
dataclasses, one per kind, each with a `kind` class attribute; see `KindRegistry`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import MISSING, Field, dataclass, fields
from typing import Any, Callable, Literal, Union

from ponder.core.errors import PonderError


@dataclass(frozen=True)
class Bounds:
    """Allowed values of one setting: numeric bounds (open or closed) or a set of choices."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None

    def refusal(self, value: Any) -> str | None:
        """Why `value` is out of bounds (None when it is fine)."""
        if self.choices is not None:
            if value not in self.choices:
                return f"must be one of {', '.join(map(str, self.choices))}, got {value!r}"
            return None
        if value is None:
            return None
        for bound, ok, word in ((self.ge, lambda v, b: v >= b, ">="), (self.gt, lambda v, b: v > b, ">"),
                                (self.le, lambda v, b: v <= b, "<="), (self.lt, lambda v, b: v < b, "<")):
            if bound is not None and not ok(value, bound):
                return f"must be {self.describe()}, got {value!r}"
        return None

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        parts = [f"{w} {b:g}" for b, w in ((self.ge, ">="), (self.gt, ">"), (self.le, "<="), (self.lt, "<"))
                 if b is not None]
        return " and ".join(parts) if parts else "any value"


def setting(default: Any = MISSING, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None, choices: tuple | None = None,
            default_factory: Callable[[], Any] | Any = MISSING) -> Any:
    """A dataclass field with its allowed range (numbers) or choices (any type)."""
    meta = {"bounds": Bounds(ge=ge, gt=gt, le=le, lt=lt, choices=tuple(choices) if choices else None)}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def bounds_of(f: Field) -> Bounds:
    return f.metadata.get("bounds", Bounds())


@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass's init fields."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if f.init}


def _shape(tp: Any) -> tuple[Any, bool, tuple[str, ...]]:
    """(inner type, allows None, words) of `X`, `X | None` and `X | Literal[words]` (with or
    without None); an unsupported union is returned whole (then `coerce` raises TypeError)."""
    if typing.get_origin(tp) not in (Union, types.UnionType):
        return tp, False, ()
    args = typing.get_args(tp)
    words = tuple(w for a in args if typing.get_origin(a) is Literal for w in typing.get_args(a))
    rest = [a for a in args if a is not type(None) and typing.get_origin(a) is not Literal]
    if len(rest) != 1 or not all(isinstance(w, str) for w in words):
        return tp, False, ()
    return rest[0], type(None) in args, words


def words_of(tp: Any) -> tuple[str, ...]:
    """The words a field of type `X | Literal[words]` accepts besides an X (() for other types)."""
    return _shape(tp)[2]


def type_name(tp: Any) -> str:
    inner, opt, words = _shape(tp)
    name = getattr(inner, "__name__", str(inner))
    return " or ".join([name, *(repr(w) for w in words), *(["none"] if opt else [])])


def coerce(value: Any, tp: Any, where: str) -> Any:
    """`value` as type `tp` (an int is accepted for a float; one of its words for `X | Literal[words]`),
    or a one-line PonderError."""
    inner, opt, words = _shape(tp)
    if value is None and opt:
        return None
    if isinstance(value, str) and value in words:
        return value
    if inner is bool:
        if isinstance(value, bool):
            return value
    elif inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif inner is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif inner is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"{where}: unsupported setting type {tp!r}")
    raise PonderError(f"{where} expects {type_name(tp)}, got {value!r} ({type(value).__name__})")


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse(text: str, tp: Any, where: str) -> Any:
    """A command-line string as type `tp` ("none" for an optional setting, a word of `X | Literal[words]`),
    or a PonderError."""
    inner, opt, words = _shape(tp)
    if opt and text.lower() in ("none", "null"):
        return None
    if text in words:
        return text
    try:
        if inner is bool:
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if inner is int:
            return int(text)
        if inner is float:
            return float(text)
        if inner is str:
            return text
    except ValueError:
        raise PonderError(f"{where} expects {type_name(tp)}, got {text!r}") from None
    raise PonderError(f"{where} cannot be set from the command line")


def check(obj: Any, where: str) -> None:
    """Refuse (PonderError, one line) a field of the wrong type, non-finite, out of its bounds,
    or set to a non-default value while the section says it does nothing (`inactive()`)."""
    cls = type(obj)
    for f, tp in zip((f for f in fields(obj) if f.init), field_types(cls).values()):
        name = f"{where}.{f.name}"
        value = coerce(getattr(obj, f.name), tp, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise PonderError(f"{name} must be a finite number, got {value}")
        words = words_of(tp)
        why = None if isinstance(value, str) and value in words else bounds_of(f).refusal(value)
        if why:
            raise PonderError(f"{name} {why}" + "".join(f" (or {w!r})" for w in words))
        setattr(obj, f.name, value)
    inactive = getattr(obj, "inactive", None)
    if inactive is not None:
        for field_name, why in sorted(inactive().items()):
            f = next(x for x in fields(obj) if x.name == field_name)
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            if getattr(obj, field_name) != default:
                raise PonderError(f"{where}.{field_name}={getattr(obj, field_name)!r} would do nothing: {why}")


def bad_values(cls: type, name: str) -> list[tuple[str, Any]]:
    """Values `check` must refuse for field `name` of `cls`, labelled: a value of another type,
    one outside the declared bounds, a non-finite one (for the config fuzz tests)."""
    f = next(x for x in fields(cls) if x.name == name)
    tp = field_types(cls)[name]
    inner, _, words = _shape(tp)
    b = bounds_of(f)
    out: list[tuple[str, Any]] = [("wrong type", [1] if inner is str else "abc")]
    out += [("wrong word", w + "x") for w in words[:1]]
    if inner is int:
        out.append(("wrong type", 1.5))
    if inner in (int, float):
        if b.ge is not None:
            out.append(("out of range", b.ge - 1 if inner is int else b.ge - abs(b.ge) * 0.5 - 0.5))
        if b.gt is not None:
            out.append(("out of range", b.gt if inner is float else int(math.floor(b.gt))))
        if b.le is not None:
            out.append(("out of range", b.le + 1 if inner is int else b.le + abs(b.le) * 0.5 + 0.5))
        if b.lt is not None:
            out.append(("out of range", b.lt if inner is float else int(math.ceil(b.lt))))
    if b.choices is not None:
        out.append(("out of range", "no-such-choice" if inner is str else -12345))
    if inner is float:
        out += [("non-finite", math.nan), ("non-finite", math.inf)]
    return out


class KindRegistry:
    """The dataclasses of one config section that has several kinds (halting head, estimator,
    optimizer): kind name -> class. Each class carries `kind` as a class attribute; switching
    the kind keeps the values of the settings both kinds have."""

    def __init__(self, section: str, key: str = "kind"):
        self.section, self.key = section, key
        self.classes: dict[str, type] = {}
        self.defaults: dict[str, dict[str, Any]] = {}

    def register(self, cls: type, **defaults: Any) -> type:
        """Add `cls` under its class attribute `key`; `defaults` override the class's own
        defaults when the section is switched to this kind (e.g. training-sized solver caps)."""
        kind = getattr(cls, self.key)
        if kind in self.classes:
            raise ValueError(f"{self.section} kind {kind!r} registered twice")
        self.classes[kind] = cls
        self.defaults[kind] = defaults
        return cls

    def kind_of(self, obj: Any) -> str:
        return getattr(obj, self.key)

    def make(self, kind: str, **settings: Any) -> Any:
        """A config of `kind` from the kind's defaults and `settings`; an unknown setting is a
        PonderError naming the kind's settings."""
        cls = self.get(kind)
        valid = [f.name for f in fields(cls) if f.init]
        unknown = sorted(set(settings) - set(valid))
        if unknown:
            raise PonderError(f"{self.section}.kind={kind} has no setting {', '.join(unknown)}; "
                              f"its settings: {', '.join(valid) or 'none'}")
        return cls(**{**self.defaults[kind], **settings})

    def names(self) -> list[str]:
        return sorted(self.classes)

    def get(self, kind: str) -> type:
        if not isinstance(kind, str) or kind not in self.classes:
            raise PonderError(f"unknown {self.section}.kind {kind!r}; valid: {', '.join(self.names())}")
        return self.classes[kind]

    def switch(self, current: Any, kind: str) -> Any:
        """A config of `kind` that keeps `current`'s values of the settings both kinds have."""
        cls = self.get(kind)
        shared = {f.name: getattr(current, f.name) for f in fields(cls)
                  if f.init and any(g.name == f.name for g in fields(current))}
        return self.make(kind, **shared)
