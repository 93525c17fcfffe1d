"""A tiny name -> entry registry (the pattern of timm's `register_model` / `list_models`).

Data sources, encoders, metrics and selection policies each keep one registry; modules register
their entries with a decorator at import time, and the CLI and stages look them up by the name a
config gives. An unknown name is a user error that lists the valid names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

from datacull.errors import DatacullError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object with its name, a one-line summary and free-form info."""

    name: str
    obj: T
    summary: str = ""
    info: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Registered objects of one kind (e.g. "metric"), looked up by name."""

    def __init__(self, kind: str, config_key: str):
        self.kind = kind
        self.config_key = config_key
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, summary: str = "", **info: Any) -> Callable[[T], T]:
        """Decorator registering `obj` under `name`; re-registering a name is a programming error."""

        def decorate(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = Entry(name, obj, summary, dict(info))
            return obj

        return decorate

    def get(self, name: str) -> Entry[T]:
        """The entry for `name`, or a DatacullError naming the valid choices."""
        try:
            return self._entries[name]
        except KeyError:
            raise DatacullError(
                f"unknown {self.kind} {name!r}; valid {self.config_key} values: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._entries)

    def entries(self) -> list[Entry[T]]:
        """Registered entries in registration order."""
        return list(self._entries.values())

    def __contains__(self, name: str) -> bool:
        return name in self._entries
