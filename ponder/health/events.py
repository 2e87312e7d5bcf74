"""Typed records of the health wing: what a monitor saw in one step (`StepEvent`), what the
controller did about it (`Action`, with its causes as an enum), as they travel monitor ->
controller -> metrics log -> health report.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Optional


class Cause(str, Enum):
    """Why the controller acted (an action may have several)."""

    NONFINITE = "nonfinite"
    EXPLOSION = "explosion"
    SPIKE = "spike"
    ATTENTION_COLLAPSE = "attention_collapse"
    ADAPTER_NORM = "adapter_norm"
    ACCURACY_DROP = "accuracy_drop"
    AUX_SHARE = "aux_share"
    CLEAN_WINDOW = "clean_window"
    REPEATED_FAILURE = "repeated_failure"


class ActionKind(str, Enum):
    """What the controller did."""

    LR_BACKOFF = "lr_backoff"
    LR_RESTORE = "lr_restore"
    PAUSE = "pause"
    RESUME = "resume"
    RECOVER = "recover"
    AUX_CAP = "aux_cap"
    ROLLBACK = "rollback"
    ABORT = "abort"


@dataclass
class StepEvent:
    """What the training-health monitor saw in one optimizer step (the controller's input).

    Attributes:
        step: the optimizer step (1-based, after it was taken or refused).
        nonfinite: the step was refused for a non-finite loss or gradient.
        streak: consecutive refused steps up to this one.
        explosion: the pre-clip gradient norm when above the explosion limit, else None.
        spike: (loss, running mean) when the loss spiked, else None.
        collapsed: attention layers whose mean max-attention fell below the floor.
        norm_level: the adapter delta norm's governor level: "ok", "warn", "critical" or "kill".
        norm_max: the largest per-sample adapter delta norm (before the clamp), or None.
        acc_drop: (accuracy EMA, its best) when the EMA fell beyond the limit, else None.
        aux_share: the auxiliary terms' share of the loss, or None.
    """

    step: int
    nonfinite: bool = False
    streak: int = 0
    explosion: Optional[float] = None
    spike: Optional[tuple[float, float]] = None
    collapsed: list[str] = field(default_factory=list)
    norm_level: str = "ok"
    norm_max: Optional[float] = None
    acc_drop: Optional[tuple[float, float]] = None
    aux_share: Optional[float] = None

    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> "StepEvent":
        d = dict(d)
        if "collapse" in d:  # saved before events were typed
            d["collapsed"] = d.pop("collapse")
        if "norm" in d:
            d["norm_level"], d["norm_max"] = d.pop("norm")
        d["nonfinite"] = bool(d.get("nonfinite", False))
        for k in ("spike", "acc_drop"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


@dataclass
class Action:
    """One controller decision: what it did, why (causes and a sentence with the figures), and
    the new settings. Written to the metrics log as a record of kind "action"."""

    step: int
    kind: ActionKind
    causes: tuple[Cause, ...]
    reason: str
    detail: dict = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return {"step": self.step, "kind": "action", "action": self.kind.value,
                "causes": [c.value for c in self.causes], "reason": self.reason, "detail": self.detail}

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> "Action":
        return cls(int(r["step"]), ActionKind(r["action"]), tuple(Cause(c) for c in r.get("causes", [])),
                   str(r.get("reason", "")), dict(r.get("detail") or {}))
