"""Atomic file writes: every output is written to a temporary name and renamed.

A reader (or a rerun after a kill) therefore sees either the old file or the
complete new one, never a partial file. ``os.replace`` is atomic on POSIX when
source and target are on the same filesystem, which holds because the
temporary file is created in the target's folder.

Paths with a scheme (``gs://bucket/...``, ``ram://...``, any filesystem
``tf.io.gfile`` knows) go through ``tf.io.gfile``: there an atomic write is a
write to a temporary name in the same folder, then
``tf.io.gfile.rename(overwrite=True)`` (a server-side copy + delete on GCS, so
readers still never see a partial file). Local paths never import TensorFlow
and keep using plain ``open`` / ``os`` calls (the feature workers rely on it).
The helpers below (``exists``, ``isdir``, ``makedirs``, ``rmtree``, ...) take
either kind of path.
"""

from __future__ import annotations

import hashlib
import io as _io
import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional

import pandas as pd


def is_remote(path: str) -> bool:
    """Whether ``path`` names a file on a tf.io.gfile filesystem with a scheme (``gs://``, ``ram://``, ...)."""
    return "://" in str(path) and not str(path).startswith("file://")


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def remote_problem(path: str) -> Optional[str]:
    """Why the remote ``path`` cannot be used (its filesystem is not available here, the bucket cannot be reached,
    no credentials), in one line; None when it can be read."""
    import tensorflow as tf

    try:
        _gfile().exists(path)
    except tf.errors.OpError as err:
        scheme = str(path).split("://", 1)[0]
        reason = str(err.message).strip().splitlines()[0] if str(err.message).strip() else type(err).__name__
        return f"cannot use {path} ({scheme}:// with TensorFlow's file systems here): {reason}"
    return None


def join(*parts: str) -> str:
    return os.path.join(*parts)


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isfile(path: str) -> bool:
    if is_remote(path):
        gfile = _gfile()
        return gfile.exists(path) and not gfile.isdir(path)
    return os.path.isfile(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def makedirs(path: str) -> None:
    """Create ``path`` and its parents; an existing folder is fine."""
    if is_remote(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def rmtree(path: str) -> None:
    """Delete a folder and everything in it; a missing folder is fine."""
    if is_remote(path):
        if _gfile().exists(path):
            _gfile().rmtree(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def remove(path: str) -> None:
    if is_remote(path):
        _gfile().remove(path)
    else:
        os.remove(path)


def listdir(path: str) -> List[str]:
    """Entry names of a folder (no trailing slashes)."""
    if is_remote(path):
        return sorted(n.rstrip("/") for n in _gfile().listdir(path))
    return sorted(os.listdir(path))


def replace(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst``, replacing ``dst`` (a file; for a folder only when ``dst`` does not exist)."""
    if is_remote(src) or is_remote(dst):
        _gfile().rename(src, dst, overwrite=True)
    else:
        os.replace(src, dst)


def open_file(path: str, mode: str = "rb"):
    """A file object: ``open`` for local paths, ``tf.io.gfile.GFile`` otherwise."""
    if is_remote(path):
        if "r" in mode and not _gfile().exists(path):  # as open() does, so callers catch OSError
            raise FileNotFoundError(f"no such file: {path}")
        return _gfile().GFile(path, mode)
    return open(path, mode) if "b" in mode else open(path, mode, encoding="utf-8")


def read_bytes(path: str) -> bytes:
    with open_file(path, "rb") as f:
        return f.read()


def sha256(path: str) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open_file(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_tree_up(local_folder: str, remote_folder: str, *, last: Optional[str] = None) -> None:
    """Copy a local folder's files to ``remote_folder`` (flat or nested); the file named ``last`` goes last.

    The cache uses this with ``last="manifest.json"``: a remote cache is only
    complete once its manifest exists, as on local disk.
    """
    gfile = _gfile()
    deferred = []
    for root, _, names in os.walk(local_folder):
        rel = os.path.relpath(root, local_folder)
        target = remote_folder if rel == "." else join(remote_folder, rel)
        gfile.makedirs(target)
        for name in sorted(names):
            pair = (os.path.join(root, name), join(target, name))
            if rel == "." and name == last:
                deferred.append(pair)
            else:
                if gfile.exists(pair[1]):  # ram:// appends on an overwriting copy
                    gfile.remove(pair[1])
                gfile.copy(*pair)
    for src, dst in deferred:
        tmp = join(os.path.dirname(dst), f".{os.path.basename(dst)}.{uuid.uuid4().hex}.tmp")
        gfile.copy(src, tmp, overwrite=True)
        gfile.rename(tmp, dst, overwrite=True)


def _suffixes(path: str) -> str:
    """Every suffix of the file name (``.weights.h5``): Keras picks the format by it."""
    name = os.path.basename(path)
    return name[name.index("."):] if "." in name.lstrip(".") else ".tmp"


@contextmanager
def local_copy(path: str) -> Iterator[str]:
    """Yield a local path holding ``path``'s content (``path`` itself when it is local)."""
    if not is_remote(path):
        yield path
        return
    fd, tmp = tempfile.mkstemp(suffix=_suffixes(path))
    os.close(fd)
    os.remove(tmp)
    try:
        _gfile().copy(path, tmp)
        yield tmp
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success, delete it on error.

    For a remote ``path`` the temporary path is local; on success it is
    uploaded to a temporary name beside ``path`` and renamed over it.
    """
    if is_remote(path):
        with _remote_atomic_path(path) as tmp:
            yield tmp
        return
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates 0600 files; outputs get the usual permissions (0666 less the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def _remote_atomic_path(path: str) -> Iterator[str]:
    gfile = _gfile()
    fd, local = tempfile.mkstemp(suffix=_suffixes(path))
    os.close(fd)
    remote_tmp = join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        yield local
        gfile.makedirs(os.path.dirname(path))
        gfile.copy(local, remote_tmp, overwrite=True)
        gfile.rename(remote_tmp, path, overwrite=True)
    finally:
        if os.path.exists(local):
            os.remove(local)
        if gfile.exists(remote_tmp):
            gfile.remove(remote_tmp)


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str) -> Any:
    with open_file(path, "r") as f:
        return json.load(f)


def read_csv(path: str, **kwargs) -> pd.DataFrame:
    """``pd.read_csv`` of a local or remote (tf.io.gfile) path.

    Floats are parsed with ``float_precision="round_trip"``: pandas' default
    parser is off by one unit in the last place for about a fifth of the
    17-digit values :func:`write_csv` writes, and predictions re-read on
    resume must equal the ones kept in memory by an uninterrupted run.
    """
    kwargs.setdefault("float_precision", "round_trip")
    if is_remote(path):
        return pd.read_csv(_io.BytesIO(read_bytes(path)), **kwargs)
    return pd.read_csv(path, **kwargs)


def write_csv(path: str, frame: pd.DataFrame, float_format: Optional[str] = None) -> None:
    """Write ``frame`` atomically. Floats are written exactly by default (shortest repr that
    round-trips through :func:`read_csv`), so a file re-read on resume gives the same bits."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format=float_format)


def _json_default(obj):
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def log_handler(path: str):
    """A logging handler appending to ``path``; for a remote path, a local file uploaded every 10 s and on close."""
    import logging

    if not is_remote(path):
        return logging.FileHandler(path)
    return _UploadingLogHandler(path)


class _UploadingLogHandler:
    """Logs to a local copy of a remote log file (appending to what was there) and uploads it periodically."""

    def __new__(cls, path: str):
        import logging
        import time

        fd, local = tempfile.mkstemp(suffix=".log")
        os.close(fd)
        if exists(path):
            os.remove(local)
            _gfile().copy(path, local)

        class Handler(logging.FileHandler):
            def emit(self, record):
                super().emit(record)
                if time.time() - self._uploaded > 10:
                    self.upload()

            def upload(self):
                self.flush()
                self._uploaded = time.time()
                with atomic_path(path) as tmp:
                    shutil.copyfile(local, tmp)

            def close(self):
                try:
                    if self.stream is not None:
                        self.upload()
                finally:
                    super().close()
                    if os.path.exists(local):
                        os.remove(local)

        handler = Handler(local)
        handler._uploaded = 0.0
        return handler


def glob(pattern: str) -> List[str]:
    """Paths matching a glob pattern, sorted (tf.io.gfile.glob for remote patterns)."""
    if is_remote(pattern):
        return sorted(_gfile().glob(pattern))
    import glob as _glob

    return sorted(_glob.glob(pattern))
