"""Fold tables: stratified, disjoint, every id exactly once, groups never split, shared and rebuilt."""

import numpy as np
import pandas as pd
import pytest

from pipeline.config import parse_queue
from pipeline.data.base import Dataset
from pipeline.folds import FoldError, ensure_folds, fold_key, make_folds, table_key
from pipeline.memory import InputNeeds, input_plan


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


def test_finished_folds_are_read_back_and_jobs_refuse_an_empty_side(tmp_path):
    # The fold loop's pieces (pipeline.fold_loop.FoldPlan.job, pipeline.fold_job.finished_fold).
    import dataclasses

    from pipeline.fold_job import finished_fold
    from pipeline.fold_loop import FoldPlan
    from pipeline.errors import DataError

    queue = parse_queue({"experiments": [{"name": "e", "data": "synthetic_whale", "features": "mel",
                                          "model": "inceptiontime", "folds": {"n_splits": 3}}]},
                        source="q.yaml", base_dir=str(tmp_path))
    exp = queue.experiments[0]
    ids = [f"c{i}" for i in range(6)]
    y = np.arange(6, dtype=np.float32)[:, None]
    done = tmp_path / "fold1"
    done.mkdir()
    pd.DataFrame({"id": ["c1", "c4"], "fold": 1, "p": [0.1, 0.9]}).to_csv(done / "oof.csv", index=False)
    (done / "done.json").write_text("{}")
    assert finished_fold(str(tmp_path), 0, with_test=False) is None
    oof, test = finished_fold(str(tmp_path), 1, with_test=False)  # fold 1 finished earlier
    assert oof["id"].tolist() == ["c1", "c4"] and test is None

    plan = FoldPlan(exp=exp, strategy="clips", unit="clips", cache_dir="cache", exp_dir=str(tmp_path), task="binary",
                    targets=("label",), ids=tuple(ids), fold_arr=np.array([0, 1, 2, 0, 1, 2]), labels=y, y=y,
                    test_ids=("t0",), memory=input_plan(InputNeeds(1, 1, 1, 1, "clips"), budget=2**20))
    job = plan.job(2)
    assert job.valid_ids == ("c2", "c5") and job.train_ids == ("c0", "c1", "c3", "c4")
    assert job.train_labels[:, 0].tolist() == [0, 1, 3, 4] and job.valid_targets[:, 0].tolist() == [2, 5]
    assert job.fold == 2 and job.n_folds == 3 and job.test_ids == ("t0",) and job.exp_dir == str(tmp_path)
    empty = dataclasses.replace(plan, unit="recordings", fold_arr=np.array([0, 1, 0, 1, 0, 1]))
    with pytest.raises(DataError, match="fold 2 has no validation recordings left"):
        empty.job(2)
