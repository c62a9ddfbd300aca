"""One registry per component kind: name -> entry (parameter class, builder, tiny test preset).

The registries themselves are built in :mod:`pipeline.schema` (data sources,
features, models, losses, schedules, blend methods), next to the parameter
classes, and they are the only ones: config validates a queue against them
and the stages build components from them.

Design choice: an entry names its builder by import path
(``"pipeline.models.sed:build_sed"``), and the builder's module is imported
on first use (:meth:`Entry.load`). So this module and :mod:`pipeline.schema`
stay plain Python - validating a queue never imports TensorFlow - and the
modules that implement components never import the registry, so there is no
import cycle between a registry and its families. A test loads every entry's
builder, so a mistyped path fails the suite, not a run.

``preset`` holds the parameters of a tiny instance for tests (overrides of the
parameter class's defaults): the registry-wide tests build every entry from it,
so registering a component enrols it in them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

from pipeline.errors import QueueError


class UnknownNameError(QueueError):
    """A component name that is not registered; the message lists the choices."""


@dataclass(frozen=True)
class Entry:
    """One registered component.

    name : the name a queue file uses (``model: {name: sed}``).
    params : the frozen dataclass of its parameters (see :mod:`pipeline.schema`).
    builder : ``"package.module:attribute"``, the callable (or object) that implements it.
    preset : parameters of a tiny instance for tests (keyword overrides of ``params``' defaults).
    """

    name: str
    params: type
    builder: str
    preset: Dict[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        """The builder, importing its module on first use."""
        module, _, attribute = self.builder.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def tiny(self, **overrides):
        """A parameter instance from the tiny test preset, with ``overrides`` on top."""
        return self.params(**{**self.preset, **overrides})


# How a model family is trained: epoch by epoch (Keras) or in one fit on pooled features (scikit-learn).
MODEL_KINDS = ("keras", "sklearn")


@dataclass(frozen=True)
class ModelEntry(Entry):
    """A model family: also the features it takes, tiny test inputs, a pre-training check and a label.

    features : the feature names whose arrays the family accepts as input.
    preset_inputs : per-example input shapes for the registry-wide tests (one per input rank it takes).
    check : ``"module:function"`` run before training (``check(params)`` raises for settings that cannot
        work here, e.g. a missing weights file); None: nothing to check.
    label : ``label(params)`` -> the name the summary shows (a variant's name); None: the family's name.
    kind : how the fold job trains it (one of :data:`MODEL_KINDS`). ``keras``: the builder returns a
        keras.Model (``builder(params, *, input_shape, n_outputs, activation, output_bias)``) trained epoch
        by epoch (:mod:`pipeline.train`). ``sklearn``: the builder returns an unfitted
        :class:`pipeline.models.classical.ClassicalModel` (``builder(params, *, input_shape, n_outputs, task,
        seed, balanced, threads)``) fitted once on the fold's pooled training examples
        (:mod:`pipeline.train_classical`).
    """

    features: Tuple[str, ...] = ("mel", "complexity", "waveform")
    preset_inputs: Tuple[Tuple[int, ...], ...] = ()
    check: Optional[str] = None
    label: Optional[Callable[[Any], str]] = None
    kind: str = "keras"

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model {self.name!r}: kind must be one of {MODEL_KINDS}; got {self.kind!r}")

    def describe(self, params) -> str:
        """The summary's name for this family with ``params`` (e.g. ``inceptiontime_residual``)."""
        return self.label(params) if self.label is not None else self.name

    def load_check(self) -> Optional[Callable]:
        """The pre-training check, importing its module on first use; None when the family has none."""
        if self.check is None:
            return None
        module, _, attribute = self.check.partition(":")
        return getattr(importlib.import_module(module), attribute)


class Registry:
    """The entries of one component kind, by name.

    ``registry["xcepton"]`` raises :class:`UnknownNameError` with
    ``'xcepton' is not a model; choose one of: ...`` - never a silent fallback.
    Iterating gives the names, sorted.
    """

    def __init__(self, kind: str, entries: Iterable[Entry]):
        self.kind = kind
        self._entries: Dict[str, Entry] = {}
        for entry in entries:
            if entry.name in self._entries:
                raise ValueError(f"{kind} {entry.name!r} is registered twice")
            self._entries[entry.name] = entry

    def __getitem__(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name from a queue file
            raise UnknownNameError(f"{name!r} is not a {self.kind}; choose one of: {', '.join(self)}") from None

    def __contains__(self, name) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list:
        return sorted(self._entries)

    def entries(self) -> list:
        """Every entry, sorted by name."""
        return [self._entries[name] for name in self]
