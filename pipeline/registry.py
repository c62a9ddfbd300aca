"""One tiny registry type used by every component kind (models, losses, sources, ...)."""

from __future__ import annotations

from typing import Callable, Dict, Iterable


class UnknownNameError(KeyError):
    """A component name that is not registered; the message lists the choices."""

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0])


class Registry:
    """Name -> callable, filled by the ``register`` decorator.

    ``Registry("model").get("xcepton")`` raises :class:`UnknownNameError` with
    ``'xcepton' is not a model; choose one of: ...`` - never a silent fallback.
    """

    def __init__(self, kind: str, allowed: Iterable[str] | None = None):
        self.kind = kind
        self._allowed = set(allowed) if allowed is not None else None
        self._items: Dict[str, Callable] = {}

    def register(self, name: str):
        if self._allowed is not None and name not in self._allowed:
            raise ValueError(
                f"{self.kind} {name!r} has no parameter schema in pipeline.schema; add it there first"
            )

        def decorator(fn):
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = fn
            return fn

        return decorator

    def get(self, name: str) -> Callable:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"{name!r} is not a {self.kind}; choose one of: {', '.join(sorted(self._items))}"
            ) from None

    def names(self):
        return sorted(self._items)

    def __contains__(self, name):
        return name in self._items
