"""One fold table per (dataset, fold settings), shared by every experiment on that data.

``output/folds/<key>.csv`` holds ``id, fold`` for every training clip of the
manifest (also clips whose audio later turns out bad, so that experiments with
different feature settings still agree on folds). Stratified on the label;
stratified *and* grouped when the manifest has a ``group`` column, so a group
never straddles two folds.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from pipeline import io
from pipeline.config import Experiment, stable_hash
from pipeline.data.base import Dataset

log = logging.getLogger(__name__)


class FoldError(ValueError):
    """The data cannot be split as configured."""


def fold_key(exp: Experiment) -> str:
    import dataclasses

    return stable_hash({"data": exp.data.to_dict(), "folds": dataclasses.asdict(exp.folds)})


def strata(dataset: Dataset, train: pd.DataFrame) -> np.ndarray:
    """Integer stratum per training row: the label (binary), the class index (multiclass)."""
    y = train[list(dataset.targets)].to_numpy(dtype=float)
    if dataset.task == "binary":
        return (y[:, 0] > 0.5).astype(int)
    return y.argmax(axis=1)


def make_folds(dataset: Dataset, *, n_splits: int, seed: int) -> pd.DataFrame:
    """Assign each training clip to a fold. Returns a DataFrame ``id, fold`` in manifest order."""
    train = dataset.train
    y = strata(dataset, train)
    counts = np.bincount(y, minlength=2 if dataset.task == "binary" else len(dataset.targets))
    # A binary task needs both classes in every fold; an absent multiclass class is merely never predicted.
    present = counts if dataset.task == "binary" else counts[counts > 0]
    smallest = present.min() if len(present) else 0
    if smallest < n_splits:
        names = list(dataset.targets) if dataset.task != "binary" else ["negative", "positive"]
        cls = names[int(np.where(counts == smallest)[0][0])]
        raise FoldError(
            f"folds.n_splits={n_splits} needs at least {n_splits} training clips of every class; "
            f"class {cls!r} has {smallest}"
        )
    fold = np.full(len(train), -1, dtype=int)
    if dataset.has_groups:
        groups = train["group"].astype(str).to_numpy()
        if len(set(groups)) < n_splits:
            raise FoldError(f"folds.n_splits={n_splits} needs at least {n_splits} groups; the data has {len(set(groups))}")
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(train)), y, groups)
    else:
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(train)), y)
    for k, (_, valid) in enumerate(splits):
        fold[valid] = k
    return pd.DataFrame({"id": train["id"].to_numpy(), "fold": fold})


def ensure_folds(dataset: Dataset, exp: Experiment, folds_dir: str) -> pd.DataFrame:
    """Load the shared fold table, or make and save it. A table that does not match the data is rebuilt."""
    path = os.path.join(folds_dir, f"{fold_key(exp)}.csv")
    expected = set(dataset.train["id"])
    if io.isfile(path):
        try:
            table = io.read_csv(path, dtype={"id": str, "fold": int})
            if set(table["id"]) == expected and len(table) == len(expected) and table["fold"].between(0, exp.folds.n_splits - 1).all():
                return table
            log.warning("fold table %s does not match the data; rebuilding it", path)
        except (ValueError, KeyError, pd.errors.ParserError) as err:
            log.warning("fold table %s is unreadable (%s); rebuilding it", path, err)
    table = make_folds(dataset, n_splits=exp.folds.n_splits, seed=exp.folds.seed)
    io.write_csv(path, table)
    log.info("fold table written: %s (%d clips, %d folds)", path, len(table), exp.folds.n_splits)
    return table
