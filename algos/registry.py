"""Name -> function registries for the algorithm parts, with helpful errors for unknown names."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable)


def closest_names(name: str, options: Iterable[str], n: int = 3) -> list[str]:
    """The up to `n` entries of `options` that look most like `name` (difflib ratio, closest first)."""
    return difflib.get_close_matches(name, sorted(options), n=n, cutoff=0.4)


def unknown_name_message(kind: str, name: str, options: Iterable[str]) -> str:
    """An error message for an unknown `name` of `kind` that suggests the closest known names."""
    options = sorted(options)
    close = closest_names(name, options)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Known: {', '.join(options)}."


class Registry(dict, Generic[F]):
    """A dict from name to function, filled with the `register(name)` decorator.

    `lookup(name)` returns the function or raises ValueError naming the closest known names.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator that adds the function under `name`; re-registering a name replaces it."""

        def decorator(fn: F) -> F:
            self[name] = fn
            return fn

        return decorator

    def lookup(self, name: str) -> F:
        """The function registered as `name`; ValueError with suggestions when there is none."""
        if name not in self:
            raise ValueError(unknown_name_message(self.kind, name, self.keys()))
        return self[name]
