"""Every registered model: builds on a tiny input, trains one step, saves and reloads identically.

The test list is generated from pipeline.schema.MODELS (each entry's preset and preset_inputs), so a newly registered model is tested automatically.
"""

import dataclasses

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from pipeline import schema  # noqa: E402
from pipeline.errors import QueueError  # noqa: E402
from pipeline.models.build import build_model, check_model  # noqa: E402
from pipeline.models.heads import prior_bias  # noqa: E402
from pipeline.registry import UnknownNameError  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_report")  # the report: tests/test_report.py

# Families too large for both tasks at test speed run the binary case only.
BINARY_ONLY = {"xception"}


def cases():
    """Every registered Keras family on each of its preset inputs; the multiclass head once per family."""
    for entry in schema.MODELS.entries():
        assert entry.preset_inputs, f"model {entry.name!r} has no preset_inputs in pipeline.schema.MODELS"
        if entry.kind != "keras":
            continue
        for i, shape in enumerate(entry.preset_inputs):
            for task, n_out in (("binary", 1), ("multiclass", 3)):
                if task == "multiclass" and (entry.name in BINARY_ONLY or i > 0):
                    continue
                yield entry.name, shape, task, n_out


def tiny_params(name, **overrides):
    return schema.MODELS[name].tiny(**overrides)


def test_unknown_model_lists_choices():
    with pytest.raises(UnknownNameError, match="is not a model; choose one of: .*inceptiontime"):
        build_model("xcepton", None, input_shape=(8, 4), n_outputs=1, task="binary")


@pytest.mark.parametrize("name", list(schema.MODELS))
def test_every_preset_passes_its_family_check(name):
    check_model(name, tiny_params(name))


@pytest.mark.parametrize("name,shape,task,n_out", list(cases()))
def test_model_trains_and_round_trips(tmp_path, rng, name, shape, task, n_out):
    keras.utils.set_random_seed(0)
    x = rng.normal(size=(8, *shape)).astype("float32")
    y = np.eye(n_out, dtype="float32")[rng.integers(0, n_out, 8)] if task == "multiclass" else rng.integers(0, 2, (8, 1)).astype("float32")
    model = build_model(name, tiny_params(name), input_shape=shape, n_outputs=n_out, task=task,
                        output_bias=prior_bias(np.clip(y, 0.1, 0.9), task))
    ce = "categorical_crossentropy" if task == "multiclass" else "binary_crossentropy"
    if isinstance(model.output, dict):  # SED: clipwise [B, C] and framewise [B, frames, C]
        targets = {"clipwise": y, "framewise": np.repeat(y[:, None], shape[0], axis=1)}
        model.compile(optimizer="adam", loss={"clipwise": ce, "framewise": "binary_crossentropy"})
    else:
        targets = y
        model.compile(optimizer="adam", loss=ce)
    loss = model.train_on_batch(x, targets)
    assert np.isfinite(loss).all()
    pred = model.predict_on_batch(x)
    preds = pred if isinstance(pred, dict) else {"output": pred}
    if isinstance(pred, dict):
        assert set(pred) == {"clipwise", "framewise"}
        assert pred["framewise"].shape == (8, shape[0], n_out)  # back at the input's frame count
    clip = preds.get("clipwise", preds.get("output"))
    assert clip.shape == (8, n_out)
    for p in preds.values():
        assert p.dtype == np.float32 and np.isfinite(p).all()
    path = str(tmp_path / "m.keras")
    model.save(path)
    again = keras.models.load_model(path)
    reloaded = again.predict_on_batch(x)
    reloaded = reloaded if isinstance(reloaded, dict) else {"output": reloaded}
    for key, p in preds.items():
        np.testing.assert_allclose(reloaded[key], p, rtol=1e-5, atol=1e-6)


def classical_cases():
    """Every registered scikit-learn family on each of its preset inputs, for each task."""
    for entry in schema.MODELS.entries():
        if entry.kind == "sklearn":
            for shape in entry.preset_inputs:
                for task, n_out in (("binary", 1), ("multiclass", 3), ("multilabel", 2)):
                    yield entry.name, shape, task, n_out


@pytest.mark.parametrize("name,shape,task,n_out", list(classical_cases()))
def test_classical_model_fits_predicts_and_round_trips(tmp_path, rng, name, shape, task, n_out):
    """Built from the registry, fitted on examples whose first channel's level sets the class, pickled and reloaded."""
    from pipeline.models.classical import pool_features
    from pipeline.train_classical import load_classical, save_classical

    n = 60
    level = rng.integers(0, n_out if task == "multiclass" else 2, n)
    x = rng.normal(size=(n, *shape)).astype("float32")
    if len(shape) == 2:  # [T, C]: channel 0 carries the class
        x[:, :, 0] += 3 * level[:, None]
    else:  # a waveform: its one channel
        x += 3 * level[:, None]
    if task == "multiclass":
        y = np.eye(n_out, dtype="float32")[level]
    else:
        y = np.repeat(level[:, None], n_out, axis=1).astype("float32")
    model = schema.MODELS[name].load()(tiny_params(name), input_shape=shape, n_outputs=n_out, task=task, seed=0)
    assert model.inputs[0].shape == (None, *shape) and model.outputs[0].shape == (None, n_out)
    model.fit(pool_features(x, percentiles=model.percentiles), y)
    pred = model.predict_on_batch(x)
    assert pred.shape == (n, n_out) and pred.dtype == np.float32
    assert np.isfinite(pred).all() and (pred >= 0).all() and (pred <= 1).all()
    if task == "multiclass":
        np.testing.assert_allclose(pred.sum(axis=1), 1.0, rtol=1e-5)
    decided = pred.argmax(axis=1) if task == "multiclass" else (pred[:, 0] > 0.5)
    assert (decided == level).mean() > 0.9
    path = str(tmp_path / "model.joblib")
    save_classical(model, path)
    np.testing.assert_array_equal(load_classical(path).predict_on_batch(x), pred)


def test_prior_bias_starts_at_class_prior(rng):
    y = (rng.random((1000, 1)) < 0.2).astype("float32")
    model = build_model("inceptiontime", tiny_params("inceptiontime"), input_shape=(16, 4), n_outputs=1,
                        task="binary", output_bias=prior_bias(y, "binary"))
    # Zero the last hidden features: the output is then the sigmoid of the bias alone.
    dense = model.get_layer("classifier")
    w, b = dense.get_weights()
    dense.set_weights([np.zeros_like(w), b])
    p = model.predict_on_batch(rng.normal(size=(4, 16, 4)).astype("float32"))
    np.testing.assert_allclose(p, y.mean(), atol=1e-3)


def test_residual_variant_adds_shortcuts():
    plain = build_model("inceptiontime", tiny_params("inceptiontime", depth=6), input_shape=(16, 4), n_outputs=1, task="binary")
    res = build_model("inceptiontime", tiny_params("inceptiontime", depth=6, residual=True), input_shape=(16, 4),
                      n_outputs=1, task="binary")
    names = [layer.name for layer in res.layers]
    assert "block3_shortcut_add" in names and "block6_shortcut_add" in names
    assert not any("shortcut" in layer.name for layer in plain.layers)
    assert dataclasses.replace(tiny_params("inceptiontime"), residual=True).residual
    # The summary names the variant (pipeline.queue reads it from the registry, not from the params).
    assert schema.MODELS["inceptiontime"].describe(tiny_params("inceptiontime", residual=True)) == "inceptiontime_residual"
    assert schema.MODELS["inceptiontime"].describe(tiny_params("inceptiontime")) == "inceptiontime"
    assert schema.MODELS["sed"].describe(tiny_params("sed")) == "sed"


# ----------------------------------------------------------------------------- SED


def test_sed_clipwise_is_attention_weighted_framewise(rng):
    from pipeline.models.layers import AttentionPooling, FrameInterpolation

    att = rng.normal(size=(2, 5, 3)).astype("float32")
    frames = rng.random((2, 5, 3)).astype("float32")
    w = np.exp(att) / np.exp(att).sum(axis=1, keepdims=True)
    got = keras.ops.convert_to_numpy(AttentionPooling()([att, frames]))
    np.testing.assert_allclose(got, (w * frames).sum(axis=1), rtol=1e-5)
    # Interpolating a constant sequence keeps it constant; lengths come back exactly.
    const = np.full((1, 4, 2), 0.3, "float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(FrameInterpolation(11)(const)), 0.3, rtol=1e-6)


def test_sed_training_views_share_weights(rng):
    from pipeline.models.sed import training_view

    model = build_model("sed", tiny_params("sed"), input_shape=(30, 16), n_outputs=2, task="multilabel")
    x = rng.normal(size=(3, 30, 16)).astype("float32")
    full = model.predict_on_batch(x)
    clip = training_view(model).predict_on_batch(x)
    packed = training_view(model, framewise=True).predict_on_batch(x)
    np.testing.assert_allclose(clip, full["clipwise"], rtol=1e-6)
    assert packed.shape == (3, 31, 2)
    np.testing.assert_allclose(packed[:, 0], full["clipwise"], rtol=1e-6)
    np.testing.assert_allclose(packed[:, 1:], full["framewise"], rtol=1e-6)


def test_sed_application_backbone_loads_local_weights(tmp_path):
    shape = (32, 32, 3)
    keras.utils.set_random_seed(1)
    source = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=shape)
    path = str(tmp_path / "backbone.weights.h5")
    source.save_weights(path)
    params = tiny_params("sed", backbone="MobileNetV2", weights=path, base_trainable=False)
    model = build_model("sed", params, input_shape=shape[:2], n_outputs=1, task="binary")
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    assert not backbone.trainable
    for a, b in zip(backbone.get_weights(), source.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert model.output["framewise"].shape[1] == 32


def test_sed_weights_need_an_existing_absolute_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        check_model("sed", tiny_params("sed", backbone="EfficientNetB0", weights=str(tmp_path / "missing.h5")))
    with pytest.raises(QueueError, match="absolute path"):
        check_model("sed", tiny_params("sed", backbone="EfficientNetB0", weights="imagenet"))
    with pytest.raises(QueueError, match="built-in cnn"):
        check_model("sed", tiny_params("sed", weights=str(tmp_path)))


# ----------------------------------------------------------------------------- Xception


def test_xception_imagenet_without_local_file_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    expected = str(tmp_path / "keras_home" / "models" / "xception_weights_tf_dim_ordering_tf_kernels_notop.h5")
    with pytest.raises(FileNotFoundError) as err:
        check_model("xception", tiny_params("xception", weights="imagenet"))
    assert expected in str(err.value) and "nothing is downloaded" in str(err.value)
    with pytest.raises(FileNotFoundError):
        build_model("xception", tiny_params("xception", weights="imagenet"), input_shape=(20, 16), n_outputs=1,
                    task="binary")
    with pytest.raises(QueueError, match="absolute path"):
        check_model("xception", tiny_params("xception", weights="weights.h5"))


def test_xception_loads_weights_from_a_path_the_test_writes(tmp_path):
    keras.utils.set_random_seed(3)
    source = keras.applications.Xception(include_top=False, weights=None, input_shape=(71, 71, 3))
    path = str(tmp_path / "xception_backbone.weights.h5")
    source.save_weights(path)
    model = build_model("xception", tiny_params("xception", weights=path, base_trainable=True,
                                                     fine_tune_from="block13_sepconv1"),
                        input_shape=(20, 16), n_outputs=1, task="binary")
    backbone = model.get_layer("xception")
    for a, b in zip(backbone.get_weights(), source.get_weights()):
        np.testing.assert_array_equal(a, b)
    trainable = {layer.name for layer in backbone.layers if layer.trainable and layer.weights}
    assert "block13_sepconv1" in trainable and "block12_sepconv1" not in trainable
    frozen = build_model("xception", tiny_params("xception", base_trainable=False), input_shape=(20, 16),
                         n_outputs=1, task="binary")
    assert not frozen.get_layer("xception").trainable_weights


@pytest.mark.slow
def test_xception_imagenet_fails_before_training(tmp_path, monkeypatch):
    import json
    import textwrap

    from pipeline.cli import main

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras_home"))
    queue = tmp_path / "queue.yaml"
    queue.write_text(textwrap.dedent("""
        defaults:
          data: {name: synthetic_whale, n_train: 24, n_test: 0, seed: 1}
          features: {name: mel, n_fft: 128, hop_length: 64, n_mels: 16}
          cache: {workers: 1}
          folds: {n_splits: 2}
          train: {epochs: 1, batch_size: 8}
        experiments:
          - name: xception_imagenet
            model: {name: xception, weights: imagenet, image_size: 71}
    """))
    assert main([str(queue)]) == 1
    exp = tmp_path / "output" / "xception_imagenet"
    status = json.loads((exp / "status.json").read_text())
    assert status["state"] == "failed" and status["stage"] == "train"
    assert "xception_weights_tf_dim_ordering_tf_kernels_notop.h5" in status["error"]
    assert str(tmp_path / "empty_keras_home" / "models") in status["error"]
    assert not (exp / "fold0").exists()  # no fold started


def test_vit_mean_pooling_and_padding():
    model = build_model("vit", tiny_params("vit", pooling="mean", patch_size=(7, 5)), input_shape=(20, 16),
                        n_outputs=2, task="multilabel")
    assert model.get_layer("patches").output.shape[1] == 3 * 4  # ceil(20/7) x ceil(16/5) patches
    assert "class_token" not in [layer.name for layer in model.layers]
    assert model.get_layer("stem_conv").filters == 4  # the preset's convolutional stem
    plain = build_model("vit", tiny_params("vit", conv_stem=0), input_shape=(20, 16), n_outputs=1, task="binary")
    assert "stem_conv" not in [layer.name for layer in plain.layers]


def test_xception_fine_tune_from_must_name_a_layer():
    with pytest.raises(QueueError, match="fine_tune_from must name a backbone layer"):
        check_model("xception", tiny_params("xception", base_trainable=True, fine_tune_from="block99_conv"))


def test_xception_backbone_output_cuts_the_backbone(tmp_path):
    keras.utils.set_random_seed(4)
    source = keras.applications.Xception(include_top=False, weights=None, input_shape=(71, 71, 3))
    path = str(tmp_path / "xception_backbone.weights.h5")
    source.save_weights(path)
    model = build_model("xception", tiny_params("xception", weights=path, base_trainable=True,
                                                     backbone_output="block4_pool"),
                        input_shape=(20, 16), n_outputs=1, task="binary")
    backbone = model.get_layer("xception_cut")
    assert backbone.layers[-1].name == "block4_pool"
    assert backbone.output.shape[-1] == 728  # the entry flow's width
    assert "block5_sepconv1" not in [layer.name for layer in backbone.layers]
    np.testing.assert_array_equal(backbone.get_layer("block4_sepconv2").get_weights()[0],
                                  source.get_layer("block4_sepconv2").get_weights()[0])
    # Keras' 0.99 would leave the moving statistics at their initial values for several epochs.
    assert {layer.momentum for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)} == {0.9}
    x = np.random.default_rng(0).normal(size=(2, 20, 16)).astype("float32")
    assert model.predict(x, verbose=0).shape == (2, 1)

    with pytest.raises(QueueError, match="backbone_output must name a backbone layer"):
        check_model("xception", tiny_params("xception", backbone_output="block99_pool"))
    with pytest.raises(QueueError, match=r"fine_tune_from must name a backbone layer up to block4_pool"):
        check_model("xception", tiny_params("xception", base_trainable=True, backbone_output="block4_pool",
                                             fine_tune_from="block13_sepconv1"))


def test_xception_weights_path_is_relative_to_the_queue_file(tmp_path):
    import textwrap

    from pipeline.config import ConfigError, load_queue

    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "xception.h5").write_bytes(b"")
    text = textwrap.dedent("""
        defaults:
          data: {name: synthetic_whale}
          features: {name: mel}
        experiments:
          - name: xception_local
            model: {name: xception, weights: weights/xception.h5}
          - name: xception_imagenet
            model: {name: xception, weights: imagenet}
    """)
    (tmp_path / "queue.yaml").write_text(text)
    queue = load_queue(str(tmp_path / "queue.yaml"))
    assert queue.experiments[0].model.params.weights == str(tmp_path / "weights" / "xception.h5")
    assert queue.experiments[1].model.params.weights == "imagenet"
    (tmp_path / "queue.yaml").write_text(text.replace("weights/xception.h5", "weights/missing.h5"))
    with pytest.raises(ConfigError, match=r"experiments\[0\].model.weights: file not found: .*weights/missing.h5"):
        load_queue(str(tmp_path / "queue.yaml"))
