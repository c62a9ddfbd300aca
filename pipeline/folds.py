"""One fold table per (dataset, fold settings), shared by every experiment on that data.

``output/folds/<key>.csv`` (``key``: the data source, fold settings and the
training clips' ids, labels and groups, :func:`table_key`) holds ``id, fold`` for every training clip of the
manifest (also clips whose audio later turns out bad, so that experiments with
different feature settings still agree on folds). Stratified on the label;
stratified *and* grouped when the manifest has a ``group`` column, so a group
never straddles two folds.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from pipeline import io
from pipeline.config import Component
from pipeline.hashing import stable_hash
from pipeline.data.base import Dataset
from pipeline.errors import DataError
from pipeline.schema import FoldSettings

log = logging.getLogger(__name__)


class FoldError(DataError):
    """The data cannot be split as configured."""


def fold_key(data: Component, folds: FoldSettings) -> str:
    """The data source's and the fold settings' part of a fold table's identity.

    data : the experiment's data component (source name and parameters); folds : its fold settings.
    Experiments with equal ``fold_key`` whose recorded data is the current data
    (:func:`pipeline.queue.finished`) were split by the same table; the table's
    file name (:func:`table_key`) also covers the data itself.
    """
    return stable_hash({"data": data.to_dict(), "folds": dataclasses.asdict(folds)})


def table_key(data: Component, folds: FoldSettings, dataset: Dataset) -> str:
    """Name of the fold table file: :func:`fold_key` plus the training clips' ids, labels and groups.

    A table made for other labels or groups (stratification and grouping
    depend on them) is never reused, even when the ids are the same.
    """
    return stable_hash({"settings": fold_key(data, folds), "data": dataset.identity.folds})


def strata(dataset: Dataset, train: pd.DataFrame) -> np.ndarray:
    """Integer stratum per training row: the label (binary), the class index (multiclass)."""
    y = train[list(dataset.targets)].to_numpy(dtype=float)
    if dataset.task == "binary":
        return (y[:, 0] > 0.5).astype(int)
    return y.argmax(axis=1)


def make_folds(dataset: Dataset, *, n_splits: int, seed: int) -> pd.DataFrame:
    """Assign each training clip to a fold. Returns a DataFrame ``id, fold`` in manifest order."""
    train = dataset.train
    if dataset.task == "multilabel":
        return multilabel_folds(dataset, n_splits=n_splits, seed=seed)
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


def multilabel_folds(dataset: Dataset, *, n_splits: int, seed: int) -> pd.DataFrame:
    """Multilabel stratified K-fold (iterative stratification, Sechidis et al. 2011) over groups.

    Targets are aggregated per group (max: a group holds a label if any of its clips
    does; without a group column every clip is its own group), the groups are split
    by ``iterstrat``'s MultilabelStratifiedKFold, and every clip follows its group,
    so a group (an rfcx recording) is never in two folds. NaN (unknown) targets
    count as 0. A label held by at least ``n_splits`` groups lands in every fold's
    validation part; rarer labels only log a warning.
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    train = dataset.train
    groups = train["group"].astype(str) if dataset.has_groups else train["id"].astype(str)
    y = np.nan_to_num(train[list(dataset.targets)].to_numpy(dtype=float), nan=0.0) > 0.5
    per_group = pd.DataFrame(y, columns=list(dataset.targets)).groupby(groups.to_numpy(), sort=True).max()
    if len(per_group) < n_splits:
        raise FoldError(f"folds.n_splits={n_splits} needs at least {n_splits} groups; the data has {len(per_group)}")
    counts = per_group.sum(0)
    rare = [f"{c} ({int(n)})" for c, n in counts.items() if 0 < n < n_splits]
    if rare:
        log.warning("labels held by fewer than folds.n_splits=%d recordings cannot be in every fold: %s",
                    n_splits, ", ".join(rare))
    splitter = MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    group_fold = np.full(len(per_group), -1, dtype=int)
    for k, (_, valid) in enumerate(splitter.split(np.zeros(len(per_group)), per_group.to_numpy(int))):
        group_fold[valid] = k
    fold_of = dict(zip(per_group.index, group_fold))
    return pd.DataFrame({"id": train["id"].to_numpy(), "fold": [fold_of[g] for g in groups]})


def ensure_folds(dataset: Dataset, data: Component, folds: FoldSettings, folds_dir: str) -> pd.DataFrame:
    """Load the shared fold table, or make and save it. A table that does not match the data is rebuilt.

    dataset : the manifest read from ``data`` (the experiment's data component); folds : its fold settings.
    The file is ``<folds_dir>/<table_key>.csv``: changed labels or groups give another table.
    """
    path = os.path.join(folds_dir, f"{table_key(data, folds, dataset)}.csv")
    expected = set(dataset.train["id"])
    if io.isfile(path):
        try:
            table = io.read_csv(path, dtype={"id": str, "fold": int})
            if set(table["id"]) == expected and len(table) == len(expected) and table["fold"].between(0, folds.n_splits - 1).all():
                check_fold_classes(dataset, table, data, folds)  # also a table an earlier version wrote
                return table
            log.warning("fold table %s does not match the data; rebuilding it", path)
        except (ValueError, KeyError, pd.errors.ParserError) as err:
            log.warning("fold table %s is unreadable (%s); rebuilding it", path, err)
    table = make_folds(dataset, n_splits=folds.n_splits, seed=folds.seed)
    check_fold_classes(dataset, table, data, folds)
    io.write_csv(path, table)
    log.info("fold table written: %s (%d clips, %d folds)", path, len(table), folds.n_splits)
    return table


def check_fold_classes(dataset: Dataset, table: pd.DataFrame, data: Component, folds: FoldSettings) -> None:
    """Refuse a fold table under which a fold cannot be trained and scored.

    Every fold's training and validation clips must hold what its metric
    needs: both classes (binary), at least two classes (multiclass), at least
    one positive label (multilabel; unknown labels do not count). A group
    column that keeps the classes apart (one recording site holds every
    positive) would otherwise give folds trained on one class and an
    undefined (NaN) validation score.

    table : ``id, fold`` of every training clip. Raises FoldError naming ``data.group_column`` (when the data
    has one) or ``folds.n_splits``, with what each fold lacks.
    """
    train = dataset.train
    fold = train["id"].map(dict(zip(table["id"], table["fold"]))).to_numpy()
    y = np.nan_to_num(train[list(dataset.targets)].to_numpy(dtype=float), nan=0.0) > 0.5
    if dataset.task == "multilabel":
        need = "at least one positive label"
    else:
        need = "both classes (negative and positive)" if dataset.task == "binary" else "at least two classes"
    lack = _lacking(dataset, y)
    if lack:  # no split can help
        raise FoldError(f"data ({data.name}): the {len(y)} training clips have {lack}; training and every "
                        f"fold's score need {need}")
    problems = []
    for k in range(folds.n_splits):
        lacks = [f"{side} has {lack}" for side, rows in (("training", fold != k), ("validation", fold == k))
                 for lack in [_lacking(dataset, y[rows])] if lack]
        if lacks:
            problems.append(f"fold {k + 1}: {', '.join(lacks)}")
    if not problems:
        return
    group_column = getattr(data.params, "group_column", None) if dataset.has_groups else None
    key = f"data.group_column={group_column!r}" if group_column else f"folds.n_splits={folds.n_splits}"
    hint = ("Its groups keep the classes apart: choose a group column whose groups mix the classes, or spread "
            "each class over more groups" if group_column else
            "Lower folds.n_splits or add clips of the missing class")
    raise FoldError(f"{key}: every fold needs {need} in its training and in its validation clips, else it trains "
                    f"on one class or its score is undefined; {'; '.join(problems)}. {hint}")


def _lacking(dataset: Dataset, y: np.ndarray) -> str:
    """What clips with targets ``y`` [n, C] (bool) lack for a fold's metric ("" when nothing)."""
    if not len(y):
        return "no clips at all"
    if dataset.task == "multilabel":
        return "" if y.any() else "no positive label"
    if dataset.task == "binary":
        return "no positive clip" if not y[:, 0].any() else "no negative clip" if y[:, 0].all() else ""
    held = [name for name, any_ in zip(dataset.targets, y.any(axis=0)) if any_]
    return f"only class {held[0]!r}" if len(held) < 2 else ""
