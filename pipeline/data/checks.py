"""Checks on the audio paths a data source reads from a user's CSV.

* :func:`resolve_names` turns file names from a CSV into paths inside the
  audio folder. Names are kept verbatim (a file whose name starts or ends
  with a space is found under that name); only when the verbatim name does
  not exist but the name without its surrounding spaces does is the stripped
  name used. A name that leads outside the folder (``../x.wav``, an absolute
  path elsewhere) is refused with its rows: the pipeline would otherwise
  train on files the dataset does not contain. The test is lexical
  (``normpath``), so a symbolic link placed in the folder by the user still
  works.
* :func:`check_duplicate_files` finds one audio file listed under several
  ids: the same path, or the same content (sizes compared first; for files
  whose size collides, a digest of the size and the first and last 64 KB
  only, so the cost is one ``stat`` per file plus at most 128 KB read per
  same-size file, never the whole dataset; a regular file only, opened with
  ``O_NONBLOCK``), and logs a warning naming the ids:
  separately, and first, the files whose training rows disagree on the label
  (the model is taught both answers and the folds score it against itself),
  then those that only count twice (copies may sit in two folds, which makes
  the OOF score slightly optimistic). A warning, not an error: a few such
  rows in a large dataset should not cost a night's run, and the user can
  fix the rows named. Remote (``gs://``) files are compared by path only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import stat
from collections import defaultdict
from typing import List, Optional, Tuple

import numpy as np
import pandas as pd

from pipeline import io
from pipeline.data.labels import csv_rows
from pipeline.errors import DataError

logger = logging.getLogger(__name__)

_SHOWN = 5
_SAME = ("the same file, or files identical in size and in their first and last 64 KB (the middle is not "
         "compared)")


def _split_scheme(path: str) -> Tuple[str, str]:
    if io.is_remote(path):
        scheme, rest = path.split("://", 1)
        return scheme + "://", rest
    return "", path


def inside(folder: str, name: str) -> bool:
    """Whether ``folder/name`` (after resolving ``..`` lexically) stays inside ``folder``.

    A name with a scheme (``gs://...``) points at another filesystem: outside.
    """
    if "://" in name:
        return False
    scheme, base = _split_scheme(folder)
    joined = posixpath.join(base, name) if scheme else os.path.join(base, name)
    norm = posixpath.normpath(joined) if scheme else os.path.normpath(joined)
    base = posixpath.normpath(base) if scheme else os.path.normpath(base)
    sep = "/" if scheme else os.sep
    return norm.startswith(base.rstrip(sep) + sep) and norm != base


def refuse_duplicate_columns(path: str) -> None:
    """DataError naming the header names of the CSV ``path`` that appear more than once (pandas renames the second
    ``label`` to ``label.1`` and the first would be used without a word)."""
    header = [str(n).strip() for n in io.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
              .iloc[0].tolist()]
    twice = sorted({n for n in header if header.count(n) > 1})
    if twice:
        raise DataError(f"{path}: column(s) {twice} appear more than once in the header; expected each column once")


def refuse_outside(names: pd.Series, folder: str, *, where: str, suffix: str = "") -> None:
    """DataError naming the rows of ``names`` (+ ``suffix``) that lead outside ``folder``."""
    outside = np.array([not inside(folder, str(n) + suffix) for n in names], bool)
    if outside.any():
        shown = sorted({str(n) for n in names[outside]})[:_SHOWN]
        raise DataError(f"{where}: row(s) {csv_rows(outside)} name files outside {folder} ({shown}); "
                        f"every file must be inside that folder")


def resolve_names(names: pd.Series, folder: str, *, where: str) -> Tuple[pd.Series, List[str]]:
    """The ids and paths of file names read from a CSV column (see the module docstring).

    Parameters
    ----------
    names : pd.Series of str [n]
        The column's values as read (not stripped).
    folder : str
        The audio folder (absolute, or a remote path).
    where : str
        ``"<file>: column '<name>'"`` for the messages.

    Returns
    -------
    (ids, paths)
        ``ids`` [n]: the verbatim name, or the stripped one when only that
        file exists; ``paths`` [n]: ``folder/<id>``.
    """
    names = names.astype(str).reset_index(drop=True)
    refuse_outside(names, folder, where=where)
    ids = names.copy()
    padded = np.flatnonzero((names != names.str.strip()).to_numpy())
    unresolved = []
    for i in padded:
        name = names[i]
        if io.exists(io.join(folder, name)):
            continue
        if io.exists(io.join(folder, name.strip())):
            ids[i] = name.strip()
        else:
            unresolved.append(i)
    if unresolved:
        logger.warning("%s: row(s) %s name files with leading or trailing spaces (%s); neither that name nor the "
                       "name without the spaces exists in %s", where, [int(i) + 2 for i in unresolved[:_SHOWN]],
                       [names[i] for i in unresolved[:_SHOWN]], folder)
    return ids, [io.join(folder, n) for n in ids]


# Bytes compared at each end of two files of the same size (see check_duplicate_files).
_END_BYTES = 64 << 10


def _digest(path: str, size: int) -> Optional[str]:
    """A digest of a regular file's size and its first and last ``_END_BYTES`` bytes, or None.

    Not of the whole file: with fixed-length uncompressed clips every file's
    size collides with another's, and hashing them all read the whole dataset
    (29 GB for 5,000 60 s WAVs) on every load. Opened with ``O_NONBLOCK`` and
    fstat-checked, so a file swapped for a named pipe never blocks; None when
    it is not a regular file of ``size`` bytes any more.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return None
        h = hashlib.blake2b(str(size).encode() + b":", digest_size=16)
        if size <= 2 * _END_BYTES:
            h.update(os.pread(fd, size, 0))
        else:
            h.update(os.pread(fd, _END_BYTES, 0))
            h.update(os.pread(fd, _END_BYTES, size - _END_BYTES))
        return h.hexdigest()
    finally:
        os.close(fd)


def check_duplicate_files(manifest: pd.DataFrame, targets) -> None:
    """Warn (naming the ids) about one audio file listed under several ids, conflicting labels first.

    Parameters
    ----------
    manifest : pd.DataFrame
        ``id, path, split, <targets>`` (see :class:`pipeline.data.base.Dataset`).
    targets : sequence of str
        Target columns compared between the rows of one file.
    """
    by_key = defaultdict(list)  # ("path", realpath) or ("content", digest) -> row positions
    same_size = defaultdict(list)
    paths = manifest["path"].astype(str).tolist()
    for pos, path in enumerate(paths):
        if io.is_remote(path):
            by_key[("path", path)].append(pos)
            continue
        real = os.path.realpath(path)
        by_key[("path", real)].append(pos)
        try:
            st = os.stat(real)
        except OSError:
            continue  # missing: the decoder reports it
        if st.st_size > 0 and stat.S_ISREG(st.st_mode):  # 0-byte files are bad audio, reported as such
            same_size[st.st_size].append((pos, real))
    for size, members in same_size.items():
        rows_of = defaultdict(list)  # one read per distinct file, however many rows name it
        for pos, real in members:
            rows_of[real].append(pos)
        if len(rows_of) < 2:
            continue
        for real, rows in rows_of.items():
            try:
                digest = _digest(real, size)
            except OSError:
                continue
            if digest is None:
                continue
            by_key[("content", digest)].extend(rows)
    groups = {tuple(sorted(set(rows))) for rows in by_key.values() if len(set(rows)) > 1}
    if not groups:
        return
    ids = manifest["id"].astype(str).to_numpy()
    train = (manifest["split"] == "train").to_numpy()
    y = manifest[list(targets)].to_numpy(np.float64)
    conflicts, repeats = [], []
    for rows in sorted(groups):
        labelled = [r for r in rows if train[r]]
        values = {tuple(np.nan_to_num(y[r], nan=-1.0)) for r in labelled}
        (conflicts if len(values) > 1 else repeats).append([ids[r] for r in rows])
        if len(values) > 1:
            conflicts[-1] = f"{paths[rows[0]]} under ids {conflicts[-1]}"
    if conflicts:
        logger.warning("%d audio file(s) are listed under several training ids with DIFFERENT labels (%s): %s; the "
                       "model is trained on both answers - keep one row per file", len(conflicts), _SAME,
                       "; ".join(conflicts[:_SHOWN]))
    if not repeats:
        return
    logger.warning("%d audio file(s) are listed under several ids (%s), e.g. %s; each counts as a separate clip and "
                   "copies may fall into different folds (OOF slightly optimistic)", len(repeats), _SAME,
                   repeats[:_SHOWN])
