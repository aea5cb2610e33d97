"""One registry type for every extension point: strategies, spaces, merge methods, evaluators,
bundled plug-ins.

An entry is either the object itself or a lazy ``"package.module:attr"`` string, imported the
first time the entry is looked up, so listing what is available costs no import (``import
evomerge`` does not import every strategy). Users add entries from their own modules, or name
those modules in a config's ``extensions:`` list (imported on the driver and on every worker).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from evomerge.core.errors import ConfigError

T = TypeVar("T")


def import_attr(target: str):
    """The object ``"package.module:attr"`` names (``attr`` may be dotted)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"'{target}' is not 'package.module:attr'")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Names -> objects of one kind, with lazy ``"module:attr"`` entries.

    ``kind`` names the registry in messages (``"strategy"``), ``field`` the config key whose
    value is looked up (``"strategy.name"``), so an unknown name is one line with a hint.
    """

    def __init__(self, kind: str, field: str):
        self.kind = kind
        self.field = field
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, entry: T | str, *, replace: bool = True) -> None:
        """Add ``entry`` under ``name`` (an object, or ``"module:attr"`` imported when used).

        A second registration of a name replaces the first unless ``replace`` is False, in
        which case it is an error (two extensions must not silently fight over a name).
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names are non-empty strings, got {name!r}")
        if not replace and name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered already")
        self._entries[name] = entry

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator("name")`` registers the decorated object."""

        def add(obj: T) -> T:
            self.register(name, obj)
            return obj

        return add

    def get(self, name: str) -> T:
        """The entry ``name`` (imported now if lazy); an unknown name is a one-line error."""
        if name not in self._entries:
            raise ConfigError(f"{self.field}: {self.unknown(name)}")
        entry = self._entries[name]
        if isinstance(entry, str):
            entry = import_attr(entry)
            self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a test's temporary entry, a plug-in withdrawing one)."""
        if name not in self._entries:
            raise KeyError(name)
        del self._entries[name]

    def closest(self, name: str) -> str | None:
        """The registered name most like ``name`` (a typo's fix), or None."""
        close = difflib.get_close_matches(str(name), list(self._entries), n=1)
        return close[0] if close else None

    def unknown(self, name: str) -> str:
        """``unknown <kind> 'x'; did you mean 'y'?`` for a name not registered."""
        close = self.closest(name)
        hint = f"did you mean '{close}'?" if close else f"known: {', '.join(self._entries)}"
        return f"unknown {self.kind} '{name}'; {hint}"

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise KeyError(name)
        return self.get(name)

    def __delitem__(self, name: str) -> None:
        self.unregister(name)

    def items(self) -> Iterator[tuple[str, T]]:
        """Every entry, each imported (for listings that need the objects)."""
        for name in list(self._entries):
            yield name, self.get(name)
