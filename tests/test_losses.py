"""Losses, schedules and optimizers: registries, hand-computed values, serialisation round trips."""

import math

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from pipeline import schema  # noqa: E402
from pipeline.errors import QueueError  # noqa: E402
from pipeline.losses import make_loss  # noqa: E402
from pipeline.registry import UnknownNameError  # noqa: E402
from pipeline.schedules import make_optimizer, make_schedule  # noqa: E402

# Tasks each loss supports (masked_bce needs one sigmoid per label).
TASKS = {name: ("binary", "multiclass") for name in schema.LOSSES}
TASKS["masked_bce"] = ("binary", "multilabel")


def value(loss, y, p):
    return float(keras.ops.convert_to_numpy(loss(np.asarray(y, "float32"), np.asarray(p, "float32"))))


def bce(y, p):
    y, p = np.asarray(y, float), np.asarray(p, float)
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))


def targets(rng, task, n=6, c=3):
    if task == "multiclass":
        return np.eye(c, dtype="float32")[rng.integers(0, c, n)], rng.dirichlet(np.ones(c), n).astype("float32")
    c = 1 if task == "binary" else c
    return rng.integers(0, 2, (n, c)).astype("float32"), rng.uniform(0.05, 0.95, (n, c)).astype("float32")


def test_unknown_loss_lists_choices():
    with pytest.raises(UnknownNameError, match="is not a loss; choose one of: .*focal"):
        make_loss("fokal", None, "binary")


@pytest.mark.parametrize("name,task", [(n, t) for n in sorted(schema.LOSSES) for t in TASKS[n]])
def test_loss_config_round_trip(rng, name, task):
    loss = make_loss(name, schema.LOSSES[name].tiny(), task)
    assert isinstance(loss, keras.losses.Loss)
    config = loss.get_config()
    again = type(loss).from_config(config)
    assert again.get_config() == config
    revived = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(revived) is type(loss) and revived.get_config() == config
    y, p = targets(rng, task)
    assert np.isfinite(value(loss, y, p))
    assert value(again, y, p) == pytest.approx(value(loss, y, p), rel=1e-6)
    assert value(revived, y, p) == pytest.approx(value(loss, y, p), rel=1e-6)


def test_multiclass_bce_is_categorical():
    loss = make_loss("bce", schema.BCEParams(), "multiclass")
    assert value(loss, [[0, 1, 0]], [[0.2, 0.5, 0.3]]) == pytest.approx(-math.log(0.5), rel=1e-5)


def test_bce_hand_computed():
    loss = make_loss("bce", schema.BCEParams(), "binary")
    assert value(loss, [[1], [0]], [[0.8], [0.4]]) == pytest.approx((-math.log(0.8) - math.log(0.6)) / 2, rel=1e-5)
    smoothed = make_loss("bce", schema.BCEParams(label_smoothing=0.2), "binary")
    assert value(smoothed, [[1]], [[0.8]]) == pytest.approx(bce([0.9], [0.8]), rel=1e-5)


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_focal_with_gamma_zero_is_cross_entropy(rng, task):
    y, p = targets(rng, task)
    focal = make_loss("focal", schema.FocalParams(gamma=0.0), task)
    plain = make_loss("bce", schema.BCEParams(), task)
    assert value(focal, y, p) == pytest.approx(value(plain, y, p), rel=1e-5)
    # gamma > 0 down-weights easy examples: never above plain cross-entropy without balancing
    assert value(make_loss("focal", schema.FocalParams(gamma=2.0), task), y, p) < value(plain, y, p)


def test_masked_bce_equals_bce_over_known_labels():
    loss = make_loss("masked_bce", schema.MaskedBCEParams(), "multilabel")
    nan = float("nan")
    y = [[1, nan, 0], [nan, 1, nan]]
    p = [[0.8, 0.3, 0.4], [0.9, 0.7, 0.1]]
    per_example = [bce([1, 0], [0.8, 0.4]), bce([1], [0.7])]
    assert value(loss, y, p) == pytest.approx(np.mean(per_example), rel=1e-5)
    # nothing unknown: plain BCE
    full = [[1, 0, 0], [0, 1, 1]]
    assert value(loss, full, p) == pytest.approx(value(keras.losses.BinaryCrossentropy(), full, p), rel=1e-5)
    # an example with no known label contributes 0
    assert value(loss, [[nan, nan, nan]], [[0.1, 0.2, 0.3]]) == 0.0


def test_masked_bce_gives_zero_gradient_to_unknown_labels():
    import tensorflow as tf

    loss = make_loss("masked_bce", schema.MaskedBCEParams(label_smoothing=0.1), "multilabel")
    y = tf.constant([[1.0, float("nan"), 0.0], [float("nan"), 1.0, 0.0]])
    p = tf.Variable([[0.8, 0.3, 0.4], [0.9, 0.7, 0.1]])
    with tf.GradientTape() as tape:
        out = loss(y, p)
    grad = tape.gradient(out, p).numpy()
    assert np.isfinite(grad).all()
    assert grad[0, 1] == 0.0 and grad[1, 0] == 0.0
    assert grad[0, 0] != 0.0 and grad[1, 1] != 0.0


def test_sed_two_way_loss_on_synthetic_tensors(rng):
    params = schema.SEDLossParams(clipwise_weight=0.7, framewise_weight=0.3)
    loss = make_loss("sed", params, "multilabel")
    clip_y = rng.integers(0, 2, (4, 2)).astype("float32")
    clip_p = rng.uniform(0.1, 0.9, (4, 2)).astype("float32")
    frame_y = rng.integers(0, 2, (4, 5, 2)).astype("float32")
    frame_p = rng.uniform(0.1, 0.9, (4, 5, 2)).astype("float32")
    packed_y = np.concatenate([clip_y[:, None], frame_y], axis=1)
    packed_p = np.concatenate([clip_p[:, None], frame_p], axis=1)
    expected = 0.7 * bce(clip_y, clip_p) + 0.3 * bce(frame_y, frame_p)
    assert value(loss, packed_y, packed_p) == pytest.approx(expected, rel=1e-5)
    # clip labels only ([B, C]): just the clipwise term
    assert value(loss, clip_y, clip_p) == pytest.approx(0.7 * bce(clip_y, clip_p), rel=1e-5)
    # framewise weight 0: the frames do not matter
    clip_only = make_loss("sed", schema.SEDLossParams(framewise_weight=0.0), "multilabel")
    assert value(clip_only, packed_y, packed_p) == pytest.approx(bce(clip_y, clip_p), rel=1e-5)


def test_sed_loss_trains_the_packed_view(rng):
    from pipeline.models.build import build_model
    from pipeline.models.sed import training_view

    keras.utils.set_random_seed(0)
    model = build_model("sed", schema.SEDParams(widths=(4,)), input_shape=(12, 8), n_outputs=2, task="multilabel")
    view = training_view(model, framewise=True)
    view.compile(optimizer="adam", loss=make_loss("sed", schema.SEDLossParams(), "multilabel"))
    x = rng.normal(size=(4, 12, 8)).astype("float32")
    y = rng.integers(0, 2, (4, 13, 2)).astype("float32")
    assert np.isfinite(view.train_on_batch(x, y))


def test_symmetric_ce_hand_computed():
    ce_only = make_loss("symmetric_ce", schema.SymmetricCEParams(alpha=1.0, beta=0.0), "binary")
    assert value(ce_only, [[1], [0]], [[0.8], [0.4]]) == pytest.approx(bce([1, 0], [0.8, 0.4]), rel=1e-5)
    reverse = make_loss("symmetric_ce", schema.SymmetricCEParams(alpha=0.0, beta=1.0, log_floor=1e-4), "binary")
    # y = 1, p = 0.8: -(0.8 log 1 + 0.2 log 1e-4)
    assert value(reverse, [[1]], [[0.8]]) == pytest.approx(-0.2 * math.log(1e-4), rel=1e-5)
    multi = make_loss("symmetric_ce", schema.SymmetricCEParams(alpha=0.0, beta=1.0), "multiclass")
    assert value(multi, [[0, 1, 0]], [[0.2, 0.5, 0.3]]) == pytest.approx(-(0.2 + 0.3) * math.log(1e-4), rel=1e-5)


def test_dice_bce_hand_computed():
    loss = make_loss("dice_bce", schema.DiceBCEParams(dice_weight=1.0, smooth=1.0), "binary")
    y, p = [[1], [0]], [[0.8], [0.4]]
    dice = (2 * 0.8 + 1) / ((0.8 + 0.4) + 1 + 1)
    assert value(loss, y, p) == pytest.approx(bce([1, 0], [0.8, 0.4]) + 1 - dice, rel=1e-5)
    no_dice = make_loss("dice_bce", schema.DiceBCEParams(dice_weight=0.0), "binary")
    assert value(no_dice, y, p) == pytest.approx(bce([1, 0], [0.8, 0.4]), rel=1e-5)


def test_masked_bce_rejects_multiclass():
    with pytest.raises(QueueError, match="binary or multilabel"):
        make_loss("masked_bce", schema.MaskedBCEParams(), "multiclass")


# ----------------------------------------------------------------------------- schedules and optimizers


def lr_at(schedule, step):
    return float(keras.ops.convert_to_numpy(schedule(step)))


def test_cosine_with_warmup():
    s = make_schedule("cosine", schema.CosineScheduleParams(warmup_epochs=1, min_fraction=0.1), learning_rate=1.0,
                      steps_per_epoch=10, epochs=5)
    assert lr_at(s, 0) == pytest.approx(0.1)  # linear warm-up, first step > 0
    assert lr_at(s, 9) == pytest.approx(1.0)
    assert lr_at(s, 10) == pytest.approx(1.0)  # peak when the warm-up ends
    assert lr_at(s, 30) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)), rel=1e-5)
    assert lr_at(s, 50) == pytest.approx(0.1) and lr_at(s, 80) == pytest.approx(0.1)


def test_ramp_sustain_decay():
    params = schema.RampSustainDecayParams(start_fraction=0.1, min_fraction=0.0, ramp_epochs=2, sustain_epochs=1,
                                           decay=0.5)
    s = make_schedule("ramp_sustain_decay", params, learning_rate=1.0, steps_per_epoch=4, epochs=10)
    assert lr_at(s, 0) == pytest.approx(0.1)
    assert lr_at(s, 4) == pytest.approx(0.55)  # half way up the ramp (epoch 1)
    assert lr_at(s, 8) == pytest.approx(1.0) and lr_at(s, 11) == pytest.approx(1.0)  # sustain
    assert lr_at(s, 16) == pytest.approx(0.5) and lr_at(s, 20) == pytest.approx(0.25)  # decay 0.5 / epoch


def test_triangular_cyclic():
    s = make_schedule("cyclic", schema.CyclicScheduleParams(min_fraction=0.1, half_cycle_epochs=1), learning_rate=1.0,
                      steps_per_epoch=4, epochs=10)
    assert [round(lr_at(s, i), 4) for i in range(9)] == [0.1, 0.325, 0.55, 0.775, 1.0, 0.775, 0.55, 0.325, 0.1]


def test_constant_is_the_learning_rate():
    assert make_schedule("constant", schema.ConstantScheduleParams(), learning_rate=0.01, steps_per_epoch=3,
                         epochs=2) == 0.01


@pytest.mark.parametrize("name", list(schema.SCHEDULES))
def test_every_schedule_peaks_at_the_learning_rate(name):
    s = make_schedule(name, schema.SCHEDULES[name].tiny(), learning_rate=0.01, steps_per_epoch=7, epochs=5)
    rates = [lr_at(s, i) if not isinstance(s, float) else s for i in range(35)]
    assert all(0.0 <= r <= 0.01 * (1 + 1e-6) for r in rates) and max(rates) == pytest.approx(0.01, rel=1e-3)


@pytest.mark.parametrize("name", sorted(set(schema.SCHEDULES) - {"constant"}))
def test_schedule_config_round_trip(name):
    s = make_schedule(name, schema.SCHEDULES[name].tiny(), learning_rate=0.01, steps_per_epoch=7, epochs=5)
    again = type(s).from_config(s.get_config())
    assert again.get_config() == s.get_config()
    revived = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(s))
    assert [lr_at(revived, i) for i in (0, 5, 20)] == pytest.approx([lr_at(s, i) for i in (0, 5, 20)])


@pytest.mark.parametrize("optimizer,cls", [("adam", "Adam"), ("adamw", "AdamW"), ("sgd", "SGD")])
def test_optimizer_choice(optimizer, cls):
    train = schema.TrainSettings(optimizer=optimizer, weight_decay=0.01, momentum=0.8)
    opt = make_optimizer(train, 0.1)
    assert type(opt).__name__ == cls
    if optimizer == "adamw":
        assert opt.weight_decay == pytest.approx(0.01)
    if optimizer == "sgd":
        assert opt.momentum == pytest.approx(0.8) and opt.nesterov


def test_compiled_model_with_custom_loss_and_schedule_round_trips(tmp_path, rng):
    """The fold loop resumes from a .keras checkpoint: loss, schedule and optimizer state must reload."""
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="sigmoid")(inputs))
    schedule = make_schedule("cosine", schema.CosineScheduleParams(), learning_rate=0.01, steps_per_epoch=2, epochs=3)
    model.compile(optimizer=make_optimizer(schema.TrainSettings(optimizer="adamw"), schedule),
                  loss=make_loss("masked_bce", schema.MaskedBCEParams(label_smoothing=0.1), "multilabel"))
    x = rng.normal(size=(8, 4)).astype("float32")
    y = rng.integers(0, 2, (8, 3)).astype("float32")
    y[0, 1] = np.nan
    model.train_on_batch(x, y)
    path = str(tmp_path / "m.keras")
    model.save(path)
    again = keras.models.load_model(path)
    assert type(again.loss).__name__ == "MaskedBinaryCrossentropy"
    assert again.loss.get_config() == model.loss.get_config()
    assert type(again.optimizer._learning_rate).__name__ == "WarmupCosine"
    assert int(again.optimizer.iterations.numpy()) == 1
    # the next step continues identically (same schedule position, same optimizer moments)
    again.train_on_batch(x, y)
    model.train_on_batch(x, y)
    np.testing.assert_allclose(again.predict_on_batch(x), model.predict_on_batch(x), rtol=1e-5, atol=1e-6)
