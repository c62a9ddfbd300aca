"""The on-disk store of generated datasets: how a synthetic dataset is written, recognised and replaced.

The generators (:mod:`pipeline.data.synthetic` for whale clips,
:mod:`pipeline.data.synthetic_rfcx` for rfcx recordings) compute the audio
and the label tables; this module holds what they share on disk:

* :func:`write_into_place`: a dataset is written into a hidden temporary
  sibling and renamed into place, so an interrupted run never leaves a
  half-written dataset that looks complete; every file gets the fixed
  modification time :data:`GENERATED_MTIME_NS`;
* :class:`GeneratedLayout`: an existing folder is replaced only when it is
  missing, empty, or a dataset the same generator wrote that holds nothing
  else - never a folder of the user's;
* :data:`SPEC_FILE` (``synthetic.json``, the generator's parameters, written
  last) marks a complete dataset; :func:`read_spec` and :func:`count_files`
  are the cheap checks of whether it is current;
* :func:`write_pcm16` and :func:`write_csv` fix the bytes of the files, so
  the same parameters give byte-identical datasets;
* :func:`check_free_space` refuses a dataset the disk cannot hold before a
  single file is written.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import soundfile as sf

from pipeline import ownership
from pipeline.errors import DataError

logger = logging.getLogger(__name__)

SPEC_FILE = "synthetic.json"
# Modification time of every generated file (2000-01-01T00:00:00Z), see write_into_place.
GENERATED_MTIME_NS = 946_684_800 * 10**9


def read_spec(root: str) -> Optional[dict]:
    """The parsed ``root/synthetic.json``; None when it is missing or not JSON."""
    try:
        with open(os.path.join(root, SPEC_FILE), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def count_files(folder: str, suffix: str) -> int:
    """Number of entries of ``folder`` whose name ends with ``suffix``; -1 when it cannot be listed."""
    try:
        return sum(1 for e in os.scandir(folder) if e.name.endswith(suffix))
    except OSError:
        return -1


@dataclass(frozen=True)
class GeneratedLayout:
    """What a generator writes into its dataset folder: how a folder is recognised as replaceable.

    ``root`` may be replaced when it does not exist, is empty, or is a
    dataset written by ``generator`` - recognised by the pipeline's ownership
    marker or (datasets written before the marker existed) by its
    ``synthetic.json`` naming the generator - that holds nothing but what the
    generator writes: the top-level ``names`` and, in ``train/`` and
    ``test/``, regular files called like ``clip_name``. A file the user added
    to a generated dataset therefore also stops the replacement.
    """

    generator: str
    names: frozenset
    clip_name: "re.Pattern"

    def foreign(self, folder: str) -> list:
        """Entries of ``folder`` (relative names) that the generator does not write."""
        present = [n for n in os.listdir(folder) if n != ownership.MARKER]
        out = [n for n in present if n not in self.names and not ownership.is_atomic_leftover(n)]
        for split in ("train", "test"):
            sub = os.path.join(folder, split)
            if os.path.isdir(sub) and not os.path.islink(sub):
                out += [f"{split}/{e.name}" for e in os.scandir(sub)
                        if not (e.is_file(follow_symlinks=False) and self.clip_name.fullmatch(e.name))]
            elif os.path.lexists(sub):
                out.append(split)
        return out

    def root_problem(self, root: str) -> Optional[str]:
        """Why the generator may not write (or replace) its dataset at ``root``; None when it may."""
        if not os.path.lexists(root):
            return None
        if not os.path.isdir(root):
            return f"{root}: exists and is not a folder; choose another data.root (a new or empty folder)"
        try:
            present = [n for n in os.listdir(root) if n != ownership.MARKER]
            if not present:
                return None
            spec = read_spec(root)
            if not (ownership.is_owned(root) or (isinstance(spec, dict) and spec.get("generator") == self.generator)):
                return (f"{root}: exists, is not empty and is not a synthetic dataset written by {self.generator} "
                        f"(no {ownership.MARKER} or {SPEC_FILE} naming it; it holds {_some(present)}); refusing to "
                        f"replace it - choose another data.root (a new or empty folder)")
            foreign = self.foreign(root)
        except OSError as err:
            return f"{root}: cannot be listed ({err}); choose another data.root"
        if foreign:
            return (f"{root}: holds files the generator did not write ({_some(foreign)}); refusing to replace the "
                    f"dataset and lose them - move them away or choose another data.root")
        return None

    def is_work_folder(self, folder: str) -> bool:
        """A temporary folder of :func:`write_into_place`: marked, or holding only what the generator writes."""
        try:
            return ownership.is_owned(folder) or not self.foreign(folder)
        except OSError:
            return False


def _some(names, n: int = 3) -> str:
    names = sorted(names)
    return ", ".join(repr(x) for x in names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def write_pcm16(path: str, samples: np.ndarray, sample_rate: int, format: str) -> None:
    """Write [-1, 1] float samples as 16-bit PCM (``format``: AIFF, FLAC, WAV) in one write."""
    # Quantise ourselves so the rounding rule (and thus the bytes) is ours, not a library default.
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype(np.int16)
    # Encoding in memory and writing once is ~3x faster than libsndfile's many
    # small writes to the file, and gives the same bytes.
    buffer = io.BytesIO()
    sf.write(buffer, pcm, sample_rate, format=format, subtype="PCM_16")
    with open(path, "wb") as fh:
        fh.write(buffer.getvalue())


def write_csv(path: str, header: list, rows: list) -> None:
    """A small CSV with ``\\n`` line ends (the synthetic datasets' label files)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _remove_stale_work_folders(parent: str, name: str, layout: GeneratedLayout, *, max_age_s: float = 3600.0) -> None:
    """Delete temporary siblings that killed runs left behind.

    Only folders untouched for ``max_age_s`` go: a younger one may belong to
    another process generating right now (its folder mtime changes with every
    file it adds).
    """
    now = time.time()
    for prefix in (f".{name}.tmp-", f".{name}.old-"):
        for entry in os.scandir(parent):
            if entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False):
                try:
                    stale = now - entry.stat(follow_symlinks=False).st_mtime > max_age_s
                except OSError:
                    continue
                # Only what write_into_place made: a marked folder or one holding nothing but generated files
                # (an .old- folder holds the replaced dataset under `name`).
                ours = layout.is_work_folder(entry.path) if prefix.endswith(".tmp-") else (
                    ownership.is_owned(entry.path)
                    or set(os.listdir(entry.path)) <= {name} and layout.root_problem(os.path.join(entry.path, name)) is None)
                if stale and ours:
                    logger.info("removing %s left by an interrupted run", entry.path)
                    shutil.rmtree(entry.path, ignore_errors=True)


def check_free_space(root: str, needed: int, *, keys: str) -> None:
    """Refuse to start writing a synthetic dataset of about ``needed`` bytes that the disk cannot hold.

    A large ``data.n_train`` would otherwise fill the disk clip by clip (100 M clips: 800 GB)
    and fail hours later with ``OSError: No space left on device``. ``keys`` names the
    settings that size the dataset, for the message. 10 % headroom, as for the feature cache.
    """
    folder = os.path.dirname(os.path.abspath(root))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)  # the nearest existing ancestor: where the space will be taken
    free = shutil.disk_usage(folder).free
    if needed * 1.1 > free:
        raise DataError(
            f"{keys}: the synthetic dataset needs about {needed / 1e9:.2f} GB but only {free / 1e9:.2f} GB are "
            f"free under {folder}; lower them, free some space or choose another data.root"
        )


def write_into_place(root: str, write: Callable[[str], None], *, is_current: Callable[[], bool],
                     layout: GeneratedLayout) -> None:
    """``write(tmp)`` a dataset into a hidden temporary sibling of ``root``, then rename it to ``root``.

    An interrupted run never leaves a half-written ``root``; siblings that
    killed runs left behind are removed first (:func:`_remove_stale_work_folders`).
    An older dataset at ``root`` is replaced only when ``layout.root_problem(root)``
    finds nothing against it (checked again just before, since the dataset is
    written in between): a folder the generator did not write raises
    :class:`DataError` and is left as it was. When another process finished
    the same dataset first, theirs is kept if ``is_current()`` says it is the
    one wanted. Every file gets the fixed modification time
    :data:`GENERATED_MTIME_NS`: the data's identity (each file's size and
    mtime, :mod:`pipeline.data.identity`) is then a function of the
    parameters like the bytes are, so a deleted and regenerated dataset is the
    same data and finished results on it stay current.
    """
    parent, name = os.path.split(root)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_work_folders(parent, name, layout)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        ownership.mark(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is ordinary shared input
        write(tmp)
        for folder, _, names in os.walk(tmp):
            for file_name in names:
                os.utime(os.path.join(folder, file_name), ns=(GENERATED_MTIME_NS, GENERATED_MTIME_NS))
        old = None
        if os.path.lexists(root):
            problem = layout.root_problem(root)
            if problem:
                raise DataError(problem)
            old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
            ownership.mark(old)
            os.rename(root, os.path.join(old, name))
        try:
            os.rename(tmp, root)
        except OSError:
            if not is_current():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
