"""Leakage guards: no information from a validation fold or from test labels reaches a model.

(a) shuffled labels give chance OOF AUC: tests/test_faults.py::test_shuffled_labels_give_chance_oof_auc.
(b) copies of a clip stay in its fold; a fold's training stream holds only that fold's training clips.
(c) no dataset-level normalisation: a clip's features do not depend on the other clips
    (normalisation is learned inside the models, by batch norm on training batches only).
(d) test labels (the synthetic answer keys) are never opened by training or blending
    (blending: tests/test_blend.py; training: here).
Plus the disk guard: a cache that cannot fit fails before anything is written.
"""

import builtins
import collections
import io
import os
import textwrap

import numpy as np
import pandas as pd
import pytest

from pipeline import schema
from pipeline.data.base import Dataset
from pipeline.features import compute_features
from pipeline.folds import make_folds

pytestmark = pytest.mark.usefixtures("no_report")  # the report: tests/test_report.py


def test_duplicates_sharing_a_group_land_in_one_fold(rng):
    """Copies of a clip (same group) are never split between training and validation."""
    n = 120
    ids = [f"clip{i}.wav" for i in range(n)]
    # Every third clip has two copies (e.g. an oversampled or re-encoded duplicate).
    rows = []
    for i, clip in enumerate(ids):
        label = float(i % 3 == 0)
        rows.append((clip, clip, label))
        if i % 3 == 0:
            rows += [(f"{clip}#copy{c}", clip, label) for c in (1, 2)]
    frame = pd.DataFrame(rows, columns=["id", "group", "label"]).assign(path="x", split="train")
    ds = Dataset(manifest=frame, task="binary", targets=("label",), submission="table")
    folds = make_folds(ds, n_splits=5, seed=0).assign(group=frame["group"])
    assert (folds.groupby("group")["fold"].nunique() == 1).all()


def test_training_stream_holds_only_training_clips(tmp_path, rng):
    tf = pytest.importorskip("tensorflow")
    from pipeline.cache.read import labelled

    ids = [f"c{i}" for i in range(50)]
    x = rng.normal(size=(50, 3, 2)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((tf.constant(ids), x))
    train_ids = ids[::2]
    y = np.arange(len(train_ids), dtype="float32")[:, None]
    seen = collections.Counter()
    for i, xi, yi in labelled(ds, train_ids, y).as_numpy_iterator():
        clip = i.decode()
        seen[clip] += 1
        k = ids.index(clip)
        np.testing.assert_array_equal(xi, x[k])
        assert yi[0] == train_ids.index(clip)
    assert seen == collections.Counter(train_ids)


@pytest.mark.parametrize("name,params", [("mel", schema.MelParams()), ("complexity", schema.ComplexityParams()),
                                         ("waveform", schema.WaveformParams())])
def test_features_of_a_clip_do_not_depend_on_other_clips(rng, name, params):
    clips = rng.normal(size=(3, 4000)).astype("float32")
    clips[2] *= 50  # a very loud neighbour must not change anyone else's features
    alone = compute_features(name, params, clips[:1], sample_rate=2000)
    with_b = compute_features(name, params, clips[[0, 1]], sample_rate=2000)
    with_c = compute_features(name, params, clips[[0, 2]], sample_rate=2000)
    np.testing.assert_array_equal(alone[0], with_b[0])
    np.testing.assert_array_equal(alone[0], with_c[0])


@pytest.mark.slow
def test_training_never_opens_test_labels(tmp_path, monkeypatch):
    from pipeline.cli import main
    from pipeline.data.synthetic import ensure_synthetic_whale

    root = tmp_path / "whale"
    ensure_synthetic_whale(str(root), n_train=30, n_test=6, positive_fraction=0.5, seed=1)
    answer_keys = {"test_labels.csv", "truth.csv"}
    assert answer_keys <= set(os.listdir(root))
    opened = []
    real_open, real_io_open = builtins.open, io.open

    def spy(opener):
        def wrapped(file, *args, **kwargs):
            opened.append(os.path.basename(str(file)))
            return opener(file, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(builtins, "open", spy(real_open))
    monkeypatch.setattr(io, "open", spy(real_io_open))
    (tmp_path / "queue.yaml").write_text(textwrap.dedent("""
        defaults:
          data: {name: kaggle_whale, root: whale}
          features: {name: complexity, n_fft: 128, hop_length: 64, n_mels: 32}
          cache: {workers: 1}
          folds: {n_splits: 2}
          train: {epochs: 1, batch_size: 8}
          model: {name: inceptiontime, filters: 4, depth: 1, bottleneck: 4, kernel_sizes: [4]}
        experiments:
          - name: inceptiontime_a
        blend: {method: stacking}
    """))
    assert main([str(tmp_path / "queue.yaml")]) == 0
    assert "train.csv" in opened  # the spy sees the files the pipeline reads
    assert not answer_keys & set(opened)


def test_disk_guard_fails_before_writing(tmp_path, monkeypatch):
    from pipeline.cache import build
    from pipeline.config import parse_queue

    queue = parse_queue({"experiments": [{"name": "a", "data": {"name": "synthetic_whale", "n_train": 20, "n_test": 0},
                                          "features": "mel", "model": "inceptiontime"}]},
                        source="q.yaml", base_dir=str(tmp_path))
    exp = queue.experiments[0]
    frame = pd.DataFrame({"id": [f"c{i}" for i in range(20)], "path": "x", "split": "train", "label": [0.0, 1.0] * 10})
    ds = Dataset(manifest=frame, task="binary", targets=("label",), submission="whale")
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(build.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(build.CacheError, match="needs about .* GB but only .* GB are free"):
        build.ensure_features(ds, str(tmp_path / "cache"), data=exp.data, audio=exp.audio, features=exp.features,
                              cache=exp.cache, predict=exp.predict)
    assert not any((tmp_path / "cache").glob("*/*.tfrecord"))
