"""Blending on hand-made OOF tables: known values, guarantees, honest stacking scores, refusals, no test labels."""

import builtins
import json
import os
import textwrap

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import label_ranking_average_precision_score, roc_auc_score

from pipeline import layout, metrics, ownership, results, schema
from pipeline.blend.methods import greedy_weights
from pipeline.blend.predictions import check_compatible, load_predictions
from pipeline.blend.stage import blend
from pipeline.errors import BlendError
from pipeline.config import load_queue
from pipeline.registry import UnknownNameError


# ----------------------------------------------------------------------------- fixtures


def experiment(ids, folds, y, pred, test_ids=None, test_pred=None, *, task="binary", targets=("label",),
               submission="whale"):
    """An in-memory :func:`pipeline.blend.predictions.load_predictions` result. y, pred: [n] or [n, C]."""
    y = np.asarray(y, float).reshape(len(ids), -1)
    pred = np.asarray(pred, float).reshape(len(ids), -1)
    cols = ["pred"] if task == "binary" else [f"pred:{t}" for t in targets]
    oof = pd.DataFrame({"id": list(ids), "fold": list(folds)})
    oof[list(targets)] = y
    oof[cols] = pred
    test = None
    if test_ids is not None:
        test = pd.DataFrame({"id": list(test_ids)})
        test[cols] = np.asarray(test_pred, float).reshape(len(test_ids), -1)
    scores = {"metric": "auc", "task": task, "targets": list(targets), "submission": submission,
              "oof": {"auc": metrics.auc(y, pred)}}
    return {"scores": scores, "oof": oof, "test": test}


def binary_problem(rng, n=400, n_folds=4, signals=(1.0, 0.7), noise=0, n_test=50):
    """Labels, folds and experiments whose logits are signal * (2y - 1) + N(0, 1); ``noise`` pure-noise ones."""
    ids = [f"clip{i:04d}" for i in range(n)]
    y = (rng.random(n) < 0.35).astype(float)
    folds = np.arange(n) % n_folds
    rng.shuffle(folds)
    test_ids = [f"test{i:03d}" for i in range(n_test)]
    names, loaded = [], []
    for j, s in enumerate(list(signals) + [0.0] * noise):
        logit = s * (2 * y - 1) + rng.normal(size=n)
        pred = 1 / (1 + np.exp(-logit))
        names.append(f"exp{j}")
        loaded.append(experiment(ids, folds, y, pred, test_ids, rng.random(n_test)))
    return names, loaded


def best_single(result):
    return result["scores"]["best_single"]["score"]


# ----------------------------------------------------------------------------- mean, rank_mean


@pytest.mark.parametrize("method", list(schema.BLEND_METHODS))
def test_every_method_blends_a_tiny_problem(rng, method):
    """Generated from the registry: OOF and test predictions of the right shape, in [0, 1], scored."""
    names, loaded = binary_problem(rng, n=40)
    result = blend(names, loaded, method, schema.BLEND_METHODS[method].tiny())
    oof, test = result["oof"], result["test"]
    assert len(oof) == len(loaded[0]["oof"]) and len(test) == len(loaded[0]["test"])
    for frame in (oof, test):
        pred = frame[layout.prediction_columns_of(frame.columns)].to_numpy(float)
        assert np.isfinite(pred).all() and ((pred >= 0) & (pred <= 1)).all()
    assert np.isfinite(result["scores"]["blend"])


def test_mean_and_rank_mean_values():
    ids, folds, y = ["a", "b", "c", "d"], [0, 0, 1, 1], [0, 1, 0, 1]
    a, b = [0.1, 0.4, 0.35, 0.8], [0.2, 0.1, 0.9, 0.6]
    loaded = [experiment(ids, folds, y, a, ["t1", "t2", "t3"], [0.2, 0.9, 0.5]),
              experiment(ids, folds, y, b, ["t1", "t2", "t3"], [0.7, 0.1, 0.3])]
    mean = blend(["a", "b"], loaded, "mean")
    np.testing.assert_allclose(mean["oof"]["pred"], [0.15, 0.25, 0.625, 0.7])
    np.testing.assert_allclose(mean["test"]["pred"], [0.45, 0.5, 0.4])
    assert mean["weights"]["weights"] == {"a": 0.5, "b": 0.5}
    rank = blend(["a", "b"], loaded, "rank_mean")
    # ranks of a: 0, 2, 1, 3; of b: 1, 0, 3, 2 (out of 3)
    np.testing.assert_allclose(rank["oof"]["pred"], [0.5 / 3, 1 / 3, 2 / 3, 2.5 / 3])
    # test is ranked on its own: a -> 0, 1, 0.5; b -> 1, 0, 0.5
    np.testing.assert_allclose(rank["test"]["pred"], [0.5, 0.5, 0.5])
    assert list(rank["oof"]["id"]) == ids and list(rank["oof"]["fold"]) == folds
    assert rank["scores"]["blend"] == pytest.approx(roc_auc_score(y, rank["oof"]["pred"]))


def test_rows_are_aligned_by_id_not_position():
    ids, folds, y = ["a", "b", "c", "d"], [0, 0, 1, 1], [0, 1, 0, 1]
    one = experiment(ids, folds, y, [0.1, 0.9, 0.2, 0.8])
    two = experiment(ids, folds, y, [0.3, 0.7, 0.4, 0.6])
    two["oof"] = two["oof"].iloc[::-1].reset_index(drop=True)
    out = blend(["one", "two"], [one, two], "mean")
    np.testing.assert_allclose(out["oof"].set_index("id").loc[ids, "pred"], [0.2, 0.8, 0.3, 0.7])


def test_multiclass_mean_keeps_class_columns():
    ids, folds = ["a", "b", "c", "d"], [0, 0, 1, 1]
    y = np.eye(3)[[0, 1, 2, 0]]
    p = np.full((4, 3), 1 / 3)
    e = experiment(ids, folds, y, p, task="multiclass", targets=("x", "y", "z"), submission="table")
    out = blend(["a", "b"], [e, e], "mean", metric="log_loss")
    assert [c for c in out["oof"].columns if c.startswith("pred")] == ["pred:x", "pred:y", "pred:z"]
    assert out["scores"]["blend"] == pytest.approx(np.log(3), rel=1e-6)


# ----------------------------------------------------------------------------- weights


@pytest.mark.parametrize("metric", ["auc", "log_loss"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weights_never_below_best_single(metric, seed):
    rng = np.random.default_rng(seed)
    names, loaded = binary_problem(rng, signals=(1.2, 0.8, 0.3), noise=2)
    # A badly calibrated but well-ranked experiment: the mean would be worse than it on log loss.
    loaded[1]["oof"]["pred"] = loaded[1]["oof"]["pred"] ** 3
    out = blend(names, loaded, "weights", schema.WeightsBlendParams(iterations=30), metric)
    s = out["scores"]
    if metrics.GREATER_IS_BETTER[metric]:
        assert s["blend"] >= best_single(out)
    else:
        assert s["blend"] <= best_single(out)
    w = np.array(list(out["weights"]["weights"].values()))
    assert (w >= 0).all() and w.sum() == pytest.approx(1.0)
    assert "held_out" in s  # the honest companion score is reported too
    # The written OOF is exactly the weighted mean of the inputs.
    ref = sum(wk * item["oof"].set_index("id").loc[out["oof"]["id"], "pred"].to_numpy()
              for wk, item in zip(w, loaded))
    np.testing.assert_allclose(out["oof"]["pred"], ref)


def test_weights_with_one_dominant_experiment_is_that_experiment():
    rng = np.random.default_rng(5)
    y = (rng.random(300) < 0.5).astype(float)
    perfect = y * 0.8 + 0.1
    noisy = rng.random(300)
    w = greedy_weights([noisy[:, None], perfect[:, None]], lambda p: metrics.auc(y, p), "auc", iterations=10)
    np.testing.assert_allclose(w, [0.0, 1.0])


def test_weights_improves_on_complementary_experiments(rng):
    names, loaded = binary_problem(rng, n=2000, signals=(0.8, 0.8))
    out = blend(names, loaded, "weights", schema.WeightsBlendParams(iterations=20))
    assert out["scores"]["blend"] > best_single(out) + 0.005
    w = out["weights"]["weights"]
    assert min(w.values()) > 0.2  # two equally good, independent experiments get similar weights


# ----------------------------------------------------------------------------- stacking


@pytest.mark.parametrize("model", ["logistic", "ridge"])
def test_stacking_held_out_predictions_ignore_their_own_labels(rng, model):
    """Fold k's stacked predictions must not change when fold k's labels change."""
    names, loaded = binary_problem(rng, signals=(1.0, 0.6, 0.0))
    params = schema.StackingBlendParams(model=model)
    before = blend(names, loaded, "stacking", params)["oof"].set_index("id")
    flipped = []
    for item in loaded:
        item = dict(item, oof=item["oof"].copy())
        in_fold0 = item["oof"]["fold"] == 0
        item["oof"].loc[in_fold0, "label"] = 1 - item["oof"].loc[in_fold0, "label"]
        flipped.append(item)
    after = blend(names, flipped, "stacking", params)["oof"].set_index("id")
    fold0 = before.index[before["fold"] == 0]
    others = before.index[before["fold"] != 0]
    np.testing.assert_allclose(before.loc[fold0, "pred"], after.loc[fold0, "pred"])
    assert not np.allclose(before.loc[others, "pred"], after.loc[others, "pred"])


def test_stacking_with_a_noise_experiment_does_not_inflate_the_score(rng):
    names, loaded = binary_problem(rng, n=600, signals=(1.0,), noise=1)
    out = blend(names, loaded, "stacking")
    s = out["scores"]
    assert s["score_kind"].startswith("held-out")
    assert s["blend"] <= s["in_sample"] + 1e-12  # the held-out score is below the leaky in-sample fit
    assert s["blend"] <= best_single(out) + 0.01  # noise adds nothing real
    assert s["blend"] > best_single(out) - 0.03  # ... and stacking still finds the signal


def test_stacking_score_catches_an_in_sample_fit(rng):
    """Many pure-noise experiments on few clips: an in-sample fit looks perfect, the reported score must not."""
    names, loaded = binary_problem(rng, n=80, n_folds=4, signals=(), noise=60, n_test=5)
    out = blend(names, loaded, "stacking", schema.StackingBlendParams(regularization=1e-4))
    s = out["scores"]
    assert s["in_sample"] > 0.99
    assert s["blend"] < 0.75
    assert s["blend"] == pytest.approx(roc_auc_score(out["oof"]["label"], out["oof"]["pred"]))


def test_stacking_multilabel_lwlrap_and_test_predictions(rng):
    n, targets = 300, ("a", "b", "c")
    ids = [f"c{i}" for i in range(n)]
    folds = (np.arange(n) // 3) % 3  # every fold holds both classes
    y = (rng.random((n, 3)) < 0.3).astype(float)
    good = 1 / (1 + np.exp(-(2 * (2 * y - 1) + rng.normal(size=y.shape))))
    weak = 1 / (1 + np.exp(-(0.5 * (2 * y - 1) + rng.normal(size=y.shape))))
    loaded = [experiment(ids, folds, y, p, ["t0", "t1"], rng.random((2, 3)), task="multilabel", targets=targets,
                         submission="table") for p in (good, weak)]
    out = blend(["good", "weak"], loaded, "stacking", metric="lwlrap")
    y_out = out["oof"][list(targets)].to_numpy()  # rows come back sorted by id
    lrap = label_ranking_average_precision_score(y_out, out["oof"][[f"pred:{t}" for t in targets]],
                                                 sample_weight=y_out.sum(1))
    assert out["scores"]["blend"] == pytest.approx(lrap)
    assert out["test"].shape == (2, 4) and out["test"].iloc[:, 1:].to_numpy().max() <= 1
    assert [c["class"] for c in out["weights"]["classes"]] == list(targets)


def test_stacking_needs_two_folds(rng):
    names, loaded = binary_problem(rng, n=50, n_folds=1)
    with pytest.raises(BlendError, match="at least 2 folds"):
        blend(names, loaded, "stacking")


# ----------------------------------------------------------------------------- metrics


def test_lwlrap_matches_sklearn_with_ties(rng):
    y = (rng.random((200, 6)) < 0.25).astype(float)
    y[0] = 0  # a row without positives does not count
    y[1] = 1
    p = np.round(rng.random((200, 6)), 1)  # many ties
    expected = label_ranking_average_precision_score(y, p, sample_weight=y.sum(1))
    assert metrics.lwlrap(y, p, block_rows=7) == pytest.approx(expected)
    assert metrics.lwlrap(y, y) == pytest.approx(1.0)


def test_lwlrap_on_binary_is_refused(rng):
    names, loaded = binary_problem(rng, n=40)
    with pytest.raises(BlendError, match="at least 2 classes"):
        blend(names, loaded, "mean", metric="lwlrap")


# ----------------------------------------------------------------------------- refusals


def test_refuses_mismatched_folds(rng):
    names, loaded = binary_problem(rng, n=40)
    loaded[1]["oof"].loc[0, "fold"] = (loaded[1]["oof"].loc[0, "fold"] + 1) % 4
    with pytest.raises(BlendError, match="folds differ.*clip0000"):
        blend(names, loaded, "mean")


def test_refuses_mismatched_ids(rng):
    names, loaded = binary_problem(rng, n=40)
    loaded[1]["oof"] = loaded[1]["oof"].iloc[1:]
    with pytest.raises(BlendError, match="OOF ids differ"):
        check_compatible(names, loaded)


def test_refuses_mismatched_test_ids_and_targets(rng):
    names, loaded = binary_problem(rng, n=40)
    loaded[1]["test"] = loaded[1]["test"].iloc[1:]
    with pytest.raises(BlendError, match="test ids differ"):
        check_compatible(names, loaded)
    names, loaded = binary_problem(rng, n=40)
    loaded[1]["scores"]["targets"] = ["other"]
    with pytest.raises(BlendError, match="targets differ"):
        check_compatible(names, loaded)


def test_refuses_duplicated_ids(rng):
    names, loaded = binary_problem(rng, n=40)
    loaded[0]["oof"] = pd.concat([loaded[0]["oof"], loaded[0]["oof"].iloc[:1]])
    with pytest.raises(BlendError, match="repeats ids"):
        check_compatible(names, loaded)


def test_unknown_method_lists_choices(rng):
    names, loaded = binary_problem(rng, n=40)
    with pytest.raises(UnknownNameError, match="'voting' is not a blend method; choose one of: .*stacking"):
        blend(names, loaded, "voting")


# ----------------------------------------------------------------------------- the queue stage, from files

QUEUE = """
defaults:
  data: {name: synthetic_whale, n_train: 60, n_test: 12}
  features: complexity
  model: inceptiontime
  folds: {n_splits: 3}
experiments:
  - name: good
  - name: weak
    model: {name: inceptiontime, depth: 2}
blend: {method: METHOD}
"""


def write_finished_queue(folder, rng, method="weights", n=60, n_test=12):
    """A queue file plus hand-made finished experiments in its output folder (no training)."""
    path = folder / "queue.yaml"
    path.write_text(textwrap.dedent(QUEUE.replace("METHOD", method)))
    queue = load_queue(str(path))
    data_root = folder / "input" / "synthetic_whale"
    data_root.mkdir(parents=True)
    # The answer key exists, as it does for synthetic data; the blend must never open it.
    (data_root / "test_labels.csv").write_text("clip,label\n" + "".join(f"t{i}.aiff,1\n" for i in range(n_test)))
    ids = [f"c{i}.aiff" for i in range(n)]
    test_ids = [f"t{i}.aiff" for i in range(n_test)]
    y = (np.arange(n) % 3 == 0).astype(float)
    folds = (np.arange(n) // 3) % 3  # every fold holds both classes
    for exp, signal in zip(queue.experiments, (2.0, 0.5)):
        d = folder / "output" / exp.name
        d.mkdir(parents=True)
        for owned in (folder / "output", d):  # as the pipeline marks the folders it makes
            ownership.mark(str(owned))
        item = experiment(ids, folds, y, 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(size=n)))),
                          test_ids, rng.random(n_test))
        item["oof"].to_csv(d / "oof.csv", index=False)
        item["test"].to_csv(d / "test.csv", index=False)
        scores = dict(item["scores"], fold_mean=item["scores"]["oof"]["auc"], fold_std=0.01)
        (d / "scores.json").write_text(json.dumps(scores))
        (d / "status.json").write_text(json.dumps({"state": "done", "config_hash": exp.config_hash(),
                                                   "wall_seconds": 12.5}))
    return str(path)


def test_blend_only_writes_files_and_never_opens_test_labels(tmp_path, rng, monkeypatch, capsys):
    from pipeline.cli import main

    path = write_finished_queue(tmp_path, rng)
    opened = []
    real_open, real_read_csv = builtins.open, pd.read_csv

    def spy_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    def spy_read_csv(file, *args, **kwargs):
        opened.append(str(file))
        return real_read_csv(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(pd, "read_csv", spy_read_csv)
    assert main([path, "--blend-only"]) == 0
    monkeypatch.undo()
    assert opened, "the spy saw no file at all"
    assert not [p for p in opened if os.path.basename(p) == "test_labels.csv"]

    out = tmp_path / "output" / "blend"
    for name in ("oof.csv", "test.csv", "weights.json", "scores.json", "submission.csv"):
        assert (out / name).is_file(), name
    sub = pd.read_csv(out / "submission.csv")
    assert list(sub.columns) == ["clip", "probability"] and len(sub) == 12
    scores = json.loads((out / "scores.json").read_text())
    assert scores["blend"] >= scores["best_single"]["score"]
    printed = capsys.readouterr().out
    assert "best single" in printed and "blend" in printed


def test_refused_blend_removes_stale_files_and_records_the_reason(tmp_path, rng, capsys):
    from pipeline.blend.stage import run_blend
    from pipeline.queue import Paths

    path = write_finished_queue(tmp_path, rng, method="mean")
    queue = load_queue(path)
    paths = Paths(queue.output_dir)
    assert run_blend(queue, paths.output) is not None
    assert (tmp_path / "output" / "blend" / "submission.csv").is_file()
    oof_path = tmp_path / "output" / "weak" / "oof.csv"
    oof = pd.read_csv(oof_path)
    oof.loc[0, "fold"] = 2 - oof.loc[0, "fold"] if oof.loc[0, "fold"] != 1 else 0
    oof.to_csv(oof_path, index=False)
    assert run_blend(queue, paths.output) is None
    folder = tmp_path / "output" / "blend"
    assert not (folder / "submission.csv").exists() and not (folder / "scores.json").exists()
    assert "folds differ" in json.loads((folder / "error.json").read_text())["error"]


def test_load_predictions_reads_only_prediction_files(tmp_path, rng):
    path = write_finished_queue(tmp_path, rng)
    loaded = load_predictions(str(tmp_path / "output" / "good"))
    assert set(loaded) == {"scores", "oof", "test"}
    assert loaded["oof"]["id"].dtype == object


def test_include_of_experiments_on_other_folds_is_refused(tmp_path, rng):
    from pipeline.blend.stage import run_blend

    path = write_finished_queue(tmp_path, rng, method="mean")
    text = (tmp_path / "queue.yaml").read_text()
    text = text.replace("model: {name: inceptiontime, depth: 2}", "model: {name: inceptiontime, depth: 2}\n    folds: {n_splits: 4}")
    text = text.replace("blend: {method: mean}", "blend: {method: mean, include: [good, weak]}")
    (tmp_path / "queue.yaml").write_text(text)
    queue = load_queue(path)
    for exp in queue.experiments:  # the hand-made runs belong to the edited configs
        status_path = tmp_path / "output" / exp.name / "status.json"
        status = json.loads(status_path.read_text())
        status_path.write_text(json.dumps(dict(status, config_hash=exp.config_hash())))
    assert run_blend(queue, queue.output_dir) is None
    error = json.loads((tmp_path / "output" / "blend" / "error.json").read_text())["error"]
    assert "different data or folds" in error and "weak" in error


def test_experiments_on_other_folds_are_left_out_of_the_queue_oof_and_the_blend(tmp_path, rng, caplog):
    """One rule for both tables (pipeline.results.on_shared_folds): the first finished experiment's folds."""
    import pipeline.queue as q
    from pipeline.blend.stage import run_blend

    path = write_finished_queue(tmp_path, rng, method="mean")
    text = (tmp_path / "queue.yaml").read_text()
    weak = "model: {name: inceptiontime, depth: 2}"
    (tmp_path / "queue.yaml").write_text(text.replace(weak, weak + "\n    folds: {n_splits: 4}"))
    queue = load_queue(path)
    for exp in queue.experiments:  # the hand-made runs belong to the edited configs
        status_path = tmp_path / "output" / exp.name / "status.json"
        status_path.write_text(json.dumps(dict(json.loads(status_path.read_text()), config_hash=exp.config_hash())))
    with caplog.at_level("WARNING", logger="pipeline"):
        table = q.write_queue_oof(queue, q.Paths(queue.output_dir))
        result = run_blend(queue, queue.output_dir)
    assert "good" in table.columns and "weak" not in table.columns
    assert result["weights"]["experiments"] == ["good"]
    assert "weak uses other data or folds than good; left out of output/oof.csv" in caplog.text
    assert "blend: weak use other data or folds than good; left out" in caplog.text


def test_blend_submission_lists_test_clips_without_predictions(tmp_path, rng):
    from pipeline.blend.stage import write_blend

    names, loaded = binary_problem(rng, n=40, n_test=5)
    predicted = list(loaded[0]["test"]["id"])
    all_test_ids = [*predicted[:2], "skipped_clip", *predicted[2:]]  # the test manifest's order
    for item in loaded:  # scores.json lists one more test clip, whose audio was skipped
        item["scores"]["all_test_ids"] = all_test_ids
        item["test"] = item["test"].iloc[::-1]  # the rows of test.csv need not follow the manifest
    result = blend(names, loaded, "mean")
    write_blend(str(tmp_path), result)
    sub = pd.read_csv(tmp_path / "submission.csv").set_index("clip")["probability"]
    assert list(sub.index) == all_test_ids  # the skipped clip's row at its place, not at the end
    assert sub["skipped_clip"] == pytest.approx(result["test"]["pred"].mean(), abs=1e-6)
    assert np.allclose(sub[predicted], result["test"].set_index("id").loc[predicted, "pred"])
    assert len(pd.read_csv(tmp_path / "test.csv")) == 5  # test.csv keeps the real predictions only


@pytest.mark.parametrize("method", list(schema.BLEND_METHODS))
def test_every_test_clip_skipped_still_gives_the_experiments_and_the_blend_a_full_submission(tmp_path, rng,
                                                                                              caplog, method):
    """All test audio unreadable (e.g. 0-byte files): the experiment's test.csv has no row, yet its
    submission and the blend's list every test clip, with the mean OOF prediction, and a warning says so."""
    from types import SimpleNamespace

    import pipeline.queue as q
    from pipeline.blend.stage import write_blend
    from pipeline.data import Dataset, submission_frame

    ids, test_ids = [f"c{i}" for i in range(12)], ["t2", "t0", "t1"]
    y = (np.arange(12) % 2).astype(float)
    manifest = pd.DataFrame({"id": ids + test_ids, "path": "x", "split": ["train"] * 12 + ["test"] * 3,
                             "label": [*y, *[np.nan] * 3]})
    dataset = Dataset(manifest=manifest, task="binary", targets=("label",), submission="whale")
    names = ["a", "b"]
    with caplog.at_level("WARNING", logger="pipeline"):
        for name in names:
            oof = pd.DataFrame({"id": ids, "fold": np.arange(12) % 3, "label": y, "pred": rng.random(12)})
            exp_dir = tmp_path / name
            exp_dir.mkdir()
            q._write_experiment_outputs(SimpleNamespace(name=name), dataset, oof, None, str(exp_dir),
                                        submission_frame)
            sub = pd.read_csv(exp_dir / "submission.csv")
            assert list(sub["clip"]) == test_ids
            assert np.allclose(sub["probability"], oof["pred"].mean())
            assert len(pd.read_csv(exp_dir / "test.csv")) == 0
        result = blend(names, [load_predictions(str(tmp_path / n)) for n in names], method,
                       schema.BLEND_METHODS[method].tiny())
        write_blend(str(tmp_path / "blend"), result)
    sub = pd.read_csv(tmp_path / "blend" / "submission.csv")
    assert list(sub["clip"]) == test_ids
    assert np.allclose(sub["probability"], result["oof"]["pred"].mean())
    assert caplog.text.count("none of the 3 test clips has a prediction") == 3  # a, b and the blend
    assert "blend submission: none of the 3 test clips" in caplog.text


@pytest.mark.parametrize("blend_yaml, problem", [
    ("{method: {name: weights, iterations: 0}}", "blend.method.iterations: must be >= 1"),
    ("{method: {name: stacking, model: lasso}}", "blend.method.model"),
    ("{method: {name: stacking, regularization: 0}}", "blend.method.regularization: must be > 0"),
    ("{method: mean, metric: f1}", "blend.metric: 'f1' (a string) is not a metric; choose one of: auc, log_loss, lwlrap"),
])
def test_blend_settings_are_validated(tmp_path, blend_yaml, problem):
    from pipeline.config import ConfigError

    path = tmp_path / "queue.yaml"
    path.write_text(textwrap.dedent(QUEUE.replace("{method: METHOD}", blend_yaml)))
    with pytest.raises(ConfigError) as err:
        load_queue(str(path))
    assert problem in str(err.value)


def test_blend_parameters_reach_the_method(tmp_path):
    path = tmp_path / "queue.yaml"
    path.write_text(textwrap.dedent(QUEUE.replace(
        "{method: METHOD}", "{method: {name: stacking, model: ridge, regularization: 2.5}, metric: lwlrap}")))
    blend_settings = load_queue(str(path)).blend
    assert blend_settings.metric == "lwlrap"
    assert blend_settings.method.params == schema.StackingBlendParams(model="ridge", regularization=2.5)


def test_a_blend_path_the_pipeline_cannot_write_is_logged_not_a_traceback(tmp_path, rng, capsys, caplog):
    """output/blend a regular file (or any OwnershipError / OSError in the blend): logged naming the path,
    nothing written over it, and the queue still prints its summary and writes the report."""
    import pipeline.queue as q
    from pipeline.blend.stage import run_blend

    path = write_finished_queue(tmp_path, rng, method="mean")
    queue = load_queue(path)
    paths = q.Paths(queue.output_dir)
    blend_path = tmp_path / "output" / "blend"
    blend_path.write_bytes(b"my own blend\n")
    with caplog.at_level("ERROR", logger="pipeline"):
        assert run_blend(queue, paths.output) is None
    assert str(blend_path) in caplog.text
    assert blend_path.read_bytes() == b"my own blend\n"
    assert q._run_locked(queue, paths, [e.name for e in queue.experiments], force=False, blend_only=True) == 0
    assert "good" in capsys.readouterr().out  # the summary was printed
    assert blend_path.read_bytes() == b"my own blend\n"
    assert (tmp_path / "output" / "summary.csv").is_file()


def test_the_blend_uses_the_data_loaded_for_the_summary(tmp_path, rng, monkeypatch):
    import pipeline.queue as q

    path = write_finished_queue(tmp_path, rng, method="mean")
    queue = load_queue(path)
    paths = q.Paths(queue.output_dir)
    calls = []
    real = results.current_data
    monkeypatch.setattr(results, "current_data", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr("pipeline.report.build.write_report_safely", lambda *a, **k: None)
    assert q._run_locked(queue, paths, [e.name for e in queue.experiments], force=False, blend_only=True) == 0
    assert len(calls) == 1
    assert (tmp_path / "output" / "blend" / "scores.json").is_file()


@pytest.mark.parametrize("value", [5, [[1]], "t0.aiff", [True]])
def test_edited_all_test_ids_refuses_the_blend_naming_the_file(tmp_path, rng, value):
    from pipeline.blend.stage import run_blend

    path = write_finished_queue(tmp_path, rng, method="mean")
    queue = load_queue(path)
    scores_path = tmp_path / "output" / "good" / "scores.json"
    scores_path.write_text(json.dumps(dict(json.loads(scores_path.read_text()), all_test_ids=value)))
    assert run_blend(queue, queue.output_dir) is None
    error = json.loads((tmp_path / "output" / "blend" / "error.json").read_text())["error"]
    assert str(scores_path) in error and "all_test_ids" in error


def test_an_edited_blend_error_json_never_breaks_the_printed_summary(tmp_path, rng):
    import pipeline.queue as q

    path = write_finished_queue(tmp_path, rng, method="mean")
    queue = load_queue(path)
    paths = q.Paths(queue.output_dir)
    summary = q.write_summary(queue, paths)
    (tmp_path / "output" / "blend").mkdir()
    (tmp_path / "output" / "blend" / "error.json").write_text("[1, 2]")
    assert "blend: unreadable" in q.format_summary(summary)


# ----------------------------------------------------------------------------- issue 18: a saved blend re-applied


@pytest.mark.parametrize("method", ["mean", "rank_mean", "weights", "stacking"])
@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_saved_weights_reapplied_to_the_test_predictions_give_the_blends_test_predictions(rng, method, task):
    """What --predict does with new audio: weights.json (as written and read back) applied to the experiments'
    test predictions reproduces the blend's test predictions."""
    from pipeline.blend.methods import apply_saved

    if task == "binary":
        names, loaded = binary_problem(rng, n=200, signals=(1.0, 0.7, 0.3))
    else:
        ids, targets = [f"c{i}" for i in range(150)], ("a", "b", "c")
        y = np.eye(3)[rng.integers(0, 3, 150)]
        names, loaded = ["e0", "e1"], []
        for s in (1.0, 0.5):
            p = np.exp(s * y + rng.normal(size=y.shape))
            t = rng.random((20, 3))
            loaded.append(experiment(ids, np.arange(150) % 3, y, p / p.sum(1, keepdims=True), [f"t{i}" for i in
                                     range(20)], t / t.sum(1, keepdims=True), task=task, targets=targets,
                                     submission="table"))
    params = schema.WeightsBlendParams(iterations=5) if method == "weights" else None  # a few steps: fast
    result = blend(names, loaded, method, params)
    weights = json.loads(json.dumps(result["weights"]))  # the file's round trip
    cols = layout.prediction_columns_of(result["test"].columns)
    again = apply_saved(weights, [item["test"][cols].to_numpy(float) for item in loaded], task)
    np.testing.assert_allclose(again, result["test"][cols].to_numpy(float), rtol=0, atol=1e-12)


def test_a_saved_blend_that_does_not_describe_its_method_is_a_blend_error():
    from pipeline.blend.methods import apply_saved

    with pytest.raises(BlendError, match="does not describe a weights blend"):
        apply_saved({"method": "weights", "experiments": ["a"], "weights": {"b": 1.0}}, [np.zeros((2, 1))], "binary")
    with pytest.raises(BlendError, match="cannot be re-applied"):
        apply_saved({"method": "median", "experiments": ["a"]}, [np.zeros((2, 1))], "binary")
