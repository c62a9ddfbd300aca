"""The prediction stage (windows, extra cache windows) and the fold job run from its pickle alone."""

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

tf = pytest.importorskip("tensorflow")

from pipeline.fold_strategies import ClipStrategy  # noqa: E402
from pipeline.predict import predict_examples  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = 8  # the model's input length (frames)


def max_over_time_model(length=T):
    """Predicts the max over time of channel 0: [B, length, 2] -> [B, 1] (a call detector with a known answer)."""
    import keras

    x = keras.Input((length, 2))
    out = keras.layers.Lambda(lambda v: keras.ops.max(v[..., :1], axis=1))(x)
    return keras.Model(x, out)


def examples(ids, xs):
    return tf.data.Dataset.from_tensor_slices((tf.constant(ids), np.asarray(xs, np.float32)))


def test_a_call_in_the_last_third_of_a_long_example_is_found_by_its_window():
    model = max_over_time_model()
    x = np.zeros((3 * T // 2, 2), np.float32)  # 1.5 input lengths
    x[T + 2, 0] = 0.7  # the call: only in the last window
    x[1, 1] = 5.0  # the other channel is not a call
    alone = model.predict_on_batch(x[None, -T:])[0]
    first = model.predict_on_batch(x[None, :T])[0]
    assert first[0] == 0.0 and alone[0] == pytest.approx(0.7)
    ids, preds = predict_examples(model, examples(["r0", "r1"], [x, np.zeros_like(x)]), batch_size=4)
    assert ids == ["r0", "r1"]
    np.testing.assert_array_equal(preds, [alone, [0.0]])
    # mean over the two windows [0, 8) and [4, 12): (0 + 0.7) / 2
    _, mean = predict_examples(model, examples(["r0"], [x]), batch_size=4, aggregate="mean")
    np.testing.assert_allclose(mean, [[0.35]], rtol=1e-6)


def test_examples_of_the_input_length_are_predicted_as_they_are(rng):
    model = max_over_time_model()
    xs = rng.normal(size=(5, T, 2)).astype(np.float32)
    ids, preds = predict_examples(model, examples([f"c{i}" for i in range(5)], xs), batch_size=2)
    assert ids == [f"c{i}" for i in range(5)]
    np.testing.assert_array_equal(preds, np.asarray(model.predict_on_batch(xs), np.float32))


def test_bad_aggregate_is_refused():
    with pytest.raises(ValueError, match="aggregate must be 'max' or 'mean'. Received: aggregate='median'"):
        predict_examples(max_over_time_model(), examples(["a"], np.zeros((1, T, 2))), batch_size=1,
                         aggregate="median")


class FakeCache:
    """A FeatureCache-like object: first windows per clip plus the later windows of long clips."""

    def __init__(self, first, extra):
        self.first, self.extra = first, extra

    def dataset(self, split):
        return examples(*zip(*self.first))

    def extra_windows(self, split):
        return examples(*zip(*self.extra)) if self.extra else None

    def window_count(self, split):
        return len(self.extra)


def window(value):
    x = np.zeros((T, 2), np.float32)
    x[3, 0] = value
    return x


@pytest.mark.parametrize("aggregate,expected", [("max", [0.2, 0.9, 0.5, 0.1]), ("mean", [0.2, 0.6, 0.4, 0.1])])
def test_extra_windows_of_long_clips_are_combined_per_clip(aggregate, expected):
    model = max_over_time_model()
    first = [("a", window(0.2)), ("b", window(0.3)), ("c", window(0.5)), ("d", window(0.1))]
    # b: two later windows (consecutive); c: one; d none; z is not among the predicted clips (another fold).
    extra = [("b", window(0.9)), ("b", window(0.6)), ("z", window(1.0)), ("c", window(0.3))]
    cache = FakeCache(first, extra)
    strategy = ClipStrategy()
    ids, preds = predict_examples(model, cache.dataset("test"), batch_size=3, aggregate=aggregate,
                                  extra_windows=strategy.extra_windows(cache, "test"))
    assert ids == ["a", "b", "c", "d"]
    np.testing.assert_allclose(preds[:, 0], expected, rtol=1e-6)
    # without extra windows every clip keeps its first-window prediction
    no_extra = FakeCache(first, [])
    _, plain = predict_examples(model, no_extra.dataset("test"), batch_size=3, aggregate=aggregate,
                                extra_windows=strategy.extra_windows(no_extra, "test"))
    np.testing.assert_allclose(plain[:, 0], [0.2, 0.3, 0.5, 0.1], rtol=1e-6)


# ----------------------------------------------------------------------------- test-time augmentation (issue 17)


def first_frame_model(length=T):
    """Predicts channel 0 of the first frame: [B, length, 2] -> [B, 1] (not shift invariant: a known answer)."""
    import keras

    x = keras.Input((length, 2))
    return keras.Model(x, keras.layers.Lambda(lambda v: v[:, 0, :1])(x))


TTA_QUEUE = """
experiments:
  - name: tta
    data: {name: synthetic_whale, n_train: 40, n_test: 10}
    features: {name: mel, n_fft: 64, hop_length: 32, n_mels: 8}
    model: inceptiontime
    predict: {tta: TTA}
"""


def tta_experiment(tmp_path, tta):
    """An experiment with ``predict.tta`` = tta (YAML text); mel at 2000 Hz / hop 32: 62.5 frames per second."""
    import yaml

    from pipeline.config import parse_queue

    text = textwrap.dedent(TTA_QUEUE).replace("TTA", tta)
    return parse_queue(yaml.safe_load(text), source="q.yaml", base_dir=str(tmp_path)).experiments[0]


def test_the_identity_view_alone_equals_no_tta(tmp_path, rng):
    model = first_frame_model()
    views = ClipStrategy().windows(tta_experiment(tmp_path, "[{shift: 0.0}]"), (T, 2))["views"]
    assert len(views) == 1
    clips = examples([f"c{i}" for i in range(5)], rng.normal(size=(5, T, 2)))
    long = examples(["r0", "r1"], rng.normal(size=(2, 3 * T, 2)))
    for ds in (clips, long):
        ids, plain = predict_examples(model, ds, batch_size=2)
        tta_ids, tta = predict_examples(model, ds, batch_size=2, views=views)
        assert tta_ids == ids and tta.dtype == plain.dtype
        np.testing.assert_array_equal(tta, plain)


def test_a_shift_view_is_applied_to_every_model_input_and_views_are_averaged(tmp_path):
    model = first_frame_model()
    exp = tta_experiment(tmp_path, "[{}, {shift: 0.032}, {shift: -0.016, gain_db: -6}]")  # 0, +2, -1 frames
    views = ClipStrategy().windows(exp, (T, 2))["views"]
    x = np.tile(np.arange(T, dtype=np.float32)[:, None], (1, 2))  # frame t holds t: asymmetric in time
    _, preds = predict_examples(model, examples(["a"], [x]), batch_size=1, views=views)
    # the first frame after a circular shift by +2 is frame T-2, by -1 frame 1; a log-mel gain is added (dB)
    np.testing.assert_allclose(preds, [[(0.0 + (T - 2) + (1.0 - 6.0)) / 3]], rtol=1e-6)
    # a long example: the views act on each window (here [0, 8) and [8, 16)), then windows are combined
    _, long = predict_examples(model, examples(["r"], [np.concatenate([x, x + 100])]), batch_size=4, hop=T,
                               aggregate="max", views=views)
    np.testing.assert_allclose(long, [[(100.0 + (T - 2 + 100) + (101.0 - 6.0)) / 3]], rtol=1e-6)


def test_a_waveform_gain_view_scales_the_samples():
    from pipeline.predict import tta_views
    from pipeline.schema import TtaView

    (view,) = tta_views((TtaView(shift=0.001, gain_db=-20.0),), feature="waveform", steps_per_second=2000)
    x = np.arange(6, dtype=np.float32).reshape(1, 6)
    np.testing.assert_allclose(view(x), [[0.4, 0.5, 0.0, 0.1, 0.2, 0.3]], rtol=1e-6)  # 2 samples later, x 0.1


def test_views_pickle_with_the_fold_job_that_carries_them():
    """A student's fold job holds its teacher's prediction settings, views included; a job must pickle."""
    import pickle

    from pipeline.predict import tta_views
    from pipeline.schema import TtaView

    views = tta_views((TtaView(shift=0.001, gain_db=-20.0),), feature="waveform", steps_per_second=2000)
    x = np.arange(6, dtype=np.float32).reshape(1, 6)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(views))[0](x), views[0](x))


QUEUE = """
experiments:
  - name: tiny
    data: {name: synthetic_whale, n_train: 24, n_test: 6, seed: 3}
    features: {name: complexity, n_fft: 128, hop_length: 64, n_mels: 16}
    cache: {workers: 1, chunk_size: 8}
    folds: {n_splits: 2, seed: 0}
    train: {epochs: 1, batch_size: 8}
    model: {name: inceptiontime, filters: 4, depth: 1, bottleneck: 4, kernel_sizes: [4]}
"""


@pytest.mark.slow
def test_a_pickled_fold_job_gives_the_same_fold_in_a_fresh_process(tmp_path):
    import dataclasses

    import yaml

    from pipeline.config import parse_queue
    from pipeline.data import load_dataset
    from pipeline.fold_job import run_fold_job
    from pipeline.fold_loop import plan_folds
    from pipeline.folds import ensure_folds
    from pipeline.cache.build import ensure_features

    exp = parse_queue(yaml.safe_load(textwrap.dedent(QUEUE)), source="q.yaml", base_dir=str(tmp_path)).experiments[0]
    dataset = load_dataset(exp.data.name, exp.data.params)
    cache = ensure_features(dataset, str(tmp_path / "cache"), data=exp.data, audio=exp.audio, features=exp.features,
                            cache=exp.cache, predict=exp.predict, progress=False)
    folds = ensure_folds(dataset, exp.data, exp.folds, str(tmp_path / "folds"))
    job = plan_folds(exp, dataset, cache, folds, str(tmp_path / "here")).job(0)

    (tmp_path / "job.pkl").write_bytes(pickle.dumps(dataclasses.replace(job, exp_dir=str(tmp_path / "there"))))
    # The job file is the one this test just wrote (a fold job's contract is to be picklable).
    code = ("import pathlib, pickle, sys; from pipeline.fold_job import run_fold_job; "
            "run_fold_job(pickle.loads(pathlib.Path(sys.argv[1]).read_bytes()))")
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "job.pkl")], cwd=tmp_path, env=env, check=True,
                   timeout=600)
    oof, test = run_fold_job(job)

    for where in ("here", "there"):  # the job writes only its fold folder, the done marker last
        assert os.listdir(tmp_path / where) == ["fold0"]
        assert set(os.listdir(tmp_path / where / "fold0")) == {"oof.csv", "test.csv", "model.keras", "history.csv",
                                                              "done.json", "tb"}
    for name in ("oof.csv", "test.csv"):
        assert (tmp_path / "here" / "fold0" / name).read_bytes() == (tmp_path / "there" / "fold0" / name).read_bytes()
    written = pd.read_csv(tmp_path / "there" / "fold0" / "oof.csv", dtype={"id": str}, float_precision="round_trip")
    pd.testing.assert_frame_equal(written, oof, check_dtype=False)  # targets are float32 in memory
    assert sorted(oof["id"]) == sorted(job.valid_ids) and len(test) == len(job.test_ids)
    done = pd.read_json(tmp_path / "here" / "fold0" / "done.json", typ="series")
    assert done["metric"] == "auc" and done["score"] == done["auc"]


MEAN_BLEND = {"method": "mean", "experiments": ["x", "y"], "weights": {"x": 0.5, "y": 0.5}}


@pytest.mark.parametrize("weights", [None, MEAN_BLEND])
def test_predict_submission_rows_follow_the_files_with_skipped_ones_at_their_place(tmp_path, weights):
    """--predict (and pipeline.exported, which calls the same writer): one row per file in the listing's order,
    whatever order the predictions come in; a skipped file's row (the mean prediction) at its place."""
    from pipeline.predict_new import NewAudio, dataset_for, write_blend_and_submission

    files = ["a.wav", "b.wav", "c.wav", "d.wav"]
    audio = NewAudio(source=str(tmp_path), files=pd.DataFrame({"id": files, "path": files}))
    meta = {"task": "binary", "targets": ["label"], "submission": "whale"}
    predicted = {"x": pd.DataFrame({"id": ["d.wav", "a.wav", "c.wav"], "pred": [0.4, 0.2, 0.6]}),  # b.wav skipped
                 "y": pd.DataFrame({"id": ["c.wav", "a.wav", "d.wav"], "pred": [0.6, 0.2, 0.4]})}
    datasets = {name: dataset_for("synthetic_whale", audio, meta) for name in predicted}
    write_blend_and_submission(str(tmp_path), predicted, datasets, weights)
    sub = pd.read_csv(tmp_path / "submission.csv")
    assert list(sub["clip"]) == files
    np.testing.assert_allclose(sub["probability"], [0.2, 0.4, 0.6, 0.4])


def test_predict_takes_one_audio_file_too(tmp_path):
    """--predict PATH on a single file was read as a YAML data block ('cannot read it as YAML: utf-8 codec ...')."""
    from pipeline.predict_new import new_audio

    (tmp_path / "site").mkdir()
    clip = tmp_path / "site" / "Call 1.WAV"
    clip.write_bytes(b"RIFF")
    audio = new_audio(str(clip))
    assert audio.files.to_dict("records") == [{"id": "Call 1.WAV", "path": str(clip)}]
