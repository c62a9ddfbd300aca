"""The identity of a dataset: what the feature cache, the fold table and a finished run were made from.

A manifest names its clips and paths, but the user may edit the data behind
those names: flip labels, replace an audio file under the same name, add or
remove rows. Results computed from the old data must then not be reused or
presented as current. The identity is cheap to compute (one ``stat`` per
audio file, no audio is read) and is kept in parts, because each stage
depends on a different part:

* ``audio``: per clip its id, split, path and the file's size and
  modification time. The feature cache depends on this (and on the settings),
  never on labels: flipping labels reuses the cache.
* ``labels``: per training clip the target values, ``mask:*`` columns and
  event boxes (when the manifest has them).
* ``groups``: per training clip its group.
* ``folds``: ids, labels and groups of the training clips in manifest order,
  which is everything a fold table depends on.

A finished experiment depends on all of them. The per-clip table
(:attr:`DataIdentity.clips`) is saved in the experiment folder so that a
rerun can say in words what changed (:func:`describe_changes`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from pipeline import io

# The parts a finished run must agree on (``folds`` is derived from labels and groups).
CHECKED_PARTS = ("audio", "labels", "groups")
# Per-clip table columns, as saved in an experiment folder.
CLIP_COLUMNS = ("id", "split", "path", "size", "mtime_ns", "labels", "group")
# size / mtime_ns of a file that does not exist (the decoder reports it as missing).
MISSING = -1


@dataclass(frozen=True)
class DataIdentity:
    """Per-clip identity table and one hash per part.

    Attributes
    ----------
    clips : pd.DataFrame
        Columns :data:`CLIP_COLUMNS`, one row per manifest row in manifest
        order: ``size`` (bytes) and ``mtime_ns`` (int64, -1 for a missing
        file), ``labels`` (a 16-hex-digit digest of the row's label values;
        the same for every test row) and ``group`` ('' without groups).
    parts : dict of str -> str
        ``audio``, ``labels``, ``groups`` and ``folds`` hashes (16 hex digits).
    """

    clips: pd.DataFrame
    parts: Dict[str, str]

    @property
    def audio(self) -> str:
        """What the feature cache's content depends on besides the settings."""
        return self.parts["audio"]

    @property
    def folds(self) -> str:
        """What a fold table depends on besides the fold settings."""
        return self.parts["folds"]

    def checked(self) -> Dict[str, str]:
        """The parts a finished experiment records and is compared on."""
        return {k: self.parts[k] for k in CHECKED_PARTS}


def label_columns(manifest: pd.DataFrame, targets) -> List[str]:
    """Columns holding label information: the targets, ``mask:*`` columns and event ``boxes``."""
    masks = [c for c in manifest.columns if str(c).startswith("mask:")]
    return [*targets, *masks, *(["boxes"] if "boxes" in manifest.columns else [])]


def stat_files(paths) -> Tuple[np.ndarray, np.ndarray]:
    """Size (bytes) and modification time (ns) of each path; -1 for both when a file is missing.

    Local paths use ``os.stat`` (one system call per file: 30,000 clips take
    a few hundred milliseconds); remote paths (gs://, ram://)
    ``tf.io.gfile.stat`` (``length``, ``mtime_nsec``), one request per file
    issued from :data:`REMOTE_THREADS` threads, since each is a round trip to
    the store. A directory or other non-file gets its own stat values: the
    decoder rejects it later, naming the file.
    """
    paths = [str(p) for p in paths]
    sizes = np.full(len(paths), MISSING, dtype=np.int64)
    mtimes = np.full(len(paths), MISSING, dtype=np.int64)
    remote = [i for i, p in enumerate(paths) if io.is_remote(p)]
    for i, path in enumerate(paths):
        if io.is_remote(path):
            continue
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            continue
        sizes[i], mtimes[i] = st.st_size, st.st_mtime_ns
    if remote:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(REMOTE_THREADS, len(remote))) as pool:
            for i, (size, mtime) in zip(remote, pool.map(_remote_stat, [paths[i] for i in remote])):
                sizes[i], mtimes[i] = size, mtime
    return sizes, mtimes


# Concurrent stat requests for files in a bucket.
REMOTE_THREADS = 32


def _remote_stat(path: str) -> Tuple[int, int]:
    import tensorflow as tf

    try:
        st = tf.io.gfile.stat(path)
    except tf.errors.OpError:
        return MISSING, MISSING
    return int(st.length), int(st.mtime_nsec)


def compute_identity(manifest: pd.DataFrame, targets) -> DataIdentity:
    """The identity of a manifest (``id, path, split, <targets>``, optional ``mask:*``, ``boxes``, ``group``).

    Raises nothing for missing files: they get size and mtime -1, so that a
    file appearing later changes the identity.
    """
    ids = manifest["id"].astype(str).to_numpy()
    sizes, mtimes = stat_files(manifest["path"].tolist())
    labels = _label_digests(manifest, label_columns(manifest, targets))
    groups = (manifest["group"].astype(str).to_numpy() if "group" in manifest.columns
              else np.full(len(manifest), "", dtype=object))
    clips = pd.DataFrame({
        "id": ids,
        "split": manifest["split"].astype(str).to_numpy(),
        "path": manifest["path"].astype(str).to_numpy(),
        "size": sizes,
        "mtime_ns": mtimes,
        "labels": labels,
        "group": groups,
    })
    train = clips[clips["split"] == "train"]
    header = "targets=" + "\x1f".join(map(str, label_columns(manifest, targets)))
    parts = {
        "audio": _digest(clips[["id", "split", "path", "size", "mtime_ns"]]),
        "labels": _digest(train[["id", "labels"]], header),
        # Without a group column there is nothing to change (added clips show in the other parts).
        "groups": (_digest(train[["id", "group"]], "groups") if "group" in manifest.columns
                   else _digest(train[[]], "no groups")),
    }
    parts["folds"] = _digest(train[["id", "labels", "group"]], header)
    return DataIdentity(clips=clips, parts=parts)


def _label_digests(manifest: pd.DataFrame, columns: List[str]) -> np.ndarray:
    """A 16-hex-digit digest per row of the label columns (numbers canonicalised: -0.0 is 0.0, one NaN).

    pandas' row hash (SipHash with a fixed key) is vectorised; were a pandas
    upgrade to change it, every run would count as on changed data once -
    the safe direction.
    """
    numeric = [c for c in columns if c != "boxes"]
    values = manifest[numeric].to_numpy(dtype=np.float64, na_value=np.nan) if numeric else np.zeros((len(manifest), 0))
    values = np.where(np.isnan(values), np.nan, values + 0.0)
    frame = pd.DataFrame(values, columns=[f"c{i}" for i in range(values.shape[1])])
    if "boxes" in manifest.columns:
        frame["boxes"] = manifest["boxes"].astype(str).to_numpy()
    if frame.shape[1] == 0:
        return np.full(len(manifest), "0" * 16, dtype=object)
    hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)
    return np.asarray([f"{h:016x}" for h in hashes.tolist()], dtype=object)


def _digest(table: pd.DataFrame, header: str = "") -> str:
    """sha256 (16 hex digits) of a table's rows in order, as tab-separated text."""
    h = hashlib.sha256(header.encode() + b"\n")
    columns = [table[c].astype(str).to_numpy(dtype=object) for c in table.columns]
    text = "\n".join("\t".join(row) for row in zip(*columns))
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- saving and comparing


def write_clips(path: str, identity: DataIdentity) -> None:
    """Save the per-clip table (a CSV; ~100 bytes per clip) so that a rerun can say what changed."""
    io.write_csv(path, identity.clips)


def read_clips(path: str) -> Optional[pd.DataFrame]:
    """A table saved by :func:`write_clips`, or None when it is missing or unreadable."""
    if not io.isfile(path):
        return None
    try:
        table = io.read_csv(path, dtype={"id": str, "split": str, "path": str, "labels": str, "group": str},
                            keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    if list(table.columns) != list(CLIP_COLUMNS):
        return None
    # An edited or truncated table (a cut last row, a size that is not a number) is "not recorded", never a crash.
    for column in ("size", "mtime_ns"):
        values = pd.to_numeric(table[column], errors="coerce")
        if values.isna().any() or not np.isfinite(values.to_numpy(dtype=float)).all():
            return None
        if not (values == values.round()).all():
            return None
        table[column] = values.astype(np.int64)
    return table


def describe_changes(recorded: Optional[dict], current: DataIdentity, old_clips: Optional[pd.DataFrame] = None,
                     *, examples: int = 3) -> str:
    """What differs between the data a run used and the current data, in words; '' when nothing does.

    Parameters
    ----------
    recorded : dict or None
        The parts a run recorded (:meth:`DataIdentity.checked`); None when the
        run recorded none (an older version of the pipeline).
    current : DataIdentity
    old_clips : pd.DataFrame, optional
        The run's per-clip table (:func:`read_clips`); with it the message
        counts and names the changed clips, without it it names the parts.

    Returns
    -------
    str
        e.g. ``12 labels changed, 1 audio file changed (train/x.aiff), 1 clip added (train/new.aiff)``.
    """
    if not recorded or not isinstance(recorded, dict):  # missing, or status.json edited into something else
        return "the earlier run did not record which data it used"
    differing = [k for k in CHECKED_PARTS if recorded.get(k) != current.parts[k]]
    if not differing:
        return ""
    if old_clips is None:
        words = {"audio": "audio files or clips", "labels": "labels", "groups": "groups"}
        return " and ".join(words[k] for k in differing) + " changed"
    return _clip_changes(old_clips, current.clips, examples) or (" and ".join(differing) + " changed")


def _clip_changes(old: pd.DataFrame, new: pd.DataFrame, examples: int) -> str:
    old = old.drop_duplicates("id").set_index("id")
    new = new.drop_duplicates("id").set_index("id")
    added = [i for i in new.index if i not in old.index]
    removed = [i for i in old.index if i not in new.index]
    both = new.index[new.index.isin(old.index)]
    o, n = old.loc[both], new.loc[both]
    moved = both[(o["split"].to_numpy() != n["split"].to_numpy())]
    audio = both[(o["path"].to_numpy() != n["path"].to_numpy())
                 | (o["size"].astype(np.int64).to_numpy() != n["size"].astype(np.int64).to_numpy())
                 | (o["mtime_ns"].astype(np.int64).to_numpy() != n["mtime_ns"].astype(np.int64).to_numpy())]
    train = (n["split"] == "train").to_numpy()
    labels = both[train & (o["labels"].astype(str).to_numpy() != n["labels"].astype(str).to_numpy())]
    groups = both[train & (o["group"].astype(str).to_numpy() != n["group"].astype(str).to_numpy())]

    def name(table, clip_id):
        path = str(table.loc[clip_id, "path"])
        return f"{os.path.basename(os.path.dirname(path))}/{os.path.basename(path)}"

    def phrase(ids, singular, plural, table=None):
        if not len(ids):
            return None
        text = f"{len(ids)} {singular if len(ids) == 1 else plural}"
        if table is not None:
            shown = ", ".join(name(table, i) for i in list(ids)[:examples])
            text += f" ({shown}{', ...' if len(ids) > examples else ''})"
        return text

    parts = [
        phrase(labels, "label changed", "labels changed"),
        phrase(groups, "group changed", "groups changed"),
        phrase(audio, "audio file changed", "audio files changed", new),
        phrase(moved, "clip moved between train and test", "clips moved between train and test", new),
        phrase(added, "clip added", "clips added", new),
        phrase(removed, "clip removed", "clips removed", old),
    ]
    text = ", ".join(p for p in parts if p)
    if not text and not old.index.equals(new.index):
        text = "the clips' order changed"
    return text
