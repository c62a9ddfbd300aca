"""Read a queue file once, validate all of it, and return frozen experiment objects.

A queue file has four top-level keys::

    defaults:     # merged into every experiment (same keys as an experiment, minus name)
    experiments:  # a list; each needs a unique, path-safe `name`
    blend:        # how the finished experiments are ensembled
    output:       # output folder, default `output` (relative to the queue file)

Every component (``data``, ``features``, ``model``, ``loss``, ``schedule``) is either a short
string (``model: inceptiontime``) or a mapping ``{name: ..., <params>}``. An
experiment's component is merged over the default one when both have the same
name (or the experiment's omits the name); a different name replaces it.

The YAML is read by :mod:`pipeline.queue_yaml`: at most 1 MB, no key written twice
in one mapping, anchors / aliases / ``<<`` merge keys allowed up to 20,000 nodes
once expanded and 32 levels of nesting. Rules across sections (``fmin < fmax``,
``n_fft`` within the clip, rfcx losses, ...) are in :mod:`pipeline.config_checks`.

Relative paths are resolved against the queue file's folder, never the working
directory. All problems are collected and raised together as one
:class:`ConfigError` whose lines each start with the key path, e.g.
``experiments[1].model.name: 'xcepton' is not a model; choose one of: ...``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import reprlib
import typing
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import yaml

from pipeline import config_checks, layout, queue_yaml, schema
from pipeline.hashing import stable_hash
from pipeline.errors import QueueError

# Experiment names become folders under output/ and column names in output/oof.csv. Matched with
# fullmatch: with `$`, re.match accepts a trailing newline ("cache\n").
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
RESERVED_NAMES = layout.RESERVED_NAMES
TOP_LEVEL_KEYS = ("defaults", "experiments", "blend", "output", "execution")
KIND_NAMES = {"data": "data source", "features": "feature", "model": "model", "loss": "loss", "schedule": "schedule",
              "method": "blend method"}
BLEND_METRICS = ("auc", "log_loss", "lwlrap")


class ConfigError(QueueError):
    """One or more problems in a queue file; ``problems`` holds one line each."""

    def __init__(self, source: str, problems: List[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  {p}" for p in problems))


@dataclass(frozen=True)
class Component:
    """A named component and its validated parameters (a frozen schema dataclass)."""

    name: str
    params: Any

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, **_plain(dataclasses.asdict(self.params))}


@dataclass(frozen=True)
class Experiment:
    """One fully resolved experiment: every default filled in, every path absolute."""

    name: str
    data: Component
    features: Component
    model: Component
    loss: Component
    audio: schema.AudioSettings
    cache: schema.CacheSettings
    folds: schema.FoldSettings
    train: schema.TrainSettings
    schedule: Component = Component("constant", schema.ConstantScheduleParams())
    augment: schema.AugmentSettings = schema.AugmentSettings()
    crops: schema.CropSettings = schema.CropSettings()
    predict: schema.PredictSettings = schema.PredictSettings()
    # Pseudo-labels (issue 17): None = off. ``teacher`` is the teacher's resolved Experiment (set by
    # parse_queue), kept out of comparisons and of config.yaml; its config hash is part of this one's.
    pseudo: Optional[schema.PseudoSettings] = None
    teacher: Optional["Experiment"] = dataclasses.field(default=None, compare=False, repr=False)

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name}
        for section in schema.COMPONENT_SECTIONS:
            out[section] = getattr(self, section).to_dict()
        for section in schema.PLAIN_SECTIONS:
            out[section] = _plain(dataclasses.asdict(getattr(self, section)))
        # Keys added after experiments were run (issue 17) appear only when set: the config and hash of an
        # experiment that does not use them stay as they were, so a finished one is not run again.
        for section, key, off in (("train", "ema", None), ("train", "swa", None), ("predict", "tta", []),
                                  ("data", "confusers", 0)):
            if out[section].get(key, off) == off:
                out[section].pop(key, None)
        if self.pseudo is not None:  # absent when off: configs and hashes of other experiments stay as they were
            out[PSEUDO_SECTION] = _plain(dataclasses.asdict(self.pseudo))
        return out

    def config_hash(self) -> str:
        """Identity of the run: a finished experiment with the same hash is skipped.

        A student's hash covers its teacher's (and so every earlier round's): a changed teacher retrains it.
        """
        if self.teacher is None:
            return stable_hash(self.to_dict())
        return stable_hash({**self.to_dict(), "teacher_config_hash": self.teacher.config_hash()})

    @property
    def requires(self) -> Tuple[str, ...]:
        """Names of the experiments that must finish before this one starts: its pseudo-label teacher."""
        return () if self.pseudo is None else (self.pseudo.teacher,)


@dataclass(frozen=True)
class BlendSettings:
    method: Component
    include: Optional[Tuple[str, ...]]  # None: every finished experiment
    metric: str

    def settings_hash(self) -> str:
        """A hash of the ``blend:`` section, recorded with a blend (blend/scores.json): a saved blend is applied
        to new audio only while the queue still describes it."""
        method = None if self.method is None else self.method.to_dict()
        return stable_hash({"method": method, "include": self.include, "metric": self.metric})


@dataclass(frozen=True)
class Queue:
    source: str  # absolute path of the queue file
    base_dir: str  # its folder: relative paths are resolved against it
    output_dir: str
    experiments: Tuple[Experiment, ...]
    blend: BlendSettings
    execution: schema.ExecutionSettings = schema.ExecutionSettings()  # how fold jobs run (`execution:`)

    def experiment(self, name: str) -> Experiment:
        for exp in self.experiments:
            if exp.name == name:
                return exp
        raise KeyError(name)


def _plain(obj):
    """Tuples -> lists so that YAML/JSON dumps stay plain."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------- loading


def load_queue(path: str) -> Queue:
    """Parse and validate a queue file. Raises :class:`ConfigError` listing every problem."""
    source = os.path.abspath(path)
    if not os.path.isfile(source):
        what = ("is a folder" if os.path.isdir(source) else "is not a regular file" if os.path.exists(source)
                else "not found")
        raise ConfigError(path, [f"queue file {what}: {path!r} (expected a YAML file)"])
    try:
        size = os.path.getsize(source)
        if size > queue_yaml.MAX_BYTES:
            raise ConfigError(path, [f"queue file is {size:,} bytes; a queue file may be at most "
                                     f"{queue_yaml.MAX_BYTES:,} bytes (is this the right file?)"])
        with open(source, encoding="utf-8") as f:
            raw = queue_yaml.load_text(f.read())
    except queue_yaml.QueueYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(path, [f"{where}: {err.problem}"]) from None
    except yaml.constructor.ConstructorError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        if "tag" not in str(err.problem):  # e.g. a list used as a key
            raise ConfigError(path, [f"{where}: not valid in a queue file: {err.problem}"]) from None
        raise ConfigError(
            path, [f"{where}: YAML tag not allowed ({err.problem}); only plain YAML values are accepted"]
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(path, [f"{where}: not valid YAML: {problem}"]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(path, [f"cannot read queue file: {err}"]) from None
    try:
        return parse_queue(raw, source=source, base_dir=os.path.dirname(source))
    except RecursionError:  # the loader bounds nesting; this is the last line of defence
        raise ConfigError(path, ["<root>: nested too deeply to validate"]) from None


def parse_queue(raw: Any, *, source: str, base_dir: str) -> Queue:
    """Validate an already-parsed YAML document (see :func:`load_queue`)."""
    problems: List[str] = []
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"<root>: expected a mapping with keys {', '.join(TOP_LEVEL_KEYS)}; got {_typename(raw)}"])
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            problems.append(f"{key}: unknown key; expected one of: {', '.join(TOP_LEVEL_KEYS)}")

    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        problems.append(f"defaults: expected a mapping; got {_typename(defaults)}")
        defaults = {}
    if "name" in defaults:
        problems.append("defaults.name: an experiment name cannot be a default")
    if PSEUDO_SECTION in defaults:
        problems.append(f"defaults.{PSEUDO_SECTION}: a teacher is chosen per experiment; move `{PSEUDO_SECTION}:` "
                        f"into the student experiments")
    for key in defaults:
        if key not in ("name", PSEUDO_SECTION) and key not in schema.COMPONENT_SECTIONS and key not in schema.PLAIN_SECTIONS:
            problems.append(f"defaults.{key}: unknown key; expected one of: {', '.join(_section_names())}")

    raw_exps = raw.get("experiments")
    if not isinstance(raw_exps, list) or not raw_exps:
        got = "an empty list" if raw_exps == [] else _typename(raw_exps)
        problems.append(f"experiments: expected a non-empty list of experiments; got {got}")
        raw_exps = []

    experiments: List[Experiment] = []
    seen: Dict[str, int] = {}
    for i, raw_exp in enumerate(raw_exps):
        exp = _parse_experiment(i, raw_exp, defaults, base_dir, problems, seen)
        if exp is not None:
            experiments.append(exp)

    output = raw.get("output", "output")
    if not isinstance(output, str) or not output:
        got = "an empty string" if output == "" else _typename(output)
        problems.append(f"output: expected a folder path string; got {got}")
        output = "output"
    elif _has_control_character(output):
        problems.append(f"output: {output!r} contains a control character (a NUL or a newline?); expected a folder "
                        f"path")
        output = "output"
    elif _long_name(output):
        problems.append(f"output: {_long_name(output)[:40]}... is a name of {len(_long_name(output).encode())} "
                        f"bytes; a folder name may have at most 255")
        output = "output"
    blend = _parse_blend(raw.get("blend"), [e.name for e in experiments], problems)
    if not problems:
        experiments = _resolve_teachers(experiments, seen, problems)
    execution = parse_execution(raw.get("execution"), problems)

    if problems:
        # Problems inherited from `defaults` appear once, not once per experiment.
        raise ConfigError(source, list(dict.fromkeys(problems)))
    return Queue(
        source=source,
        base_dir=base_dir,
        output_dir=_resolve(base_dir, output),
        experiments=tuple(experiments),
        blend=blend,
        execution=execution,
    )


def _section_names():
    return ["name", *schema.COMPONENT_SECTIONS, *schema.PLAIN_SECTIONS, PSEUDO_SECTION]


def _parse_experiment(i, raw_exp, defaults, base_dir, problems, seen) -> Optional[Experiment]:
    where = f"experiments[{i}]"
    if not isinstance(raw_exp, dict):
        problems.append(f"{where}: expected a mapping with at least `name`; got {_typename(raw_exp)}")
        return None
    n_before = len(problems)
    name = raw_exp.get("name")
    if not isinstance(name, str) or not name:
        # YAML reads a bare yes, 2024-01-01 or 0x10 as a boolean, a date, a number: quoting keeps it a name.
        given = ("required" if "name" not in raw_exp or name is None else
                 "got an empty string" if name == "" else f"got {name!r} ({_typename(name)}); quote it")
        problems.append(f"{where}.name: {given}; a string of letters, digits, '.', '_' or '-'")
        name = None
    elif len(name) > layout.MAX_NAME_LENGTH:
        problems.append(f"{where}.name: {len(name)} characters; at most {layout.MAX_NAME_LENGTH} (it becomes a "
                        f"folder name)")
    elif not NAME_RE.fullmatch(name):
        problems.append(f"{where}.name: {name!r} is not a safe name; use only letters, digits, '.', '_' and '-', "
                        f"starting with a letter, digit or '_'")
    elif layout.is_reserved(name):
        problems.append(f"{where}.name: {name!r} is reserved: the queue's own outputs and oof.csv columns use "
                        f"{', '.join(sorted(n for n in layout.RESERVED_NAMES if not n.startswith('.')))} "
                        f"(compared without case); choose another name")
    elif name.lower() in seen:
        # Without case: on a case-insensitive filesystem the two experiments would share one folder.
        problems.append(f"{where}.name: duplicate name {name!r} (also experiments[{seen[name.lower()]}].name; "
                        f"names are compared without case)")
    else:
        seen[name.lower()] = i

    for key in raw_exp:
        if key not in _section_names():
            problems.append(f"{where}.{key}: unknown key; expected one of: {', '.join(_section_names())}")

    def origin(section: str, key: Optional[str] = None) -> str:
        """Key path where a value came from: the experiment if it set it, else defaults."""
        own = raw_exp.get(section)
        if key is None:
            return f"{where}.{section}" if section in raw_exp else f"defaults.{section}"
        if isinstance(own, dict) and key in own:
            return f"{where}.{section}.{key}"
        if isinstance(own, str) and key == "name":
            return f"{where}.{section}.name"
        return f"defaults.{section}.{key}"

    values: Dict[str, Any] = {}
    for section, registry in schema.COMPONENT_SECTIONS.items():
        merged = _merge_component(section, defaults.get(section), raw_exp.get(section), origin, problems)
        if merged is None:
            if section in schema.DEFAULT_COMPONENTS:
                merged = {"name": schema.DEFAULT_COMPONENTS[section]}
            else:
                if section in schema.REQUIRED_COMPONENTS:
                    problems.append(
                        f"{where}.{section}: required; one of: {', '.join(registry)} "
                        f"(in the experiment or in defaults)"
                    )
                continue
        values[section] = _parse_component(section, merged, origin, base_dir, problems, experiment_name=name)
    for section, cls in schema.PLAIN_SECTIONS.items():
        merged = _merge_plain(section, defaults.get(section), raw_exp.get(section), origin, problems)
        values[section] = _build(cls, merged, lambda key, s=section: origin(s, key), base_dir, problems)

    if PSEUDO_SECTION in raw_exp:
        values[PSEUDO_SECTION] = _parse_pseudo(raw_exp[PSEUDO_SECTION], f"{where}.{PSEUDO_SECTION}", problems)

    if len(problems) > n_before or name is None:
        return None
    exp = Experiment(name=name, **values)
    # Rules across sections (fmin < fmax <= Nyquist, n_fft within the clip, rfcx losses, ...): see config_checks.
    config_checks.check_experiment(exp, origin, problems)
    return None if len(problems) > n_before else exp


def _merge_component(section, default, own, origin, problems) -> Optional[dict]:
    parts = []
    for value, label in ((default, f"defaults.{section}"), (own, origin(section))):
        if value is None:
            continue
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, dict):
            problems.append(f"{label}: expected a name or a mapping with `name`; got {_typename(value)}")
            return None
        parts.append(value)
    if not parts:
        return None
    merged = dict(parts[0])
    if len(parts) == 2:
        own_name = parts[1].get("name")
        if own_name is not None and own_name != merged.get("name"):
            merged = dict(parts[1])  # another component: the default's parameters do not apply
        else:
            merged.update(parts[1])
    return merged


def _merge_plain(section, default, own, origin, problems) -> dict:
    merged: Dict[str, Any] = {}
    for value, label in ((default, f"defaults.{section}"), (own, origin(section))):
        if value is None:
            continue
        if not isinstance(value, dict):
            problems.append(f"{label}: expected a mapping; got {_typename(value)}")
            continue
        merged.update(value)
    return merged


def _parse_component(section, merged, origin, base_dir, problems, experiment_name=None) -> Optional[Component]:
    registry = schema.COMPONENT_SECTIONS[section]
    name = merged.get("name")
    if not isinstance(name, str):
        problems.append(f"{origin(section, 'name')}: required; one of: {', '.join(registry)}")
        return None
    if name not in registry:
        problems.append(
            f"{origin(section, 'name')}: {name!r} is not a {KIND_NAMES[section]}; "
            f"choose one of: {', '.join(registry)}"
        )
        return None
    params = {k: v for k, v in merged.items() if k != "name"}
    if section == "data" and name in ("synthetic_whale", "synthetic_rfcx") and params.get("root") is None:
        params["root"] = f"input/{name}"
    built = _build(registry[name].params, params, lambda key: origin(section, key), base_dir, problems)
    return None if built is None else Component(name=name, params=built)


def _build(cls, values: dict, where, base_dir, problems):
    """Instantiate a schema dataclass from user values, checking keys, types and ranges."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    ok = True
    for key, value in values.items():
        if key not in fields:
            choices = ", ".join(fields) if fields else "(none: this component takes no parameters)"
            problems.append(f"{where(key)}: unknown key; expected one of: {choices}")
            ok = False
            continue
        nested = _nested_settings(hints[key], fields[key].metadata)
        if nested is not None:  # a mapping (train.ema) or a list of mappings (predict.tta) of settings
            built = _build_nested(nested, value, where(key), base_dir, problems)
            ok = ok and built is not _INVALID
            kwargs[key] = built
            continue
        error, value = _check_value(value, hints[key], fields[key].metadata, base_dir)
        if error:
            problems.append(f"{where(key)}: {error}")
            ok = False
        else:
            kwargs[key] = value
    for key, f in fields.items():
        if key not in values and f.metadata.get("path") and f.default is not None and f.metadata.get("must_exist"):
            # A default path that must exist is checked too (e.g. kaggle_whale root).
            error, value = _check_value(f.default, hints[key], f.metadata, base_dir)
            if error:
                problems.append(f"{where(key)}: {error}")
                ok = False
            else:
                kwargs[key] = value
    return cls(**kwargs) if ok else None


# ----------------------------------------------------------------------------- nested settings (issue 17)
# train.ema / train.swa (a mapping or null) and predict.tta (a list of mappings): schema dataclasses inside a
# section, checked key by key like a section, each problem named by its full key path.

_INVALID = object()  # marks a nested value that failed (its problems are already listed)


def _nested_settings(hint, meta):
    """(schema dataclass, max_len) when a field holds a list of settings (``items=<dataclass>``, ``max_len``),
    (schema dataclass, None) when it holds one mapping of them; None for a plain value."""
    items = meta.get("items")
    if dataclasses.is_dataclass(items):
        return items, meta["max_len"]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return (args[0], None) if dataclasses.is_dataclass(args[0]) else None


def _build_nested(nested, value, path, base_dir, problems):
    """``value`` as the settings dataclass (null: None) or a tuple of them (null: empty); _INVALID on a problem."""
    cls, max_len = nested
    keys = ", ".join(f.name for f in dataclasses.fields(cls))
    if max_len is not None:
        if value is None:
            return ()
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list of mappings with keys {keys}; got {_typename(value)}")
            return _INVALID
        if len(value) > max_len:
            problems.append(f"{path}: at most {max_len} items; got {len(value)}")
            return _INVALID
        built = [_build_nested((cls, None), v, f"{path}[{i}]", base_dir, problems) for i, v in enumerate(value)]
        return _INVALID if any(b is _INVALID or b is None for b in built) else tuple(built)
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append(f"{path}: expected a mapping with keys {keys}; got {_typename(value)}")
        return _INVALID
    built = _build(cls, value, lambda k: f"{path}.{k}", base_dir, problems)
    return _INVALID if built is None else built


def _check_value(value, hint, meta, base_dir) -> Tuple[Optional[str], Any]:
    """Return (error message or None, coerced value)."""
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    if optional:
        if value is None:
            return None, None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is bool:
        if not isinstance(value, bool):
            return f"expected true or false; got {_show(value)}", value
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expected an integer; got {_show(value)}", value
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected a number; got {_show(value)}", value
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            return f"expected a finite number; got {value}", value
    elif hint is str:
        if not isinstance(value, str) or not value:
            return f"expected a non-empty string; got {_show(value)}", value
    elif hint is tuple and meta.get("items") == "label":
        # Class labels: text or integers (YAML reads 0 as an int), compared as the CSV's stripped text.
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (str, int)) and not isinstance(v, bool) and str(v).strip() for v in value
        ):
            return f"expected a list of class labels (strings or integers); got {_show(value)}", value
        value = tuple(str(v).strip() for v in value)
        twice = sorted({v for v in value if value.count(v) > 1})
        if twice:
            return f"each class label once; got {', '.join(map(repr, twice))} more than once", value
        if len(value) < 2:
            return f"expected at least two distinct class labels; got {_show(list(value))}", value
        if len(value) > meta["max_len"]:
            return f"expected at most {meta['max_len']} class labels; got {len(value)}", value
    elif hint is tuple and "item_choices" in meta:
        choices = meta["item_choices"]
        if not isinstance(value, (list, tuple)) or not value or not all(v in choices for v in value):
            return f"expected a non-empty list of {', '.join(choices)}; got {_show(value)}", value
        if len(set(value)) != len(value):
            return f"lists {_show(list(value))} with a repeat; give each at most once", value
        value = tuple(value)
    elif hint is tuple:
        if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value
        ):
            return f"expected a non-empty list of positive integers; got {_show(value)}", value
        if "max_len" in meta and len(value) > meta["max_len"]:
            return f"expected at most {meta['max_len']} integers; got {len(value)}", value
        if "item_max" in meta and max(value) > meta["item_max"]:
            return f"every integer must be <= {meta['item_max']}; got {max(value)}", value
        value = tuple(value)
    choices = meta.get("choices")
    # Compared with their types too, so that 1 is not taken for true.
    if choices is not None and not any(value == c and type(value) is type(c) for c in choices):
        shown = (str(c).lower() if isinstance(c, bool) else str(c) for c in choices)
        return f"{_show(value)} is not allowed; choose one of: {', '.join(shown)}", value
    if "min" in meta and value < meta["min"]:
        return f"must be >= {meta['min']}; got {_show(value)}", value
    if "max" in meta and value > meta["max"]:
        return f"must be <= {meta['max']}; got {_show(value)}", value
    if "min_exclusive" in meta and value <= meta["min_exclusive"]:
        return f"must be > {meta['min_exclusive']}; got {_show(value)}", value
    kind = meta.get("path")
    if kind and value not in meta.get("keywords", ()):
        if _has_control_character(value):
            return f"{value!r} contains a control character (a NUL or a newline?); expected a path", value
        if _long_name(value):
            return (f"{_long_name(value)[:40]}... is a name of {len(_long_name(value).encode())} bytes; a file or "
                    f"folder name may have at most 255"), value
        value = _resolve(base_dir, value)
        # A cloud path (gs://...) is checked when the data is read: validation stays TensorFlow-free.
        if meta.get("must_exist") and "://" not in value:
            exists = os.path.isdir(value) if kind == "dir" else os.path.isfile(value)
            if not exists:
                what = "folder" if kind == "dir" else "file"
                return f"{what} not found: {value}", value
    return None, value


# ----------------------------------------------------------------------------- pseudo-labels (issue 17)

PSEUDO_SECTION = "pseudo"


def _parse_pseudo(raw, where: str, problems: List[str]) -> Optional[schema.PseudoSettings]:
    """``experiments[i].pseudo``: a mapping with a required ``teacher`` (the rest: :class:`schema.PseudoSettings`)."""
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping with `teacher` (and on, mode, threshold, weight); "
                        f"got {_typename(raw)}")
        return None
    if True in raw:  # YAML 1.1 reads the bare key `on` as true
        raw = {("on" if key is True else key): value for key, value in raw.items()}
    if "teacher" not in raw:
        problems.append(f"{where}.teacher: required; the name of the teacher experiment in this queue")
        return None
    return _build(schema.PseudoSettings, raw, lambda key: f"{where}.{key}", "", problems)


def _resolve_teachers(experiments: List[Experiment], seen: Dict[str, int], problems: List[str]) -> List[Experiment]:
    """Check every student against its teacher (:func:`config_checks.check_teachers`) and link them.

    Returns the experiments in file order, each student holding its resolved teacher (a student
    of a student holds the whole chain), or the input unchanged when a problem was found.
    """
    index = {exp.name: seen[exp.name.lower()] for exp in experiments}
    n_before = len(problems)
    config_checks.check_teachers(experiments, index, problems)
    if len(problems) > n_before:
        return experiments
    resolved: Dict[str, Experiment] = {}
    for exp in run_order(experiments):  # teachers first, so a teacher is already linked to its own teacher
        if exp.pseudo is not None:
            exp = dataclasses.replace(exp, teacher=resolved[exp.pseudo.teacher])
        resolved[exp.name] = exp
    return [resolved[exp.name] for exp in experiments]


def run_order(experiments) -> List[Experiment]:
    """The experiments in file order, except that a teacher moves up to run just before its first student.

    ``Experiment.requires`` names the experiments that must finish first; a required experiment
    that is not among ``experiments`` (left out by ``--only``) is not waited for: the student's run
    checks that it finished earlier. Cycles are refused when the queue file is read.
    """
    by_name = {exp.name: exp for exp in experiments}
    order: List[Experiment] = []
    placed = set()

    def place(exp):
        if exp.name in placed:
            return
        placed.add(exp.name)
        for name in exp.requires:
            if name in by_name:
                place(by_name[name])
        order.append(exp)

    for exp in experiments:
        place(exp)
    return order


def _parse_blend(raw, names, problems) -> BlendSettings:
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        problems.append(f"blend: expected a mapping with keys method, include, metric; got {_typename(raw)}")
        raw = {}
    for key in raw:
        if key not in ("method", "include", "metric"):
            problems.append(f"blend.{key}: unknown key; expected one of: method, include, metric")
    method = raw.get("method", "mean")
    if isinstance(method, str):
        method = {"name": method}
    component = None
    if not isinstance(method, dict) or not isinstance(method.get("name"), str):
        problems.append(f"blend.method: expected a name or a mapping with `name`; got {_typename(method)}")
    elif method["name"] not in schema.BLEND_METHODS:
        problems.append(
            f"blend.method.name: {method['name']!r} is not a blend method; "
            f"choose one of: {', '.join(schema.BLEND_METHODS)}"
        )
    else:
        params = {k: v for k, v in method.items() if k != "name"}
        built = _build(schema.BLEND_METHODS[method["name"]].params, params, lambda k: f"blend.method.{k}", "", problems)
        if built is not None:
            component = Component(method["name"], built)
    include = raw.get("include")
    if include is not None:
        if not isinstance(include, list) or not all(isinstance(n, str) for n in include) or not include:
            got = "an empty list (leave include out to blend every finished experiment)" if include == [] \
                else _typename(include)
            problems.append(f"blend.include: expected a list of experiment names; got {got}")
            include = None
        else:
            for n in include:
                if n not in names:
                    problems.append(f"blend.include: {n!r} is not an experiment in this queue")
            include = tuple(include)
    metric = raw.get("metric", "auc")
    if metric not in BLEND_METRICS:
        problems.append(f"blend.metric: {_show(metric)} is not a metric; choose one of: {', '.join(BLEND_METRICS)}")
    return BlendSettings(method=component, include=include, metric=metric)


# ----------------------------------------------------------------------------- execution (issue 16)


def parse_execution(raw, problems: List[str]) -> schema.ExecutionSettings:
    """The ``execution:`` section (:class:`pipeline.schema.ExecutionSettings`); a problem per bad key."""
    raw = {} if raw is None else raw
    fields = [f.name for f in dataclasses.fields(schema.ExecutionSettings)]
    if not isinstance(raw, dict):
        problems.append(f"execution: expected a mapping with keys {', '.join(fields)}; got {_typename(raw)}")
        return schema.ExecutionSettings()
    values = {}
    for key, value in raw.items():
        if key not in fields:
            problems.append(f"execution.{key}: unknown key; expected one of: {', '.join(fields)}")
            continue
        error = _execution_value(key, value)
        if error:
            problems.append(f"execution.{key}: {error}")
        else:
            numeric = key in ("gpus_per_job", "memory_budget_gb") and value is not None
            values[key] = float(value) if numeric else value
    settings = schema.ExecutionSettings(**values)
    if settings.address is not None and settings.backend != "ray":
        problems.append(f"execution.address: only the ray backend connects to an address; got {settings.address!r} "
                        f"with backend {settings.backend!r}")
    return settings


def parse_jobs(value) -> Tuple[Optional[str], Any]:
    """``(error or None, jobs)`` for a jobs value from the queue file or ``--jobs`` (text): ``auto`` or an int >= 1."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= schema.MAX_JOBS):
        return None, value
    return f"expected auto or a whole number from 1 to {schema.MAX_JOBS}; got {_show(value)}", value


def _execution_value(key: str, value) -> Optional[str]:
    """Why ``value`` is not valid for ``execution.<key>``, or None."""
    if key == "backend":
        if value not in schema.EXECUTORS:  # the registry: "ray" once its executor is registered
            return f"{_show(value)} is not an executor; choose one of: {', '.join(schema.EXECUTORS)}"
    elif key == "jobs":
        return parse_jobs(value)[0]
    elif key == "gpus_per_job":
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is not None and not (number and (0 < value <= 1 or (float(value).is_integer() and 1 <= value <= 64))):
            return f"expected a fraction in (0, 1] or a whole number of GPUs from 1 to 64; got {_show(value)}"
    elif key == "address":
        if value is not None and not (value == "auto" or (isinstance(value, str)
                                                           and re.fullmatch(r"[^\s:]+:[0-9]{1,5}", value))):
            return f"expected auto or host:port (an existing Ray cluster); got {_show(value)}"
    elif key == "retries":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= schema.MAX_RETRIES:
            return f"expected a whole number from 0 to {schema.MAX_RETRIES}; got {_show(value)}"
    elif key == "memory_budget_gb":
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is not None and not (number and 0.01 <= value <= 1_000_000):
            return (f"expected GiB for a fold job's input as a number from 0.01 to 1000000 (e.g. 8 or 1.5), or null "
                    f"for automatic; got {_show(value)}")
    return None


def _has_control_character(path: str) -> bool:
    """A NUL (which no system call takes), a newline or another control character: never meant in a path."""
    return any(ord(c) < 32 for c in path)


def _long_name(path: str) -> Optional[str]:
    """The first part of ``path`` longer than a file name may be (255 bytes on Linux, macOS and Windows)."""
    return next((part for part in path.split("/") if len(part.encode("utf-8", "replace")) > 255), None)


def _resolve(base_dir: str, path: str) -> str:
    path = os.path.expanduser(path.removeprefix("file://"))  # a file URL is a local path
    if "://" in path or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(base_dir, path))


def _typename(value) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__
    )


def _short_repr():
    short = reprlib.Repr()
    short.maxstring = short.maxother = 80
    short.maxlist = short.maxdict = 6
    short.maxlevel = 3
    return short


# Values are quoted in messages shortened: a 900 kB string or a deeply nested list stays one short line.
_SHORT = _short_repr()


def _show(value) -> str:
    text = _SHORT.repr(value)
    return f"{text} ({_typename(value)})" if not isinstance(value, (int, float)) or isinstance(value, bool) else text


def dump_experiment(exp: Experiment) -> str:
    """The resolved config as YAML text (written to output/<experiment>/config.yaml)."""
    return yaml.safe_dump(exp.to_dict(), sort_keys=False)


def config_changes(saved_text: str, exp: Experiment, shown: int = 3) -> str:
    """What differs between a saved config.yaml (``saved_text``) and ``exp``'s resolved config, in words
    (``train.learning_rate: 0.003 -> 0.001``, the first ``shown`` keys); "" when nothing readable differs."""
    try:
        old = yaml.safe_load(saved_text)
    except yaml.YAMLError:
        return ""
    if not isinstance(old, dict):
        return ""

    def flat(value, key=""):
        if isinstance(value, dict):
            return {k: v for name, sub in value.items()
                    for k, v in flat(sub, f"{key}.{name}" if key else str(name)).items()}
        return {key: value}

    before, after = flat(old), flat(yaml.safe_load(dump_experiment(exp)))
    keys = sorted(k for k in set(before) | set(after) if before.get(k, "(unset)") != after.get(k, "(unset)"))
    words = [f"{k}: {before.get(k, '(unset)')} -> {after.get(k, '(unset)')}" for k in keys[:shown]]
    return "; ".join(words) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


# ----------------------------------------------------------------------------- a data block on its own (--predict)


def parse_data_block(path: str) -> Component:
    """The ``data`` block of a YAML file holding only ``data: {...}`` (an experiment's ``data`` schema), paths
    relative to that file. Raises :class:`ConfigError` listing every problem."""
    source = os.path.abspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            raw = queue_yaml.load_text(f.read(queue_yaml.MAX_BYTES + 1))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(path, [f"cannot read it as YAML: {err}"]) from None
    if not isinstance(raw, dict) or set(raw) != {"data"}:
        raise ConfigError(path, [f"<root>: expected a mapping with the one key data (a data block as in an "
                                 f"experiment); got {_typename(raw) if not isinstance(raw, dict) else sorted(raw)}"])
    problems: List[str] = []

    def origin(section: str, key: Optional[str] = None) -> str:
        return section if key is None else f"{section}.{key}"

    merged = _merge_component("data", None, raw["data"], origin, problems)
    data = None if merged is None else _parse_component("data", merged, origin, os.path.dirname(source), problems)
    if problems or data is None:
        raise ConfigError(path, problems or ["data: required"])
    return data
