"""The manifest contract every data source produces (see ARCHITECTURE.md).

A :class:`Dataset` is one pandas table plus what later stages need to interpret
it. Columns: ``id`` (str, unique over train and test), ``path`` (absolute audio
path), ``split`` (``train`` / ``test``), one float column per target in
``targets`` (NaN on test rows: test labels are never in the manifest), and
optionally ``group``. Later stages read the manifest, never the raw layout.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pandas as pd

from pipeline.errors import DataError

TASKS = ("binary", "multiclass", "multilabel")
# Column names the manifest, the fold tables and the prediction files own. A target (a label column or a
# class name) spelled like one of them would shadow it: a target named ``pred`` would be read back as the
# prediction and output/oof.csv would lose the labels. ``RESERVED_PREFIXES`` covers the per-class
# prediction columns (``pred:<class>``) and the rfcx masks (``mask:<species>``).
RESERVED_COLUMNS = ("id", "path", "split", "group", "fold", "pred", "boxes", "unknown")
RESERVED_PREFIXES = ("pred:", "mask:")


def reserved_targets(targets) -> list:
    """The target names among ``targets`` that collide with a reserved column (see RESERVED_COLUMNS)."""
    return sorted(str(t) for t in targets
                  if str(t) in RESERVED_COLUMNS or str(t).startswith(RESERVED_PREFIXES))
SUBMISSION_FORMATS = ("whale", "rfcx", "table")


@dataclass(frozen=True)
class Dataset:
    """A manifest plus its task description.

    Attributes
    ----------
    manifest : pd.DataFrame
        Columns ``id, path, split, <targets...>`` and optionally ``group``.
    task : str
        ``binary`` (one target column), ``multiclass`` (one-hot) or ``multilabel``.
    targets : tuple of str
        Target column names, in model-output order.
    submission : str
        Competition submission format: ``whale``, ``rfcx`` or ``table``.
    """

    manifest: pd.DataFrame
    task: str
    targets: tuple
    submission: str

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}. Received: task={self.task!r}")
        if self.submission not in SUBMISSION_FORMATS:
            raise ValueError(
                f"submission must be one of {SUBMISSION_FORMATS}. Received: submission={self.submission!r}"
            )
        clash = reserved_targets(self.targets)
        if clash:
            raise DataError(f"target name(s) {clash} collide with the columns the pipeline owns "
                            f"({', '.join(RESERVED_COLUMNS)}, {', '.join(p + '...' for p in RESERVED_PREFIXES)})")
        missing = {"id", "path", "split", *self.targets} - set(self.manifest.columns)
        if missing:
            raise ValueError(f"manifest lacks columns {sorted(missing)}")
        dup = self.manifest["id"][self.manifest["id"].duplicated()]
        if len(dup):
            raise DataError(f"ids must be unique over train and test; duplicated: {sorted(dup)[:5]}")
        bad_split = set(self.manifest["split"]) - {"train", "test"}
        if bad_split:
            raise ValueError(f"split must be 'train' or 'test'. Received: {sorted(bad_split)}")

    @property
    def train(self) -> pd.DataFrame:
        return self.manifest[self.manifest["split"] == "train"].reset_index(drop=True)

    @property
    def test(self) -> pd.DataFrame:
        return self.manifest[self.manifest["split"] == "test"].reset_index(drop=True)

    @property
    def has_groups(self) -> bool:
        return "group" in self.manifest.columns

    @functools.cached_property
    def identity(self):
        """The data's :class:`~pipeline.data.identity.DataIdentity` (ids, files' size and mtime, labels, groups).

        Computed on first use (one ``stat`` per audio file) and kept: the cache
        key, the fold table and the "finished" check must all see the same files.
        """
        from pipeline.data.identity import compute_identity

        return compute_identity(self.manifest, self.targets)
