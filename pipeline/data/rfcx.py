"""Kaggle Rainforest Connection (rfcx) layout: multi-label species detection on long recordings.

::

    ROOT/train_tp.csv   recording_id,species_id,songtype_id,t_min,f_min,t_max,f_max   (true positives)
    ROOT/train_fp.csv   same columns                                                  (false positives)
    ROOT/train/<recording_id>.flac
    ROOT/test/<recording_id>.flac

A tp row says species ``species_id`` calls in the box [t_min, t_max] s x
[f_min, f_max] Hz; an fp row says a detector fired there but the species is not
calling. Per training recording the manifest holds:

* targets ``s0..s23``: 1 for every species with a tp box, else 0 (the
  recording-level labels the competition metric ranks);
* masks ``mask:s0..mask:s23``: 1 where the label is known. A tp species is a
  known positive; an fp species (without a tp box) is a known negative; every
  other species is unknown (``unknown: mask``, mask 0) or counted as absent
  (``unknown: negative``, mask 1);
* ``boxes``: the recording's boxes as JSON, a list of
  ``[species, t_min, t_max, f_min, f_max, is_tp]`` (seconds, Hz, 1/0), from
  which :mod:`pipeline.crops` cuts framewise targets;
* ``group``: the recording id (folds never split a recording);
* ``unknown``: the ``unknown`` setting, so later stages know how to read
  frames outside the boxes.

The reader only builds the manifest; it never decodes audio. A recording named
in the CSVs but absent from ``train/`` stays in the manifest so that the
decoder reports it with the other bad files.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional, Tuple

import numpy as np
import pandas as pd

from pipeline import io
from pipeline.data.base import Dataset
from pipeline.data.checks import refuse_duplicate_columns, refuse_outside
from pipeline.errors import DataError

logger = logging.getLogger(__name__)

N_SPECIES = 24
TARGETS = tuple(f"s{k}" for k in range(N_SPECIES))
MASKS = tuple(f"mask:{t}" for t in TARGETS)
BOX_COLUMNS = ("recording_id", "species_id", "songtype_id", "t_min", "f_min", "t_max", "f_max")
AUDIO_SUFFIX = ".flac"
UNKNOWN = ("mask", "negative")


def read_kaggle_rfcx(root: str, *, unknown: str = "mask") -> Dataset:
    """Build the manifest of an rfcx dataset (see the module docstring for the columns).

    Parameters
    ----------
    root : str
        Folder holding ``train_tp.csv``, ``train_fp.csv``, ``train/`` and (optionally) ``test/``.
    unknown : {"mask", "negative"}
        How species without a box in a recording are read.

    Returns
    -------
    Dataset
        ``task="multilabel"``, ``targets=("s0", ..., "s23")``, ``submission="rfcx"``.
        Train rows are sorted by recording id, test rows by file name.

    Raises
    ------
    DataError
        When a CSV or ``train/`` is missing, a CSV lacks a column, holds a
        non-numeric value, a species outside 0..23, a box with t_min > t_max or
        f_min > f_max, negative times, a box ending after its recording or
        above its Nyquist frequency, or a recording id leading outside
        ``train/`` (rows named), or when train and test share an id.
    """
    if unknown not in UNKNOWN:
        raise ValueError(f"unknown must be one of {UNKNOWN}. Received: unknown={unknown!r}")
    root = os.path.abspath(root)
    train_dir = os.path.join(root, "train")
    test_dir = os.path.join(root, "test")
    tp = _read_boxes(os.path.join(root, "train_tp.csv"))
    fp = _read_boxes(os.path.join(root, "train_fp.csv"))
    if not io.isdir(train_dir):
        raise DataError(f"{train_dir}: train/ folder not found (kaggle_rfcx expects the audio in ROOT/train/)")
    for table, path in ((tp, os.path.join(root, "train_tp.csv")), (fp, os.path.join(root, "train_fp.csv"))):
        refuse_outside(table["recording_id"], train_dir, where=f"{path}: column 'recording_id'", suffix=AUDIO_SUFFIX)
    train_files = _flac_names(train_dir)  # listed once: a bucket of thousands of recordings is slow to list
    _check_boxes_inside_recordings({"train_tp.csv": tp, "train_fp.csv": fp}, root, train_dir, train_files)
    # The same box marked present (tp) and absent (fp) would give its frames both targets: tp wins, with a word.
    same = ["recording_id", "species_id", "t_min", "t_max", "f_min", "f_max"]
    both = fp.reset_index().merge(tp[same].drop_duplicates(), on=same)["index"]
    if len(both):
        logger.warning("%s: %d box(es) of train_fp.csv (row(s) %s) are also in train_tp.csv; kept as true positives "
                       "only", root, len(both), [int(i) + 2 for i in both[:5]])
        fp = fp.drop(index=both)
    tp["is_tp"], fp["is_tp"] = 1, 0
    boxes = pd.concat([tp, fp], ignore_index=True)
    if boxes.empty:
        raise DataError(f"{root}: train_tp.csv and train_fp.csv hold no rows")

    ids = sorted(set(boxes["recording_id"]))
    y = np.zeros((len(ids), N_SPECIES), np.float64)
    known = np.zeros((len(ids), N_SPECIES), bool) if unknown == "mask" else np.ones((len(ids), N_SPECIES), bool)
    row_of = {r: i for i, r in enumerate(ids)}
    box_lists = {r: [] for r in ids}
    for rec in boxes.itertuples(index=False):
        i, s = row_of[rec.recording_id], int(rec.species_id)
        known[i, s] = True
        if rec.is_tp:
            y[i, s] = 1.0
        box_lists[rec.recording_id].append(
            [s, float(rec.t_min), float(rec.t_max), float(rec.f_min), float(rec.f_max), int(rec.is_tp)])
    train = pd.DataFrame({
        "id": pd.Series(ids, dtype=object),
        "path": _recording_paths(train_dir, ids, train_files),
        "split": "train",
    })
    n_missing = int(sum(not io.exists(p) for p in train["path"]))
    if n_missing:
        logger.warning("%s: %d of %d recordings named in the CSVs are not in train/", root, n_missing, len(train))
    unlisted = set(train_files) - set(ids)
    if unlisted:
        logger.warning("%s: %d recordings in train/ have no tp or fp row and are not used, e.g. %s",
                       root, len(unlisted), sorted(unlisted)[:3])

    if io.isdir(test_dir):
        test_files = _flac_names(test_dir)
        test_ids = sorted(test_files)
        if not test_ids:
            logger.warning("%s: test/ holds no .flac files; no test set", root)
    else:
        logger.warning("%s: no test/ folder; no test set", root)
        test_ids, test_files = [], {}
    clash = sorted(set(ids) & set(test_ids))
    if clash:
        raise DataError(f"{root}: recording ids appear in both the training CSVs and test/: {clash[:5]}")
    test = pd.DataFrame({
        "id": pd.Series(test_ids, dtype=object),
        "path": pd.Series(_recording_paths(test_dir, test_ids, test_files), dtype=object),
        "split": "test",
    })

    train = pd.concat([train, pd.DataFrame(y, columns=list(TARGETS)),
                       pd.DataFrame(known.astype(np.float64), columns=list(MASKS))], axis=1)
    train["boxes"] = [json.dumps(box_lists[r]) for r in ids]
    for col in (*TARGETS, *MASKS):
        test[col] = np.nan
    test["boxes"] = "[]"
    manifest = pd.concat([train, test], ignore_index=True)
    manifest["group"] = manifest["id"]
    manifest["unknown"] = unknown
    logger.info("%s: %d train recordings (%d tp, %d fp boxes; unknown labels: %s), %d test recordings",
                root, len(train), len(tp), len(fp), unknown, len(test))
    return Dataset(manifest=manifest, task="multilabel", targets=TARGETS, submission="rfcx")


def has_boxes(dataset: Dataset) -> bool:
    """Whether ``dataset`` carries rfcx event boxes (long recordings, crops and windows apply)."""
    return "boxes" in dataset.manifest.columns


def boxes_of(manifest: pd.DataFrame) -> list:
    """Per row of ``manifest``: an array [n_boxes, 6] of (species, t_min, t_max, f_min, f_max, is_tp)."""
    out = []
    for text in manifest["boxes"]:
        arr = np.asarray(json.loads(text) if isinstance(text, str) else [], np.float64)
        out.append(arr.reshape(-1, 6))
    return out


def frame_defaults(manifest: pd.DataFrame) -> np.ndarray:
    """Framewise target of each species outside every box of a recording: [n, 24], 0.0 or NaN.

    A species known to be absent from the recording (mask 1, target 0: an fp box
    without a tp box, or with ``unknown: negative`` any species without a tp box)
    is 0 on every frame. A tp species is NaN (unknown) outside its boxes in both
    modes: the recording holds it, and its unannotated calls may be anywhere. With
    ``unknown: mask`` a species without any box is NaN too.
    """
    y = manifest[list(TARGETS)].to_numpy(np.float64)
    known = manifest[list(MASKS)].to_numpy(np.float64) > 0.5
    zero = known & (y < 0.5)
    return np.where(zero, 0.0, np.nan).astype(np.float32)


def _check_boxes_inside_recordings(tables: dict, root: str, train_dir: str, listed: dict) -> None:
    """DataError naming the CSV rows whose box ends after its recording or above its Nyquist frequency.

    Only the first bytes of each recording are read, and parsed here
    (:func:`recording_length`: FLAC STREAMINFO, WAV, AIFF), never decoded by a
    C library in the queue's process; recordings that are missing, remote,
    not regular files or in a format not parsed here are left unchecked: the
    decoder judges them and reports the bad ones.
    """
    if io.is_remote(train_dir):
        return
    info = {}
    recs = sorted(set().union(*(set(t["recording_id"]) for t in tables.values())))
    for rec, path in zip(recs, _recording_paths(train_dir, recs, listed)):
        length = recording_length(path)
        if length is not None:
            frames, rate = length
            info[rec] = (frames / rate, rate)
    for name, table in tables.items():
        seconds = table["recording_id"].map(lambda r: info.get(r, (np.inf, np.inf))[0])
        rate = table["recording_id"].map(lambda r: info.get(r, (np.inf, np.inf))[1])
        late = (table["t_max"] > seconds + 1.0 / rate).to_numpy()  # one sample of rounding allowed
        if late.any():
            rows = _rows(pd.Series(late))
            raise DataError(f"{os.path.join(root, name)}: row(s) {rows} hold boxes ending after their recording "
                            f"(t_max {table['t_max'][late].head(3).tolist()} s, recordings of "
                            f"{seconds[late].head(3).round(3).tolist()} s)")
        high = (table["f_max"] > rate / 2).to_numpy()
        if high.any():
            rows = _rows(pd.Series(high))
            raise DataError(f"{os.path.join(root, name)}: row(s) {rows} hold boxes above their recording's highest "
                            f"frequency (f_max {table['f_max'][high].head(3).tolist()} Hz, sample rate / 2 = "
                            f"{(rate[high] / 2).head(3).tolist()} Hz)")


# Bytes read from the start of a recording to find its header (an ID3v2 tag before a FLAC's is skipped).
_HEADER_BYTES = 4096


def recording_length(path: str) -> Optional[Tuple[int, int]]:
    """``(frames, sample rate)`` from a local audio file's header, or None when it cannot be told.

    Pure Python over the first bytes (FLAC STREAMINFO; WAV and AIFF through
    :func:`pipeline.data.audio.header_of`): no decoder runs in the queue's
    process, so a hostile header cannot crash or hang it. Only regular files
    are opened (stat, then an ``O_NONBLOCK`` open whose descriptor is
    fstat-checked: a named pipe never blocks). None for a missing or
    unreadable file, another format, or a header without a frame count.
    """
    import stat

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        head = os.pread(fd, _HEADER_BYTES, 0)
        if head[:4] == b"fLaC" or head[:3] == b"ID3":
            length = _flac_length(fd, head)
        else:
            from pipeline.data.audio import header_of

            header = header_of(lambda pos, n: os.pread(fd, n, pos), info.st_size)
            length = (header.frames, header.rate) if header.frames and header.rate else None
    except Exception:  # noqa: BLE001 - a header not understood only skips this courtesy check
        return None
    finally:
        os.close(fd)
    if length is None or not (length[0] > 0 and length[1] > 0):
        return None
    return int(length[0]), int(length[1])


def _flac_length(fd: int, head: bytes) -> Optional[Tuple[int, int]]:
    """``(total samples, sample rate)`` of a FLAC's STREAMINFO (None when unknown or not FLAC)."""
    start = 0
    if head[:3] == b"ID3" and len(head) >= 10:  # ID3v2: 10-byte header, size as 4 x 7 bits
        size = 0
        for byte in head[6:10]:
            size = (size << 7) | (byte & 0x7F)
        start = 10 + size + (10 if head[5] & 0x10 else 0)  # + footer
        head = os.pread(fd, 42, start)
    else:
        head = head[:42]
    # "fLaC", then the first metadata block: 1 byte (last flag, type 0 = STREAMINFO), 3 bytes length (34).
    if len(head) < 42 or head[:4] != b"fLaC" or head[4] & 0x7F != 0 or int.from_bytes(head[5:8], "big") < 34:
        return None
    # STREAMINFO from byte 8: block sizes (2 + 2), frame sizes (3 + 3), then 20 bits sample rate,
    # 3 bits channels - 1, 5 bits bits per sample - 1, 36 bits total samples (0: unknown).
    bits = int.from_bytes(head[18:26], "big")
    rate = bits >> 44
    total = bits & ((1 << 36) - 1)
    return (total, rate) if total and rate else None


def _flac_names(folder: str) -> dict:
    """``{recording id: file name}`` of the FLAC files in ``folder``, the suffix in any case (``.FLAC`` too; the
    exact ``.flac`` when both are there)."""
    names = sorted((not n.endswith(AUDIO_SUFFIX), n) for n in io.listdir(folder) if n.lower().endswith(AUDIO_SUFFIX))
    found: dict = {}
    for _, n in names:
        found.setdefault(n[: -len(AUDIO_SUFFIX)], n)
    return found


def _recording_paths(folder: str, ids, listed: dict) -> list:
    """The audio file of each recording id in ``folder``: its name in ``listed`` (:func:`_flac_names`, any suffix
    case), else ``<id>.flac`` (missing: the decoder reports it)."""
    return [os.path.join(folder, listed.get(r, r + AUDIO_SUFFIX)) for r in ids]


def _read_boxes(path: str) -> pd.DataFrame:
    name = os.path.basename(path)
    if not io.isfile(path):
        raise DataError(f"{path}: {name} not found (kaggle_rfcx expects ROOT/{name} with {','.join(BOX_COLUMNS)})")
    try:
        table = io.read_csv(path, dtype={"recording_id": str}, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty; expected columns {','.join(BOX_COLUMNS)}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be parsed as CSV ({exc})") from None
    refuse_duplicate_columns(path)
    missing = [c for c in BOX_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; expected {','.join(BOX_COLUMNS)}, "
                        f"found {list(map(str, table.columns))}")
    table = table[list(BOX_COLUMNS)].copy()
    if table["recording_id"].isna().any():
        raise DataError(f"{path}: column 'recording_id' is empty on row(s) {_rows(table['recording_id'].isna())}")
    table["recording_id"] = table["recording_id"].astype(str).str.strip()
    for col in BOX_COLUMNS[1:]:
        values = pd.to_numeric(table[col], errors="coerce")
        bad = values.isna() | ~np.isfinite(values.astype(float))
        if bad.any():
            raise DataError(f"{path}: column {col!r} needs finite numbers; row(s) {_rows(bad)} hold "
                            f"{table.loc[bad, col].head(3).tolist()}")
        table[col] = values.astype(float)
    species = table["species_id"]
    bad = (species < 0) | (species >= N_SPECIES) | (species != species.round())
    if bad.any():
        raise DataError(f"{path}: species_id must be an integer in 0..{N_SPECIES - 1}; row(s) {_rows(bad)} hold "
                        f"{species[bad].head(3).tolist()}")
    bad = (table["t_min"] < 0) | (table["t_min"] > table["t_max"])
    if bad.any():
        raise DataError(f"{path}: boxes need 0 <= t_min <= t_max; row(s) {_rows(bad)} do not")
    bad = (table["f_min"] < 0) | (table["f_min"] > table["f_max"])
    if bad.any():
        raise DataError(f"{path}: boxes need 0 <= f_min <= f_max; row(s) {_rows(bad)} do not")
    return table


def _rows(mask: pd.Series, limit: int = 5) -> list:
    # CSV line numbers: the header is line 1.
    return [int(i) + 2 for i in np.flatnonzero(mask.to_numpy())[:limit]]
