"""The classical families (logreg, hgb): pooled features, unknown labels, and their fold jobs.

The registry-wide checks (every task, every preset input, pickling) are generated in test_models.py.
"""

import dataclasses
import os
import pickle
import time

import numpy as np
import pandas as pd
import pytest

from pipeline import schema
from pipeline.models.classical import pool_features

pytestmark = pytest.mark.usefixtures("no_report")  # the report: tests/test_report.py

CLASSICAL = [name for name in schema.MODELS if schema.MODELS[name].kind == "sklearn"]


def build(name, task, n_out, shape=(4, 1)):
    return schema.MODELS[name].load()(schema.MODELS[name].tiny(), input_shape=shape, n_outputs=n_out, task=task,
                                      seed=0)


def test_pooling_gives_each_channels_statistics_over_time():
    ramp = np.arange(11, dtype=np.float32)  # 0..10: mean 5, percentiles 1, 5, 9
    x = np.stack([ramp, 2 * ramp], axis=1)[None]  # [1, T=11, C=2]
    pooled = pool_features(x, percentiles=(10, 50, 90))
    expected = [5, 10, ramp.std(), 2 * ramp.std(), 1, 2, 5, 10, 9, 18]  # statistic-major: means, stds, p10, p50, p90
    np.testing.assert_allclose(pooled, [expected], rtol=1e-6)
    wave = pool_features(np.stack([ramp, -ramp]), percentiles=(50,))  # a waveform [n, samples]: one channel
    np.testing.assert_allclose(wave, [[5, ramp.std(), 5], [-5, ramp.std(), -5]], rtol=1e-6)
    with pytest.raises(ValueError, match=r"got shape \(2, 3, 4, 5\)"):
        pool_features(np.zeros((2, 3, 4, 5)))


@pytest.mark.parametrize("name", CLASSICAL)
def test_multilabel_classes_train_on_their_known_labels_only(name, rng):
    """Unknown (NaN) labels are left out per class, not read as 0; a class with one known value predicts its prior."""
    f = rng.uniform(-1, 1, 400)
    y = np.full((400, 3), np.nan, np.float32)
    y[:, 0] = f > 0
    y[f > 0.5, 0] = np.nan  # read as 0, these would teach "high f -> absent"
    y[::2, 1] = 1.0  # class 1: only positives known -> prior 1
    # class 2: nothing known -> 0
    x = np.repeat(f[:, None, None], 4, axis=1)  # [n, T=4, C=1]: every statistic is f (std 0)
    model = build(name, "multilabel", 3)
    model.fit(pool_features(x, percentiles=model.percentiles), y)
    pred = model.predict_on_batch(np.full((2, 4, 1), [[[0.9]], [[-0.9]]], np.float32))
    assert pred[0, 0] > 0.5 > pred[1, 0]  # tiny presets: hgb fits only 10 trees
    np.testing.assert_array_equal(pred[:, 1:], [[1, 0], [1, 0]])


@pytest.mark.parametrize("name", CLASSICAL)
def test_multiclass_gives_a_class_missing_from_training_probability_zero(name, rng):
    f = rng.uniform(-1, 1, 300)
    y = np.zeros((300, 3), np.float32)
    y[np.arange(300), (f > 0).astype(int)] = 1  # class 2 never occurs
    y[:5] = np.nan  # rows with unknown targets are left out
    model = build(name, "multiclass", 3)
    model.fit(pool_features(np.repeat(f[:, None, None], 4, axis=1), percentiles=model.percentiles), y)
    pred = model.predict_on_batch(np.full((1, 4, 1), 0.9, np.float32))
    assert pred[0, 1] > 0.5 and pred[0, 2] == 0
    np.testing.assert_allclose(pred.sum(axis=1), 1, rtol=1e-6)


# ----------------------------------------------------------------------------- fold jobs on clip data

QUEUE = """
defaults:
  data: {name: table, csv: train.csv, audio_dir: audio, test_csv: test.csv}
  audio: {sample_rate: 2000, duration: 1.0}
  features: {name: mel, n_fft: 128, hop_length: 64, n_mels: 16}
  cache: {workers: 1}
  folds: {n_splits: 2, seed: 0}
  train: {batch_size: 8, seed: 3}
experiments:
  - name: logreg
    model: {name: logreg}
  - name: hgb
    model: {name: hgb, max_iter: 20, min_samples_leaf: 3}
"""


@pytest.fixture(scope="module")
def tone_data(tmp_path_factory):
    """A table of 40 one-second clips (half hold a 300 Hz tone in noise, an easy signal), 6 test clips,
    its feature cache and folds: ``(experiments, dataset, cache, folds, folder)``."""
    import yaml
    from conftest import write_tone_clips

    from pipeline.cache.build import ensure_features
    from pipeline.config import parse_queue
    from pipeline.data import load_dataset
    from pipeline.folds import ensure_folds

    folder = tmp_path_factory.mktemp("tones")
    rows = write_tone_clips(folder / "audio", 46, seed=11)
    pd.DataFrame(rows[:40]).to_csv(folder / "train.csv", index=False)
    pd.DataFrame(rows[40:])[["file"]].to_csv(folder / "test.csv", index=False)
    exps = parse_queue(yaml.safe_load(QUEUE), source="q.yaml", base_dir=str(folder)).experiments
    exp = exps[0]
    dataset = load_dataset(exp.data.name, exp.data.params)
    cache = ensure_features(dataset, str(folder / "cache"), data=exp.data, audio=exp.audio, features=exp.features,
                            cache=exp.cache, predict=exp.predict, progress=False)
    folds = ensure_folds(dataset, exp.data, exp.folds, str(folder / "folds"))
    return {e.name: e for e in exps}, dataset, cache, folds, folder


@pytest.mark.slow
@pytest.mark.parametrize("name", CLASSICAL)
def test_a_classical_fold_job_writes_its_fold_and_a_pickled_job_agrees(tone_data, name):
    from pipeline.fold_job import run_fold_job
    from pipeline.fold_loop import plan_folds
    from pipeline.metrics import auc
    from pipeline.predict import predict_examples
    from pipeline.train_classical import load_classical

    exps, dataset, cache, folds, folder = tone_data
    job = plan_folds(exps[name], dataset, cache, folds, str(folder / name / "here")).job(0)
    started = time.time()
    oof, test = run_fold_job(job)
    wall = time.time() - started
    again = pickle.loads(pickle.dumps(job))
    oof_again, _ = run_fold_job(dataclasses.replace(again, exp_dir=str(folder / name / "there")))

    here = folder / name / "here" / "fold0"
    assert sorted(os.listdir(here)) == ["done.json", "history.csv", "model.joblib", "oof.csv", "test.csv"]
    for file in ("oof.csv", "test.csv"):  # deterministic: the same bytes from the pickled job
        assert (here / file).read_bytes() == (folder / name / "there" / "fold0" / file).read_bytes()
    pd.testing.assert_frame_equal(oof, oof_again)
    assert sorted(oof["id"]) == sorted(job.valid_ids) and len(test) == 6
    assert auc(oof[["label"]].to_numpy(), oof[["pred"]].to_numpy()) > 0.9  # the tone is easy to find
    done = pd.read_json(here / "done.json", typ="series")
    assert done["epochs"] == 1 and done["best_epoch"] == 1 and done["metric"] == "auc"
    assert 0 < done["seconds"] <= wall  # the fit's seconds, reported in the summary's fold_seconds
    assert list(pd.read_csv(here / "history.csv").columns) == ["epoch", "seconds"]
    # The saved model is the fold model: through the prediction stage it predicts the test clips as the fold did.
    ids, preds = predict_examples(load_classical(str(here / "model.joblib")), cache.dataset("test"), batch_size=8)
    np.testing.assert_allclose(preds[:, 0], test.set_index("id").loc[ids, "pred"], rtol=1e-6)


LOGREG_QUEUE = """
experiments:
  - name: logreg_a
    data: {name: synthetic_whale, n_train: 40, n_test: 10, seed: 3}
    features: {name: mel, n_fft: 128, hop_length: 64, n_mels: 16}
    cache: {workers: 1, chunk_size: 16}
    folds: {n_splits: 2, seed: 1}
    model: logreg
"""


@pytest.mark.slow
def test_predict_and_export_reproduce_a_classical_experiments_test_predictions(tmp_path):
    """Trained in the pool of fold jobs (--jobs 2: worker processes); --predict loads the fold models from
    model.joblib; --export copies them and pipeline.exported runs them side by side like an all-folds TFLite
    model: both give the experiment's own test.csv."""
    from pipeline.cli import main
    from pipeline.exported import main as exported_main

    path = tmp_path / "queue.yaml"
    path.write_text(LOGREG_QUEUE)
    assert main([str(path), "--jobs", "2"]) == 0
    out, test_audio = tmp_path / "output", tmp_path / "input" / "synthetic_whale" / "test"
    want = pd.read_csv(out / "logreg_a" / "test.csv").set_index("id")["pred"]
    assert main([str(path), "--predict", str(test_audio), "--predict-name", "again"]) == 0
    again = pd.read_csv(out / "predict" / "again" / "logreg_a.csv").set_index("id")["pred"]
    assert main([str(path), "--export"]) == 0
    assert {"export.json", "fold0.joblib", "fold1.joblib"} <= set(os.listdir(out / "export" / "logreg_a"))
    assert exported_main([str(out / "export"), str(test_audio), "--out", str(tmp_path / "preds")]) == 0
    exported = pd.read_csv(tmp_path / "preds" / "logreg_a.csv").set_index("id")["pred"]
    for got in (again, exported):
        assert sorted(got.index) == sorted(want.index)
        np.testing.assert_allclose(got.loc[want.index], want, rtol=0, atol=1e-12)
