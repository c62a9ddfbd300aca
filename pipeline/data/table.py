"""A plain CSV listing audio files and labels, with the audio in a folder.

::

    train.csv                 <file_column>,<label_column>[,<group_column>], other columns ignored
    audio_dir/<file>          any format libsndfile reads
    test.csv (optional)       <file_column>  (labels, if present, are ignored)
    test_audio_dir/<file>     defaults to audio_dir

The task is inferred from the labels (rules in :mod:`pipeline.data.labels`):
all in {0, 1} (``0``, ``1``, ``0.0``, ``1.0``) is ``binary`` with one target
named after the label column; anything else is ``multiclass`` with one one-hot
float column per class, named by the class label as a string and sorted. Or
the classes are declared (``classes``) and any other label is refused. Missing
labels, a mostly-0/1 column with a few other values and a number spelled two
ways are refused with their rows. Ids are the file-column values, kept
verbatim, so they must be unique over train and test together; a file must
lie inside its audio folder (:mod:`pipeline.data.checks`).
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import numpy as np
import pandas as pd

from pipeline import io
from pipeline.data.base import RESERVED_COLUMNS, RESERVED_PREFIXES, Dataset, reserved_targets
from pipeline.data.checks import refuse_duplicate_columns, resolve_names
from pipeline.data.labels import read_labels
from pipeline.errors import DataError

logger = logging.getLogger(__name__)


def read_table(
    csv: str,
    audio_dir: str,
    file_column: str,
    label_column: str,
    group_column: Optional[str] = None,
    test_csv: Optional[str] = None,
    test_audio_dir: Optional[str] = None,
    classes: Optional[tuple] = None,
) -> Dataset:
    """Build the manifest of a CSV + audio-folder dataset.

    Parameters
    ----------
    csv : str
        Training table.
    audio_dir : str
        Folder the file-column values are relative to (absolute values are kept).
    file_column, label_column : str
        Column names in ``csv``.
    group_column : str, optional
        Column whose values keep related clips in the same fold (e.g. a
        recording site); stored as the manifest's ``group`` column (str).
    test_csv : str, optional
        Test table; only ``file_column`` is read. None: no test set.
    test_audio_dir : str, optional
        Folder for the test files; defaults to ``audio_dir``.
    classes : tuple of str, optional
        The declared class list (``data.classes``): any other label is
        refused; ``("0", "1")`` is a binary task. None: inferred.

    Returns
    -------
    Dataset
        ``submission="table"``; ``task="binary"`` with ``targets=(label_column,)``
        or ``task="multiclass"`` with the sorted class names as targets.
        Target columns are float (0/1 on train rows, NaN on test rows).

    Raises
    ------
    DataError
        Naming the file and column, for a missing file or folder, an empty or
        unparsable CSV, a missing column, an empty cell in a used column, fewer
        than two classes, a missing or unexpected label (with its rows), a
        target name that collides with a column the pipeline owns
        (:data:`pipeline.data.base.RESERVED_COLUMNS`, ``pred:...``,
        ``mask:...``), a file outside its audio folder and duplicated ids.
    """
    csv = _absolute(csv)
    audio_dir = _absolute(audio_dir)
    if not io.isdir(audio_dir):
        raise DataError(f"{audio_dir}: audio_dir not found")
    table = _read_csv(csv, [file_column, label_column] + ([group_column] if group_column else []))

    _clean_column(table, file_column, where=csv)  # refuses empty cells
    ids, paths = resolve_names(table[file_column], audio_dir, where=f"{csv}: column {file_column!r}")
    _check_unique(ids, where=f"{csv}: column {file_column!r}")

    task, targets, values = read_labels(table[label_column], where=f"{csv}: column {label_column!r}",
                                        name=label_column, classes=classes)
    clash = reserved_targets(targets)
    if clash:
        reserved = ", ".join(RESERVED_COLUMNS) + ", " + ", ".join(p + "<...>" for p in RESERVED_PREFIXES)
        if task == "binary":
            raise DataError(
                f"{csv}: label column {label_column!r} would become a target column that collides with "
                f"the reserved manifest columns ({reserved}); rename the column"
            )
        raise DataError(
            f"{csv}: column {label_column!r} has class name(s) {clash} that would collide with "
            f"the reserved manifest columns ({reserved}); rename those classes"
        )

    train = pd.DataFrame(
        {
            "id": ids.to_numpy(dtype=object),
            "path": paths,
            "split": "train",
            **values,
        }
    )
    if group_column:
        train["group"] = _clean_column(table, group_column, where=csv).to_numpy(dtype=object)

    parts = [train]
    if test_csv is not None:
        test_csv = _absolute(test_csv)
        test_dir = _absolute(test_audio_dir) if test_audio_dir is not None else audio_dir
        if not io.isdir(test_dir):
            raise DataError(f"{test_dir}: test_audio_dir not found")
        test_table = _read_csv(test_csv, [file_column])
        _clean_column(test_table, file_column, where=test_csv)
        test_ids, test_paths = resolve_names(test_table[file_column], test_dir,
                                             where=f"{test_csv}: column {file_column!r}")
        _check_unique(test_ids, where=f"{test_csv}: column {file_column!r}")
        both = sorted(set(ids) & set(test_ids))
        if both:
            raise DataError(
                f"{test_csv}: column {file_column!r} repeats ids of {csv}: {both[:5]}; "
                "ids must be unique over train and test"
            )
        test = pd.DataFrame(
            {
                "id": test_ids.to_numpy(dtype=object),
                "path": test_paths,
                "split": "test",
                **{t: np.nan for t in targets},
            }
        )
        if group_column:
            # Groups only steer folds; test rows carry an empty group so the column stays str.
            test["group"] = ""
        parts.append(test)

    manifest = pd.concat(parts, ignore_index=True)
    for t in targets:
        manifest[t] = manifest[t].astype(np.float64)
    logger.info(
        "%s: %s task, %d classes, %d train rows, %d test rows",
        csv, task, len(targets) if task == "multiclass" else 2, len(train), len(manifest) - len(train),
    )
    return Dataset(manifest=manifest, task=task, targets=targets, submission="table")


def _absolute(path: str) -> str:
    """A local path made absolute; a gs:// (tf.io.gfile) path as it is."""
    return path if io.is_remote(path) else os.path.abspath(path)


def _read_csv(path: str, columns: list) -> pd.DataFrame:
    """Read ``path`` as strings (labels '1' and 1 must mean the same) and check ``columns``."""
    if not io.isfile(path):
        raise DataError(f"{path}: csv not found")
    try:
        # Everything as str: ids like "001.wav" and class names like "07" must survive unchanged.
        table = io.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: csv is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be parsed as CSV ({exc})") from None
    refuse_duplicate_columns(path)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(
            f"{path}: no column {missing[0]!r}"
            + (f" (also missing: {missing[1:]})" if len(missing) > 1 else "")
            + f"; columns are {list(map(str, table.columns))}"
        )
    if table.empty:
        raise DataError(f"{path}: csv is empty (a header but no rows)")
    return table


def _clean_column(table: pd.DataFrame, column: str, *, where: str) -> pd.Series:
    values = table[column].astype(str).str.strip()
    empty = values == ""
    if empty.any():
        rows = [int(i) + 2 for i in np.flatnonzero(empty.to_numpy())[:5]]  # header is row 1
        raise DataError(f"{where}: column {column!r} is empty on row(s) {rows}")
    return values.reset_index(drop=True)


def _check_unique(ids: pd.Series, *, where: str) -> None:
    dup = ids[ids.duplicated()]
    if len(dup):
        raise DataError(f"{where} has duplicated ids: {sorted(set(dup))[:5]}; each file must appear once")
