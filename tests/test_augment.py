"""Augmentation: what each transform may change, mixup's label arithmetic, seeding, and that
validation / test pipelines are never augmented and always deterministic."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from pipeline import augment  # noqa: E402
from pipeline.errors import QueueError  # noqa: E402
from pipeline.schema import AugmentSettings  # noqa: E402
from pipeline.train import class_weights, input_pipelines, sample_weights  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_report")  # the report: tests/test_report.py

ALL_ON = AugmentSettings(time_shift=0.2, gain_db=6.0, noise_std=0.1, time_mask=5, time_masks=2, freq_mask=4,
                         freq_masks=2, mixup_alpha=0.4)


def masked_set(settings, x, seed=0):
    ds = tf.data.Dataset.from_tensors((x, np.zeros(1, "float32")))
    out, _ = next(iter(augment.augment_examples(ds, settings, feature="mel", seed=seed)))
    return out.numpy()


def test_time_masks_change_only_a_band_of_frames(rng):
    x = rng.normal(size=(40, 12)).astype("float32")
    for seed in range(5):
        out = masked_set(AugmentSettings(time_mask=6), x, seed)
        changed = np.flatnonzero((out != x).any(axis=1))
        if len(changed):
            assert changed.max() - changed.min() + 1 == len(changed) <= 6  # one contiguous band
            np.testing.assert_allclose(out[changed], x.mean(), rtol=1e-5)  # filled with the clip mean
        unchanged = np.setdiff1d(np.arange(40), changed)
        np.testing.assert_array_equal(out[unchanged], x[unchanged])


def test_freq_masks_change_only_a_band_of_channels(rng):
    x = rng.normal(size=(40, 12)).astype("float32")
    seen = 0
    for seed in range(5):
        out = masked_set(AugmentSettings(freq_mask=4), x, seed)
        changed = np.flatnonzero((out != x).any(axis=0))
        seen += len(changed)
        if len(changed):
            assert changed.max() - changed.min() + 1 == len(changed) <= 4
            np.testing.assert_allclose(out[:, changed], x.mean(), rtol=1e-5)
        np.testing.assert_array_equal(np.delete(out, changed, axis=1), np.delete(x, changed, axis=1))
    assert seen > 0


def test_waveform_time_mask_covers_samples(rng):
    x = rng.normal(size=(200,)).astype("float32")
    ds = tf.data.Dataset.from_tensors((x, np.zeros(1, "float32")))
    out, _ = next(iter(augment.augment_examples(ds, AugmentSettings(time_mask=50), feature="waveform", seed=2)))
    changed = np.flatnonzero(out.numpy() != x)
    assert len(changed) <= 50
    if len(changed):
        assert changed.max() - changed.min() + 1 == len(changed)


def test_shift_and_gain_and_noise(rng):
    x = rng.normal(size=(30, 8)).astype("float32")
    seed = tf.constant([1, 2], tf.int64)
    shifted = augment.shift_gain_noise(x, AugmentSettings(time_shift=0.3), feature="mel", seed=seed).numpy()
    assert any(np.array_equal(shifted, np.roll(x, s, axis=0)) for s in range(-9, 10))
    gained = augment.shift_gain_noise(x, AugmentSettings(gain_db=6.0), feature="mel", seed=seed).numpy()
    offset = gained - x  # dB features: a gain is one added constant
    assert np.ptp(offset) < 1e-5 and abs(offset[0, 0]) <= 6.0
    wave = rng.normal(size=(100,)).astype("float32")
    scaled = augment.shift_gain_noise(wave, AugmentSettings(gain_db=6.0), feature="waveform", seed=seed).numpy()
    ratio = scaled / wave
    assert np.ptp(ratio) < 1e-5 and 10 ** (-6 / 20) - 1e-6 <= ratio[0] <= 10 ** (6 / 20) + 1e-6
    noisy = augment.shift_gain_noise(x, AugmentSettings(noise_std=0.1), feature="mel", seed=seed).numpy()
    assert 0.05 < np.std(noisy - x) / np.std(x) < 0.15
    again = augment.shift_gain_noise(x, AugmentSettings(noise_std=0.1), feature="mel", seed=seed).numpy()
    np.testing.assert_array_equal(noisy, again)  # stateless: same seed, same draw


def test_mixup_preserves_label_sums_and_mixes_consistently(rng):
    x = rng.normal(size=(16, 10, 4)).astype("float32")
    y = np.eye(5, dtype="float32")[rng.integers(0, 5, 16)]
    frames = rng.integers(0, 2, (16, 10, 5)).astype("float32")
    mx, my, lam, partner = augment.mixup(x, {"clipwise": y, "framewise": frames}, alpha=0.4,
                                         seed=tf.constant([3, 4], tf.int64))
    lam, partner = lam.numpy(), partner.numpy()
    assert ((lam >= 0) & (lam <= 1)).all() and sorted(partner) == list(range(16))
    np.testing.assert_allclose(my["clipwise"].numpy().sum(axis=1), 1.0, rtol=1e-6)  # each row is still a distribution
    np.testing.assert_allclose(my["clipwise"].numpy().sum(), y.sum(), rtol=1e-5)
    w = lam[:, None, None]
    np.testing.assert_allclose(mx.numpy(), w * x + (1 - w) * x[partner], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(my["framewise"].numpy(), w * frames + (1 - w) * frames[partner], rtol=1e-5, atol=1e-6)


def examples(rng, n=24):
    x = rng.normal(size=(n, 20, 6)).astype("float32")
    y = rng.integers(0, 2, (n, 1)).astype("float32")
    return x, y, tf.data.Dataset.from_tensor_slices((x, y))


def collect(ds):
    return [tuple(t.numpy() for t in batch) for batch in ds]


def test_validation_is_never_augmented_and_is_deterministic(rng):
    x, y, ds = examples(rng)
    kwargs = dict(batch_size=8, shuffle_buffer=64, seed=0, fold=1, augment=ALL_ON, feature="mel",
                  weights=class_weights(y, "binary"))
    _, valid = input_pipelines(ds, ds, **kwargs)
    _, valid_again = input_pipelines(ds, ds, **kwargs)
    got = collect(valid)
    assert all(len(batch) == 2 for batch in got)  # no sample weights either
    np.testing.assert_array_equal(np.concatenate([b[0] for b in got]), x)  # untouched, in order
    np.testing.assert_array_equal(np.concatenate([b[1] for b in got]), y)
    for a, b in zip(got, collect(valid_again)):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_training_batches_are_augmented_and_replay_per_epoch(rng):
    x, y, ds = examples(rng)
    kwargs = dict(batch_size=8, shuffle_buffer=64, seed=0, fold=1, augment=ALL_ON, feature="mel")
    train_data, _ = input_pipelines(ds, ds, **kwargs)
    first = collect(train_data(3))
    again = collect(input_pipelines(ds, ds, **kwargs)[0](3))  # a resumed run rebuilds the pipeline
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    other = collect(train_data(4))
    assert not np.array_equal(first[0][0], other[0][0])
    flat = np.concatenate([b[0] for b in first])
    assert not any(np.allclose(flat[0], row) for row in x)  # augmented (mixup, noise, ...)
    labels = np.concatenate([b[1] for b in first])
    assert ((labels >= 0) & (labels <= 1)).all() and 0 < labels.mean() < 1


def test_no_augmentation_keeps_plain_shuffled_batches(rng):
    x, y, ds = examples(rng)
    train_data, _ = input_pipelines(ds, ds, batch_size=8, shuffle_buffer=64, seed=0, fold=0)
    flat = np.concatenate([b[0] for b in collect(train_data(0))])
    assert sorted(map(bytes, flat)) == sorted(map(bytes, x))  # a permutation of the examples


def test_class_weights_balance_the_classes():
    y = np.array([[1], [0], [0], [0]], "float32")
    w = class_weights(y, "binary")
    np.testing.assert_allclose(w, [[4 / 6], [4 / 2]])
    sw = sample_weights(tf.constant(y), w).numpy()
    np.testing.assert_allclose(sw, [2.0, 2 / 3, 2 / 3, 2 / 3], rtol=1e-6)
    assert sw[y[:, 0] == 1].sum() == pytest.approx(sw[y[:, 0] == 0].sum())
    onehot = np.eye(3, dtype="float32")[[0, 0, 1, 2]]
    np.testing.assert_allclose(sample_weights(tf.constant(onehot), class_weights(onehot, "multiclass")).numpy(),
                               [4 / 6, 4 / 6, 4 / 3, 4 / 3], rtol=1e-6)


def test_class_weights_ignore_unknown_labels():
    # masked_bce data: NaN marks an unknown label; weights count known labels only and stay finite.
    nan = np.nan
    y = np.array([[1, nan], [0, 1], [0, 0], [nan, 0]], "float32")
    w = class_weights(y, "multilabel")
    np.testing.assert_allclose(w, [[3 / 4, 3 / 4], [3 / 2, 3 / 2]])
    sw = sample_weights(tf.constant(y), w).numpy()
    assert np.isfinite(sw).all()
    np.testing.assert_allclose(sw, [3 / 2, (3 / 4 + 3 / 2) / 2, 3 / 4, 3 / 4], rtol=1e-6)
    assert sample_weights(tf.constant([[nan, nan]], tf.float32), w).numpy()[0] == 0.0


@pytest.mark.slow
def test_fold_loop_with_augmentation_schedule_and_class_weights(tmp_path):
    """The wiring end to end: SED clipwise training, every augmentation, a cosine schedule with
    AdamW and balanced class weights train, checkpoint and predict through the fold loop."""
    import json
    import textwrap

    import pandas as pd

    from pipeline.cli import main

    queue = tmp_path / "queue.yaml"
    queue.write_text(textwrap.dedent("""
        defaults:
          data: {name: synthetic_whale, n_train: 32, n_test: 8, seed: 2}
          features: {name: mel, n_fft: 128, hop_length: 64, n_mels: 16}
          cache: {workers: 1}
          folds: {n_splits: 2}
          train: {epochs: 2, batch_size: 8, optimizer: adamw, class_weight: balanced}
          schedule: {name: cosine, warmup_epochs: 0.5}
          augment: {time_shift: 0.1, gain_db: 3, noise_std: 0.05, time_mask: 4, freq_mask: 3, mixup_alpha: 0.4}
        experiments:
          - name: sed_augmented
            model: {name: sed, widths: [4, 8]}
            loss: {name: sed, framewise_weight: 0.5}
    """))
    assert main([str(queue)]) == 0
    exp = tmp_path / "output" / "sed_augmented"
    assert json.loads((exp / "status.json").read_text())["state"] == "done"
    oof = pd.read_csv(exp / "oof.csv")
    assert len(oof) == 32 and oof["pred"].between(0, 1).all()
    history = pd.read_csv(exp / "fold0" / "history.csv")
    assert len(history) == 2 and history["learning_rate"].iloc[0] != history["learning_rate"].iloc[1]
