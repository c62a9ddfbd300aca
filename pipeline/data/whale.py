"""Kaggle right-whale layout (Marinexplore / Cornell "Whale Detection Challenge").

::

    ROOT/train.csv          clip_name,label        (label 0 or 1)
    ROOT/train/<clip_name>  16-bit big-endian AIFF, 2 kHz, 2 s
    ROOT/test/*.aiff        unlabelled; the file name is the clip id

The reader only builds the manifest; it never decodes audio. A file named in
train.csv but absent on disk stays in the manifest so that the decoder
(:func:`pipeline.data.audio.load_clip`) reports it with the other bad files.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from pipeline import io
from pipeline.data.base import Dataset
from pipeline.data.checks import refuse_duplicate_columns, resolve_names
from pipeline.data.labels import binary_labels
from pipeline.errors import DataError

logger = logging.getLogger(__name__)

TRAIN_CSV = "train.csv"
TRAIN_COLUMNS = ("clip_name", "label")
# Kaggle's test files end in .aiff; .aif is the same format under its other common suffix.
AUDIO_SUFFIXES = (".aiff", ".aif")


def read_kaggle_whale(root: str) -> Dataset:
    """Build the manifest of a Kaggle whale dataset.

    Parameters
    ----------
    root : str
        Folder holding ``train.csv``, ``train/`` and (optionally) ``test/``.

    Returns
    -------
    Dataset
        ``task="binary"``, ``targets=("label",)``, ``submission="whale"``.
        Manifest columns ``id`` (the clip file name), ``path`` (absolute),
        ``split`` and ``label`` (float 0/1 on train rows, NaN on test rows).
        Train rows keep the order of train.csv; test rows are sorted by name.

    Raises
    ------
    DataError
        When ``train.csv`` is missing, unparsable, lacks ``clip_name`` or
        ``label``, has a missing label or one other than ``0``, ``1``,
        ``0.0``, ``1.0`` (:func:`pipeline.data.labels.binary_labels`),
        duplicated clip names or a clip name leading outside ``train/``
        (rows named), or when the ``train/`` folder is missing. A missing ``test/`` folder only logs
        a warning (no test set).
    """
    root = root if io.is_remote(root) else os.path.abspath(root)  # gs://, ram://: through tf.io.gfile
    csv_path = os.path.join(root, TRAIN_CSV)
    train_dir = os.path.join(root, "train")
    test_dir = os.path.join(root, "test")
    if not io.isfile(csv_path):
        raise DataError(f"{csv_path}: train.csv not found (kaggle_whale expects ROOT/train.csv with clip_name,label)")
    if not io.isdir(train_dir):
        raise DataError(f"{train_dir}: train/ folder not found (kaggle_whale expects the audio in ROOT/train/)")

    try:
        # Labels as text too: "01" or "1e0" must be refused, not parsed into 1.
        table = io.read_csv(csv_path, dtype={"clip_name": str, "label": str}, keep_default_na=False,
                            na_values=[""])
    except pd.errors.EmptyDataError:
        raise DataError(f"{csv_path}: file is empty; expected columns {','.join(TRAIN_COLUMNS)}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv_path}: cannot be parsed as CSV ({exc})") from None
    refuse_duplicate_columns(csv_path)
    missing = [c for c in TRAIN_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(
            f"{csv_path}: missing column(s) {missing}; expected {','.join(TRAIN_COLUMNS)}, "
            f"found {list(map(str, table.columns))}"
        )
    if table.empty:
        raise DataError(f"{csv_path}: has a header but no rows")

    names = table["clip_name"]
    if names.isna().any():
        rows = _csv_rows(names.isna())
        raise DataError(f"{csv_path}: column 'clip_name' is empty on row(s) {rows}")
    # Verbatim: a clip whose name has surrounding spaces is found under that name (checks.resolve_names).
    names, paths = resolve_names(names, train_dir, where=f"{csv_path}: column 'clip_name'")
    dup = names[names.duplicated()]
    if len(dup):
        raise DataError(f"{csv_path}: column 'clip_name' has duplicates: {sorted(set(dup))[:5]}")

    labels = binary_labels(table["label"], where=f"{csv_path}: column 'label'")

    train = pd.DataFrame(
        {
            "id": names.to_numpy(dtype=object),
            "path": paths,
            "split": "train",
            "label": labels,
        }
    )
    if io.is_remote(train_dir):  # one listing instead of a request per clip
        listed = set(io.listdir(train_dir))
        n_missing = int(sum(n not in listed for n in names))
    else:
        n_missing = int(sum(not os.path.exists(p) for p in train["path"]))
    if n_missing:
        logger.warning("%s: %d of %d clips named in train.csv are not in train/", root, n_missing, len(train))

    if io.is_remote(test_dir) and io.isdir(test_dir):
        test_names = [n for n in io.listdir(test_dir) if n.lower().endswith(AUDIO_SUFFIXES)]
    elif os.path.isdir(test_dir):
        # Every entry named like audio, as listed (a dangling link too): the test set is the folder's listing, and
        # a clip that cannot be read is skipped with its reason, never silently left out of the submission.
        listed = os.listdir(test_dir)
        test_names = sorted(n for n in listed if n.lower().endswith(AUDIO_SUFFIXES))
        others = sorted(n for n in listed if not n.lower().endswith(AUDIO_SUFFIXES) and not n.startswith("."))
        if others:
            logger.warning("%s: test/ holds %d entries that are not %s files; they are not in the test set nor the "
                           "submission, e.g. %s", root, len(others), "/".join(AUDIO_SUFFIXES), others[:3])
        if not test_names:
            logger.warning("%s: test/ holds no .aiff files; no test set", root)
    else:
        logger.warning("%s: no test/ folder; no test set", root)
        test_names = []
    test = pd.DataFrame(
        {
            "id": pd.Series(test_names, dtype=object),
            "path": pd.Series([os.path.join(test_dir, n) for n in test_names], dtype=object),
            "split": "test",
            "label": np.nan,
        }
    )

    clash = sorted(set(train["id"]) & set(test["id"]))
    if clash:
        raise DataError(f"{root}: clip names appear in both train.csv and test/: {clash[:5]}")
    manifest = pd.concat([train, test], ignore_index=True)
    manifest["label"] = manifest["label"].astype(np.float64)
    logger.info("%s: %d train clips (%d positive), %d test clips", root, len(train), int(labels.sum()), len(test))
    return Dataset(manifest=manifest, task="binary", targets=("label",), submission="whale")


def _csv_rows(mask: pd.Series, limit: int = 5) -> list:
    """1-based data-row numbers as a spreadsheet shows them (header is row 1)."""
    return [int(i) + 2 for i in np.flatnonzero(mask.to_numpy())[:limit]]
