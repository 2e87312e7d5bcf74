"""Plain-dict registries with a `register` decorator and a lookup that names the valid choices."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from ponder.core.errors import PonderError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one family (presets, tasks, halting heads, ...)."""

    def __init__(self, family: str):
        self.family = family
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.family} {name!r} registered twice")
            self._entries[name] = obj
            return obj

        return decorate

    def add(self, name: str, obj: T) -> None:
        self.register(name)(obj)

    def get(self, name: str) -> T:
        if not isinstance(name, str) or name not in self._entries:
            raise PonderError(f"unknown {self.family} {name!r}; valid: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
