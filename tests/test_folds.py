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


def table_experiment(tmp_path, group_column=None):
    base = tmp_path / "queue"  # the table source's files must exist when the queue is read
    (base / "input" / "audio").mkdir(parents=True, exist_ok=True)
    (base / "input" / "train.csv").write_text("file,label,site\n")
    data = {"name": "table", **({"group_column": group_column} if group_column else {})}
    return parse_queue({"experiments": [{"name": "e", "data": data, "features": "mel", "model": "logreg",
                                         "folds": {"n_splits": 2}}]},
                       source="q.yaml", base_dir=str(base)).experiments[0]


def test_groups_that_keep_the_classes_apart_are_refused_naming_the_group_column(tmp_path, rng):
    # One recording site holds every positive: each fold would train on one class and validate on the other.
    exp = table_experiment(tmp_path, group_column="site")
    ds = dataset(rng, n=40, groups=2)
    ds.manifest["label"] = (ds.manifest["group"] == "g0").astype(float)
    with pytest.raises(FoldError, match=r"data.group_column='site': every fold needs both classes .* "
                                        r"fold 1: training has no (positive|negative) clip, validation has no"):
        ensure_folds(ds, exp.data, exp.folds, str(tmp_path / "folds"))
    assert not (tmp_path / "folds").exists() or not list((tmp_path / "folds").iterdir())  # no table kept
    ds.manifest["label"] = [float(i % 3 == 0) for i in range(40)]  # both groups hold both classes: accepted
    table = ensure_folds(ds, exp.data, exp.folds, str(tmp_path / "folds"))
    assert set(table["fold"]) == {0, 1}


def test_a_saved_table_is_checked_too(tmp_path, rng):
    # A table written by an earlier version (or for other labels under the same key) never trains a one-class fold.
    exp = table_experiment(tmp_path)
    ds = dataset(rng, n=40)
    (tmp_path / "folds").mkdir()
    path = tmp_path / "folds" / f"{table_key(exp.data, exp.folds, ds)}.csv"
    pd.DataFrame({"id": ds.train["id"], "fold": (ds.train["label"] > 0.5).astype(int)}).to_csv(path, index=False)
    with pytest.raises(FoldError, match=r"folds.n_splits=2: .* fold 1: training has no negative clip, "
                                        r"validation has no positive clip"):
        ensure_folds(ds, exp.data, exp.folds, str(tmp_path / "folds"))


def test_multilabel_data_without_a_positive_label_is_refused(tmp_path, rng):
    exp = table_experiment(tmp_path)
    ids = [f"r{i}" for i in range(12)]
    frame = pd.DataFrame({"id": ids, "path": ids, "split": "train", "group": ids,
                          "s0": 0.0, "s1": np.nan})  # fp boxes only: known negatives and unknowns
    ds = Dataset(manifest=frame, task="multilabel", targets=("s0", "s1"), submission="rfcx")
    with pytest.raises(FoldError, match=r"data \(table\): the 12 training clips have no positive label"):
        ensure_folds(ds, exp.data, exp.folds, str(tmp_path / "folds"))
    frame.loc[0, "s1"] = 1.0  # one positive recording: one fold validates without any
    with pytest.raises(FoldError, match=r"folds.n_splits=2: every fold needs at least one positive label"):
        ensure_folds(Dataset(manifest=frame, task="multilabel", targets=("s0", "s1"), submission="rfcx"),
                     exp.data, exp.folds, str(tmp_path / "folds"))


def test_experiment_outputs_refuse_a_fold_with_an_undefined_score(tmp_path, rng):
    # The last guard: predictions of a one-class fold (e.g. finished by an earlier version) are never scored.
    from pipeline.errors import TrainingError
    from pipeline.queue import _write_experiment_outputs

    ds = dataset(rng, n=8)
    ds.manifest["label"] = [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    oof = pd.DataFrame({"id": ds.train["id"], "fold": [0, 0, 0, 0, 1, 1, 1, 1], "label": ds.train["label"],
                        "pred": np.linspace(0, 1, 8)})
    exp_dir = tmp_path / "e"
    exp_dir.mkdir()
    with pytest.raises(TrainingError, match=r"fold\(s\) \[2\] of e: the validation score is undefined"):
        _write_experiment_outputs(table_experiment(tmp_path), ds, oof, None, str(exp_dir), None)
    assert list(exp_dir.iterdir()) == []  # neither oof.csv nor scores.json
