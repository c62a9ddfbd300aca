"""The pipeline deletes or replaces only folders it created.

Every folder the pipeline makes and may later delete or replace (the output
folder, each experiment's folder, feature-cache folders, ``blend/``, a
synthetic dataset) gets a marker file, :data:`MARKER`, when it is made.
:func:`remove_owned` deletes a folder only when it carries the marker (or,
for folders written by versions of the pipeline older than the marker, when
every entry in it is a name that pipeline writes: see ``recognise``), and
refuses otherwise with an :class:`OwnershipError` naming the folder. An
existing folder that is empty is taken over (nothing can be lost); one that
holds anything else is never adopted.

Local paths use ``os``; paths with a scheme (``gs://``, ``ram://``) go
through :mod:`pipeline.io`, so the same rules hold in a bucket.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from typing import Callable, Iterable, Iterator, List, Optional, Tuple

from pipeline import io, layout
from pipeline.errors import OutputError

MARKER = layout.MARKER
_MARKER_TEXT = ("This folder was created by the audio pipeline (pipeline/ownership.py).\n"
                "The pipeline may delete or replace it; it never deletes a folder without this file.\n")

# Temporary names of the atomic writes in pipeline.io (`.<name>.<random>.tmp`) that a kill can leave behind.
_ATOMIC_TMP = re.compile(r"\..+\.tmp")


class OwnershipError(OutputError):
    """A folder the pipeline was about to delete, replace or adopt is not the pipeline's."""


def is_owned(path: str) -> bool:
    """Whether ``path`` is a folder that carries the pipeline's marker."""
    return io.isdir(path) and io.isfile(io.join(path, MARKER))


def mark(path: str) -> None:
    """Write the marker into the existing folder ``path`` (the pipeline made it, or recognised it as its own)."""
    if not io.isfile(io.join(path, MARKER)):
        io.write_text(io.join(path, MARKER), _MARKER_TEXT)


def entries(path: str) -> List[str]:
    """Names in the folder ``path`` other than the marker ([] when it does not exist)."""
    if not io.isdir(path):
        return []
    return [n for n in io.listdir(path) if n != MARKER]


def is_atomic_leftover(name: str) -> bool:
    """A temporary file of an interrupted atomic write (:func:`pipeline.io.atomic_path`)."""
    return bool(_ATOMIC_TMP.fullmatch(name))


def make_owned_dir(path: str, *, recognise: Optional[Callable[[str], bool]] = None) -> None:
    """Create the folder ``path`` (and its parents) and mark it as the pipeline's.

    An existing folder is accepted when it carries the marker, is empty, or
    ``recognise(path)`` recognises it by its entries as the pipeline's (e.g.
    written by a version older than the marker); the last two are marked
    now. Anything else raises :class:`OwnershipError` and nothing is written.
    """
    if io.exists(path) and not io.isdir(path):
        raise OwnershipError(f"{path}: exists and is a file; expected a folder the pipeline can create")
    if is_owned(path):
        return
    if io.isdir(path) and entries(path) and not (recognise is not None and recognise(path)):
        raise OwnershipError(f"{path}: exists, is not empty and was not created by the pipeline (no {MARKER} "
                             f"file); refusing to write into it or delete it. Move it away or choose another name")
    io.makedirs(path)
    mark(path)


def remove_owned(path: str, *, recognise: Optional[Callable[[str], bool]] = None,
                 foreign: Optional[Callable[[str], List[str]]] = None) -> None:
    """Delete the folder ``path`` and everything in it, only if the pipeline created it.

    A missing folder is fine. The folder must carry the marker, be empty, or
    be recognised by ``recognise(path)`` (judged by its entries: a folder of
    an older pipeline version, or a feature cache's shards); and
    ``foreign(path)``, when given, must find nothing in it the pipeline did
    not write (a user's notebook put into an experiment folder). Otherwise
    :class:`OwnershipError` is raised and nothing is deleted. A file that
    cannot be deleted (no permission) raises :class:`OwnershipError` naming
    it; the marker goes last, so a folder left half deleted stays the
    pipeline's.
    """
    if not io.exists(path):
        return
    if not io.isdir(path):
        raise OwnershipError(f"{path}: is a file, not a folder the pipeline made; refusing to delete it")
    if not is_owned(path) and entries(path) and not (recognise is not None and recognise(path)):
        raise OwnershipError(f"{path}: was not created by the pipeline (no {MARKER} file) and holds "
                             f"{_some(entries(path))}; refusing to delete it. Move it away or choose another name")
    extra = foreign(path) if foreign is not None else []
    if extra:
        raise OwnershipError(f"{path}: holds {_some(extra)}, which the pipeline did not write; refusing to delete "
                             f"the folder. Move {'it' if len(extra) == 1 else 'them'} out, then run again")
    if io.is_remote(path):
        io.rmtree(path)
        return
    try:
        for name in entries(path):
            sub = os.path.join(path, name)
            if os.path.isdir(sub) and not os.path.islink(sub):
                shutil.rmtree(sub)
            else:
                os.remove(sub)
        if os.path.exists(os.path.join(path, MARKER)):
            os.remove(os.path.join(path, MARKER))
        os.rmdir(path)
    except OSError as err:
        raise OwnershipError(f"{path}: could not delete {err.filename or path}: {err.strerror or err}; the folder "
                             f"is left partly deleted (still the pipeline's). Fix the permission, then run "
                             f"again") from None


def experiment_foreign(path: str) -> List[str]:
    """Entries of the experiment folder ``path`` the pipeline did not write (relative paths): anything but its
    experiment files and ``fold<k>/`` folders holding fold files (the insides of ``plots/``, ``fold<k>/state/``
    and ``fold<k>/tb/`` are the pipeline's and TensorFlow's)."""
    extra = []
    for name in entries(path):
        sub = io.join(path, name)
        if name in layout.EXPERIMENT_FILES or is_atomic_leftover(name):
            continue
        if layout.fold_index(name) is not None and io.isdir(sub):
            extra += [f"{name}/{n}" for n in entries(sub) if n not in layout.FOLD_FILES and not is_atomic_leftover(n)]
        else:
            extra.append(name)
    return extra


def files_foreign(allowed: Callable[[str], bool]) -> Callable[[str], List[str]]:
    """A ``foreign`` check for :func:`remove_owned`: the entries of a folder whose names ``allowed`` rejects."""
    return lambda path: [n for n in entries(path) if not allowed(n) and not is_atomic_leftover(n)]


def enclosing_owned(path: str) -> Optional[str]:
    """The outermost folder above ``path`` that carries the marker (None: none does).

    A folder the user names for the pipeline's output must not lie inside one the pipeline made (another run's
    output folder, an experiment's, ``blend/``, a cache, an export): that run writes and deletes there by name.
    Local paths are resolved first (symbolic links, ``..``).
    """
    if io.is_remote(path):
        scheme, rest = path.split("://", 1)
        parts = rest.rstrip("/").split("/")
        ups = [f"{scheme}://" + "/".join(parts[:n]) for n in range(len(parts) - 1, 0, -1)]
    else:
        ups, up = [], os.path.realpath(path)
        while os.path.dirname(up) != up:
            up = os.path.dirname(up)
            ups.append(up)
    return next((up for up in reversed(ups) if is_owned(up)), None)


def inside_owned_problem(key: str, path: str) -> Optional[str]:
    """``key: message`` when ``path`` lies inside a folder the pipeline made (:func:`enclosing_owned`)."""
    owner = enclosing_owned(path)
    if owner is None:
        return None
    return (f"{key}: {path} lies inside {owner}, a folder the pipeline made (another run's output folder, or one "
            f"of its experiment, blend, cache or export folders: it holds {MARKER}); the two would write and delete "
            f"the same files. Choose a folder outside it")


def only_names(path: str, allowed: Callable[[str], bool]) -> bool:
    """Whether every entry of the folder ``path`` passes ``allowed(name)`` (atomic-write leftovers always do)."""
    return all(allowed(n) or is_atomic_leftover(n) for n in entries(path))


def _some(names: Iterable[str], n: int = 3) -> str:
    names = sorted(names)
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


# ----------------------------------------------------------------------------- experiment and output folders



def is_legacy_experiment(path: str) -> bool:
    """An experiment folder written before the marker existed: a pipeline ``status.json`` and only pipeline names.

    Users upgrading keep their finished and half-finished experiments; a
    folder of the user's (any other file in it, or no status.json with the
    pipeline's fields) is not taken for one.
    """
    try:
        status = io.read_json(layout.experiment_file(path, layout.STATUS))
    except (OSError, ValueError):
        return False
    if not isinstance(status, dict) or "state" not in status or "config_hash" not in status:
        return False
    return only_names(path, lambda n: n in layout.EXPERIMENT_FILES or layout.fold_index(n) is not None)


def is_legacy_output(path: str) -> bool:
    """An output folder written before the marker existed, judged by content, never by names alone.

    Every entry must be recognised by its content (:func:`_legacy_entry_ok`: a legacy experiment folder, a
    ``blend/`` holding only blend files, a feature cache of shards and manifests, a fold table folder of
    ``<key>.csv`` files, ...), and there must be positive evidence that the pipeline wrote the folder: a
    ``queue.log`` written by it, a legacy experiment folder, or a non-empty ``cache/`` or ``folds/``. A
    user's folder that merely holds an ``oof.csv`` and a ``blend/submission.csv`` is not adopted.
    """
    names = entries(path)
    if not all(is_atomic_leftover(n) or _legacy_entry_ok(path, n) for n in names):
        return False
    return any(_is_evidence(path, n) for n in names)


def legacy_output_foreign(path: str) -> List[str]:
    """The entries of the unmarked folder ``path`` that are not recognised as an older pipeline's output."""
    return [n for n in entries(path) if not is_atomic_leftover(n) and not _legacy_entry_ok(path, n)]


_KEY = re.compile(r"[0-9a-f]{8,64}")  # pipeline.hashing.stable_hash
_WORKER = re.compile(r"[A-Za-z_]+-\d+")
_LOG_LINE = re.compile(rb"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d")
_QUEUE_FILES = {layout.QUEUE_OOF, layout.SUMMARY, layout.REPORT, layout.SCREENSHOT, layout.QUEUE_LOG, layout.LOCK,
                MARKER}
_QUEUE_FOLDERS = {layout.BLEND, layout.QUEUE_PLOTS, layout.CACHE, layout.FOLDS, layout.WORKERS}


def _head(path: str, n: int = 4096) -> bytes:
    """The first ``n`` bytes of a regular file (b"" for anything else: a named pipe is never opened)."""
    if not io.isfile(path):
        return b""
    try:
        with io.open_file(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _csv_header(path: str) -> List[str]:
    head = _head(path).split(b"\n", 1)[0].strip(b"\r")
    return [c.strip('"') for c in head.decode("utf-8", "replace").split(",")]


def is_blend_folder(path: str) -> bool:
    """A ``blend/`` folder of the pipeline's: marked, or holding nothing but the blend's own files."""
    return io.isdir(path) and (is_owned(path) or only_names(
        path, lambda n: n in layout.BLEND_FOLDER_FILES and io.isfile(io.join(path, n))))


def _is_cache_folder(path: str) -> bool:
    """``cache/``: only ``features/``, whose entries are ``<key>`` (or ``<key>.building``) folders of shards and
    manifests."""
    def shards(folder):
        return io.isdir(folder) and only_names(folder, lambda n: n == layout.CACHE_MANIFEST
                                               or n.endswith((".tfrecord", ".partial")))

    def features(folder):
        return io.isdir(folder) and only_names(folder, lambda n: bool(_KEY.fullmatch(n.removesuffix(".building")))
                                               and shards(io.join(folder, n)))

    return io.isdir(path) and only_names(path, lambda n: n == layout.FEATURES and features(io.join(path, n)))


def _is_folds_folder(path: str) -> bool:
    """``folds/``: only ``<key>.csv`` fold tables (an ``id`` and a ``fold`` column)."""
    def table(n):
        full = io.join(path, n)
        key = n.removesuffix(layout.FOLD_TABLE_SUFFIX)
        return (key != n and bool(_KEY.fullmatch(key)) and io.isfile(full)
                and {"id", "fold"} <= set(_csv_header(full)))

    return io.isdir(path) and only_names(path, table)


def _legacy_entry_ok(output: str, name: str) -> bool:
    """Whether ``output/name`` is, by its content, something an older pipeline version wrote there."""
    path = io.join(output, name)
    if name not in layout.QUEUE_LEVEL_NAMES:
        return is_legacy_experiment(path)
    if name in _QUEUE_FILES and not io.isfile(path):
        return False
    if name in _QUEUE_FOLDERS and not io.isdir(path):
        return False
    if name == layout.QUEUE_OOF:
        return {"id", "fold"} <= set(_csv_header(path))
    if name == layout.SUMMARY:
        return _csv_header(path)[0] == "experiment"
    if name == layout.QUEUE_LOG:
        head = _head(path, 64)
        return not head.strip() or bool(_LOG_LINE.match(head))
    if name == layout.REPORT:
        return b"<html" in _head(path, 1024).lower()
    if name == layout.SCREENSHOT:
        return _head(path, 8) == b"\x89PNG\r\n\x1a\n"
    if name == layout.QUEUE_PLOTS:
        return only_names(path, lambda n: n.endswith(".png") and _head(io.join(path, n), 8) == b"\x89PNG\r\n\x1a\n")
    if name == layout.BLEND:
        return is_blend_folder(path)
    if name == layout.CACHE:
        return _is_cache_folder(path)
    if name == layout.FOLDS:
        return _is_folds_folder(path)
    if name == layout.WORKERS:
        return only_names(path, lambda n: bool(_WORKER.fullmatch(n)) and io.isdir(io.join(path, n)) and (
            is_owned(io.join(path, n)) or not entries(io.join(path, n)) or is_legacy_output(io.join(path, n))))
    return True  # the lock file


def _is_evidence(output: str, name: str) -> bool:
    """An entry that only the pipeline writes: its queue.log, an experiment folder, a non-empty cache or folds."""
    path = io.join(output, name)
    if name == layout.QUEUE_LOG:
        return bool(_LOG_LINE.match(_head(path, 64)))
    if name in (layout.CACHE, layout.FOLDS):
        return bool(entries(path))
    return name not in layout.QUEUE_LEVEL_NAMES and not is_atomic_leftover(name)


def adopt_output(path: str) -> List[str]:
    """Create (or take over) the output folder ``path`` and mark what an older pipeline version wrote in it.

    Marks the output folder, every legacy experiment folder and the legacy
    ``blend/`` folder, so that later deletions find their marker; each is
    checked by its content just before it is marked. Returns the folders
    that were adopted (for the log). Raises :class:`OwnershipError` when
    ``path`` is not the pipeline's (see :func:`check_output`, which reports
    the same problems without writing).
    """
    adopted = []
    legacy = not is_owned(path) and bool(entries(path))
    make_owned_dir(path, recognise=is_legacy_output)
    if legacy:
        adopted.append(path)
        for name in entries(path):
            sub = io.join(path, name)
            if not io.isdir(sub) or is_owned(sub):
                continue
            if name == layout.BLEND and is_blend_folder(sub):
                mark(sub)
                adopted.append(sub)
            elif name not in layout.QUEUE_LEVEL_NAMES and is_legacy_experiment(sub):
                mark(sub)
                adopted.append(sub)
    return adopted


# ----------------------------------------------------------------------------- checks before a run


def check_output(queue, *, names: Optional[Iterable[str]] = None, blend_only: bool = False,
                 root_problem: Optional[Callable[[str, object], Optional[str]]] = None) -> List[str]:
    """Problems with the queue's output folder, one ``key.path: message`` line each ([] when it is safe).

    Read-only (run by ``run_queue.py`` before anything is written, also for
    ``--dry-run``). Refused:

    * ``output`` naming an existing file, or under one;
    * ``output`` inside a folder the pipeline made (:func:`enclosing_owned`:
      another run's output folder, one of its experiment folders, ...);
    * an existing output folder that is not empty and not the pipeline's
      (no marker and not recognisably an older pipeline version's output);
    * an experiment's folder ``output/<name>/`` that exists and is not the
      pipeline's (named by ``experiments[i].name``);
    * an output folder that overlaps a data path in either direction (equal,
      output inside a data folder, a data folder or file inside output),
      naming ``output`` and the data key;
    * a data root that its source may not write: ``root_problem(data name,
      data params)`` (:func:`pipeline.data.root_problem`, passed in because
      this bottom-layer module imports no data source) says why, e.g. a
      synthetic root holding files its generator did not write; asked only
      for the experiments that will run (``names`` or all, and not with
      ``blend_only``: otherwise no data is generated).
    """
    problems: List[str] = []
    output = queue.output_dir
    names = None if names is None else set(names)
    unreachable = io.remote_problem(output) if io.is_remote(output) else None
    if unreachable:  # nothing more can be checked there
        return [f"output: {unreachable}"]
    problems += _output_folder_problems(output)
    for i, exp in enumerate(queue.experiments):
        folder = io.join(output, exp.name)
        if io.exists(folder) and not io.isdir(folder):
            problems.append(f"experiments[{i}].name: {folder} exists and is a file; the experiment's outputs go "
                            f"into a folder of that name. Rename the experiment or move the file")
        elif io.isdir(folder) and not is_owned(folder) and entries(folder) and not is_legacy_experiment(folder):
            problems.append(f"experiments[{i}].name: {folder} exists and was not created by the pipeline (no "
                            f"{MARKER} file; it holds {_some(entries(folder))}); the experiment would write into "
                            f"it and delete it when its config changes. Rename the experiment or move the folder")
        for key, path, kind in _data_paths(i, exp):
            problem = _overlap(output, path, kind)
            if problem:
                problems.append(f"output: {output} {problem} {key} ({path}); the pipeline writes and deletes in "
                                f"its output folder, so it must be apart from the data. Choose another output")
        will_run = not blend_only and (names is None or exp.name in names)
        problem = root_problem(exp.data.name, exp.data.params) if will_run and root_problem else None
        if problem:
            problems.append(f"experiments[{i}].data.root: {problem}")
    return list(dict.fromkeys(problems))


def _output_folder_problems(output: str) -> List[str]:
    if any(ord(c) < 32 for c in output):
        return [f"output: {output!r} contains a control character (a newline?); expected a folder path"]
    if io.is_remote(output):
        if io.exists(output) and not io.isdir(output):
            return [f"output: {output} is an existing file; expected a folder"]
    else:
        # The first existing folder on the way up must be a folder, else makedirs fails later.
        probe = output
        while not os.path.exists(probe) and os.path.dirname(probe) != probe:
            probe = os.path.dirname(probe)
        if not os.path.isdir(probe):
            what = "is an existing file" if probe == output else f"lies under {probe}, which is a file"
            return [f"output: {output} {what}; expected a folder"]
    inside = inside_owned_problem("output", output)
    if inside:
        return [inside]
    if io.isdir(output) and not is_owned(output) and entries(output) and not is_legacy_output(output):
        foreign = legacy_output_foreign(output) or entries(output)
        return [f"output: {output} exists, is not empty and was not created by the pipeline (no {MARKER} file; "
                f"it holds {_some(foreign)}); choose a new or empty folder"]
    return _queue_level_problems(output) if is_owned(output) else []


def _queue_level_problems(output: str) -> List[str]:
    """Queue-level names in the pipeline's output folder that the pipeline could not write over: a folder where
    it writes a file (``oof.csv``, ``summary.csv``, ...), a file where it makes a folder, a ``blend/`` holding
    files it did not write."""
    problems = []
    for name in sorted(set(entries(output)) & layout.QUEUE_LEVEL_NAMES):
        path = io.join(output, name)
        if name in _QUEUE_FILES and io.isdir(path):
            problems.append(f"output: {path} is a folder; the pipeline writes a file of that name there. Move it away")
        elif name in _QUEUE_FOLDERS and not io.isdir(path):
            problems.append(f"output: {path} is a file; the pipeline makes a folder of that name there. Move it away")
        elif name == layout.BLEND and entries(path) and not is_blend_folder(path):
            problems.append(f"output: {path} was not created by the pipeline (no {MARKER} file; it holds "
                            f"{_some(entries(path))}); the blend would replace its files. Move it away")
    return problems


def _data_paths(i: int, exp) -> Iterator[Tuple[str, str, str]]:
    """``(key path, path, 'dir' | 'file')`` of every path-valued parameter of the experiment's data source."""
    params = exp.data.params
    for f in dataclasses.fields(params):
        kind = f.metadata.get("path")
        value = getattr(params, f.name)
        if kind and isinstance(value, str) and value not in f.metadata.get("keywords", ()):
            yield f"experiments[{i}].data.{f.name}", value, kind


def _overlap(output: str, path: str, kind: str) -> Optional[str]:
    """How the output folder overlaps a data path, as words for the message (None: apart).

    A data file matters only when it lies inside the output; a data folder
    also when the output lies inside it (the pipeline would write into the
    data, and a synthetic root is replaced as a whole).
    """
    if _within(output, path) and _within(path, output):
        return "is the same folder as"
    if _within(path, output):
        return "contains"
    if kind == "dir" and _within(output, path):
        return "lies inside"
    return None


def _within(child: str, parent: str) -> bool:
    """Whether ``child`` is ``parent`` or lies inside it.

    Local paths are compared after resolving symbolic links and also by
    file identity (device and inode) of the existing ancestors, so a
    case-insensitive filesystem or a bind mount is not fooled by spelling.
    """
    if io.is_remote(child) or io.is_remote(parent):
        c, p = child.rstrip("/"), parent.rstrip("/")
        return c == p or c.startswith(p + "/")
    c, p = os.path.realpath(child), os.path.realpath(parent)
    if c == p or c.startswith(p.rstrip(os.sep) + os.sep):
        return True
    try:
        target = os.stat(p)
    except OSError:
        return False
    while True:
        try:
            if os.path.samestat(os.stat(c), target):
                return True
        except OSError:
            pass
        up = os.path.dirname(c)
        if up == c:
            return False
        c = up
