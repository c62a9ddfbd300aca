"""Fold tables: stratified, disjoint, every id exactly once, groups never split, shared and rebuilt."""

import numpy as np
import pandas as pd
import pytest

from pipeline.config import parse_queue
from pipeline.data.base import Dataset
from pipeline.folds import FoldError, ensure_folds, fold_key, make_folds, table_key


def dataset(rng, n=200, positive=0.3, groups=None, classes=None):
    ids = [f"c{i}.aiff" for i in range(n)]
    frame = pd.DataFrame({"id": ids, "path": ids, "split": "train"})
    if classes:
        k = rng.integers(0, len(classes), n)
        for j, c in enumerate(classes):
            frame[c] = (k == j).astype(float)
        targets, task = tuple(classes), "multiclass"
    else:
        frame["label"] = (rng.random(n) < positive).astype(float)
        targets, task = ("label",), "binary"
    if groups:
        frame["group"] = [f"g{i % groups}" for i in range(n)]
    return Dataset(manifest=frame, task=task, targets=targets, submission="table")


def test_stratified_disjoint_complete(rng):
    ds = dataset(rng)
    folds = make_folds(ds, n_splits=5, seed=0)
    assert list(folds["id"]) == list(ds.train["id"])  # every id once, manifest order
    assert set(folds["fold"]) == set(range(5))
    rate = ds.train["label"].mean()
    per_fold = ds.train.assign(fold=folds["fold"]).groupby("fold")["label"].mean()
    assert (abs(per_fold - rate) < 0.03).all()  # stratified
    sizes = folds["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 1


def test_seeded_and_seed_sensitive(rng):
    ds = dataset(rng)
    a = make_folds(ds, n_splits=4, seed=1)
    assert a.equals(make_folds(ds, n_splits=4, seed=1))
    assert not a.equals(make_folds(ds, n_splits=4, seed=2))


def test_groups_never_split(rng):
    ds = dataset(rng, n=300, groups=37)
    folds = make_folds(ds, n_splits=5, seed=0).assign(group=ds.train["group"])
    assert (folds.groupby("group")["fold"].nunique() == 1).all()
    assert set(folds["fold"]) == set(range(5))


def test_multiclass_stratified(rng):
    ds = dataset(rng, n=300, classes=["a", "b", "c"])
    folds = make_folds(ds, n_splits=3, seed=0)
    counts = pd.crosstab(folds["fold"], ds.train[["a", "b", "c"]].to_numpy().argmax(1))
    assert (counts.max() - counts.min() <= 2).all()


def test_too_few_examples_of_a_class(rng):
    ds = dataset(rng, n=30, positive=0.05)
    ds.manifest["label"] = [1.0] * 3 + [0.0] * 27
    with pytest.raises(FoldError, match="n_splits=10 needs at least 10 .* 'positive' has 3"):
        make_folds(ds, n_splits=10, seed=0)


def test_shared_table_reused_and_rebuilt_when_stale(tmp_path, rng):
    queue = parse_queue(
        {"experiments": [{"name": "a", "data": "synthetic_whale", "features": "mel", "model": "inceptiontime"},
                         {"name": "b", "data": "synthetic_whale", "features": "complexity", "model": "inceptiontime"}]},
        source="q.yaml", base_dir=str(tmp_path),
    )
    a, b = queue.experiments
    assert fold_key(a.data, a.folds) == fold_key(b.data, b.folds)  # different features, same data and folds -> one table
    ds = dataset(rng)
    first = ensure_folds(ds, a.data, a.folds, str(tmp_path))
    path = tmp_path / f"{table_key(a.data, a.folds, ds)}.csv"
    assert path.is_file()
    stamp = path.stat().st_mtime_ns
    assert ensure_folds(ds, b.data, b.folds, str(tmp_path)).equals(first)
    assert path.stat().st_mtime_ns == stamp
    path.write_text("id,fold\nnot-a-clip,0\n")  # stale/corrupt table: rebuilt
    assert ensure_folds(ds, a.data, a.folds, str(tmp_path)).equals(first)


def test_pending_folds_skips_finished_folds_and_refuses_an_empty_side(tmp_path):
    # The fold loop shared by the whale and rfcx trainers (pipeline.train.pending_folds).
    from types import SimpleNamespace

    from pipeline.queue import StageError
    from pipeline.train import pending_folds

    exp = SimpleNamespace(name="e", folds=SimpleNamespace(n_splits=3))
    ids = [f"c{i}" for i in range(6)]
    fold_arr = np.array([0, 1, 2, 0, 1, 2])
    done = tmp_path / "fold1"
    done.mkdir()
    pd.DataFrame({"id": ["c1", "c4"], "fold": 1, "p": [0.1, 0.9]}).to_csv(done / "oof.csv", index=False)
    (done / "done.json").write_text("{}")
    oof_parts = []
    got = list(pending_folds(exp, str(tmp_path), ids, fold_arr, oof_parts, None, "clips"))
    assert [g[0] for g in got] == [0, 2]  # fold 1 finished earlier
    assert oof_parts[0]["id"].tolist() == ["c1", "c4"]
    k, fold_dir, tr, va, tr_ids, va_ids = got[1]
    assert fold_dir == str(tmp_path / "fold2") and (tmp_path / "fold2").is_dir()
    assert va_ids == ["c2", "c5"] and tr_ids == ["c0", "c1", "c3", "c4"]
    assert tr.tolist() == [0, 1, 3, 4] and va.tolist() == [2, 5]
    with pytest.raises(StageError, match="fold 2 has no validation recordings left"):
        list(pending_folds(exp, str(tmp_path / "b"), ids, np.array([0, 1, 0, 1, 0, 1]), [], None, "recordings"))
