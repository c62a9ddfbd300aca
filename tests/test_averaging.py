"""Weight averaging of a fold (issue 17): EMA in the optimizer, SWA / checkpoint averaging, batch-norm recompute."""

import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import keras  # noqa: E402

from pipeline import averaging  # noqa: E402
from pipeline.schema import SwaSettings  # noqa: E402
from pipeline.train import train_fold  # noqa: E402

N, T, C = 48, 16, 4  # examples, frames, channels


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, T, C)).astype(np.float32)
    y = (x[:, :, 0].mean(axis=1, keepdims=True) > 0).astype(np.float32)
    return x, y


def build():
    inp = keras.Input((T, C))
    h = keras.layers.Conv1D(4, 3, activation="relu")(inp)
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.BatchNormalization()(h))
    return keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(h))


def compiler(ema=None):
    def compile_model(model):
        extra = {} if ema is None else {"use_ema": True, "ema_momentum": ema}
        model.compile(optimizer=keras.optimizers.Adam(0.02, **extra), loss="binary_crossentropy")
    return compile_model


def fit_fold(fold_dir, *, epochs, ema=None, swa=None):
    """train_fold on the tiny problem (val_loss monitored, no early stop); the fold's model and its state folder."""
    x, y = data()

    def train_data(epoch):
        return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(N, seed=epoch).batch(8)

    valid = tf.data.Dataset.from_tensor_slices(data(1)).batch(8)
    return train_fold(build=build, compile_model=compiler(ema), train_data=train_data, valid_data=valid,
                      train_steps=N // 8, valid_steps=N // 8, fold_dir=str(fold_dir), fold=0, epochs=epochs,
                      patience=10, monitor="val_loss", seed=0, swa=swa)


def assert_same_weights(a, b):
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)


def checkpoint(fold_dir, epoch):
    from pipeline import layout

    return keras.models.load_model(os.path.join(fold_dir, layout.STATE, layout.checkpoint_name(epoch)))


@pytest.mark.slow
def test_ema_and_swa_use_the_validated_average_and_a_resumed_fold_gives_the_same_model(tmp_path):
    from pipeline import layout

    swa = SwaSettings(best=2)
    whole = fit_fold(tmp_path / "whole", epochs=3, ema=0.9, swa=swa)
    state = tmp_path / "whole" / layout.STATE
    losses = list(whole.history["val_loss"])
    best_two = sorted(int(e) + 1 for e in np.argsort(losses)[:2])
    kept = sorted(f for f in os.listdir(state) if f.startswith("swa-"))
    assert kept == sorted(layout.averaged_weights_name(e) for e in best_two)  # the other epoch's file is removed

    # Each kept epoch's weights are its EMA weights, the ones validated (SwapEMAWeights before validation).
    x_valid, y_valid = data(1)
    single = build()
    mean = None
    for e in best_two:
        single.load_weights(state / layout.averaged_weights_name(e))
        loss = np.mean(keras.losses.binary_crossentropy(y_valid, single.predict_on_batch(x_valid)))
        assert loss == pytest.approx(losses[e - 1], rel=1e-5)
        w = [v.numpy().astype(np.float64) for v in single.trainable_variables]
        mean = w if mean is None else [(a + b) / 2 for a, b in zip(mean, w)]
    # The fold's model: trainable weights the mean of the kept epochs' (batch norm statistics recomputed).
    for got, want in zip([v.numpy() for v in whole.model.trainable_variables], mean, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)

    # Interrupted after epoch 1. Its checkpoint holds the training weights, which follow the same trajectory as
    # without EMA (the average never feeds back; equal up to the rounding of Keras' in-place swap by addition).
    fit_fold(tmp_path / "resumed", epochs=1, ema=0.9, swa=swa)
    fit_fold(tmp_path / "plain", epochs=1)
    for a, b in zip(checkpoint(tmp_path / "resumed", 1).get_weights(), checkpoint(tmp_path / "plain", 1).get_weights(),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    single.load_weights(tmp_path / "resumed" / layout.STATE / layout.averaged_weights_name(1))
    assert not np.allclose(single.get_weights()[0], checkpoint(tmp_path / "resumed", 1).get_weights()[0])  # EMA
    # Resumed: the EMA state and the kept epochs come back with the checkpoint; the same fold model.
    resumed = fit_fold(tmp_path / "resumed", epochs=3, ema=0.9, swa=swa)
    assert_same_weights(resumed.model, whole.model)
    np.testing.assert_array_equal(resumed.model.predict_on_batch(x_valid), whole.model.predict_on_batch(x_valid))
    assert resumed.history.drop(columns="seconds").equals(whole.history.drop(columns="seconds"))


def test_averaging_identical_checkpoints_changes_nothing_and_two_average_to_their_mean(tmp_path):
    x, _ = data()
    model = build()
    model.save_weights(tmp_path / "a.weights.h5")
    before = model.predict_on_batch(x)
    averaging.average_weights(model, [str(tmp_path / "a.weights.h5")] * 3)
    np.testing.assert_array_equal(model.predict_on_batch(x), before)

    other = build()  # other initial weights
    other.save_weights(tmp_path / "b.weights.h5")
    averaging.average_weights(model, [str(tmp_path / "a.weights.h5"), str(tmp_path / "b.weights.h5")])
    for got, a, b in zip(model.get_weights(), build_loaded(tmp_path / "a.weights.h5").get_weights(),
                         other.get_weights(), strict=True):
        np.testing.assert_allclose(got, (a.astype(np.float64) + b) / 2, rtol=1e-6)


def build_loaded(path):
    model = build()
    model.load_weights(path)
    return model


def test_batch_norm_statistics_become_the_mean_over_training_batches(rng):
    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.BatchNormalization(momentum=0.99)(inp))
    batches = [rng.normal(loc=5.0, scale=s, size=(8, 3)).astype(np.float32) for s in (1.0, 2.0, 3.0)]
    used = averaging.recompute_batch_norm(model, [(b, None) for b in batches])
    bn = averaging.batch_norm_layers(model)[0]
    assert used == 3 and bn.momentum == 0.99  # restored
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([b.mean(0) for b in batches], 0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean([b.var(0) for b in batches], 0), rtol=1e-5)


@pytest.mark.parametrize("swa,values,expected", [
    ({"last": 2}, [0.5, 0.3, 0.4, 0.6], [3, 4]),
    ({"best": 2, "maximise": True}, [0.5, 0.3, 0.4, 0.6], [1, 4]),
    ({"best": 2, "maximise": False}, [0.5, 0.3, float("nan"), 0.6], [1, 2]),
    ({"best": 3, "maximise": True}, [0.5, float("nan"), 0.5, 0.1], [1, 3, 4]),  # NaN last; ties: earlier first
])
def test_kept_epochs(swa, values, expected):
    entries = [{"epoch": e + 1, "value": v} for e, v in enumerate(values)]
    assert [e["epoch"] for e in averaging.kept_epochs(entries, **swa)] == expected


def test_train_ema_switches_on_the_optimizers_average():
    from pipeline.schedules import make_optimizer
    from pipeline.schema import EmaSettings, TrainSettings

    for name in ("adam", "adamw", "sgd"):
        optimizer = make_optimizer(TrainSettings(optimizer=name, ema=EmaSettings(momentum=0.95)), 0.01)
        assert optimizer.use_ema and optimizer.ema_momentum == 0.95
        assert not make_optimizer(TrainSettings(optimizer=name), 0.01).use_ema
