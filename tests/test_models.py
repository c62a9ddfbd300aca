"""Every registered model: builds on a tiny input, trains one step, saves and reloads identically.

The test list is generated from the registry, so a newly registered model is tested automatically.
"""

import dataclasses

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from pipeline import schema  # noqa: E402
from pipeline.models.registry import MODELS, build_model, prior_bias  # noqa: E402

# Tiny hyperparameters per family so the whole registry trains in seconds.
TINY = {
    "inceptiontime": {"filters": 4, "depth": 3, "bottleneck": 4},
}
INPUTS = {"inceptiontime": [(32, 4), (64,)]}


def cases():
    for name in MODELS.names():
        for shape in INPUTS.get(name, [(32, 4)]):
            yield name, shape


def tiny_params(name, **overrides):
    return schema.MODELS[name](**{**TINY.get(name, {}), **overrides})


def test_registry_matches_schema():
    assert set(MODELS.names()) == set(schema.MODELS)


def test_unknown_model_lists_choices():
    with pytest.raises(KeyError, match="is not a model; choose one of: .*inceptiontime"):
        build_model("xcepton", None, input_shape=(8, 4), n_outputs=1, task="binary")


@pytest.mark.parametrize("name,shape", list(cases()))
@pytest.mark.parametrize("task,n_out", [("binary", 1), ("multiclass", 3)])
def test_model_trains_and_round_trips(tmp_path, rng, name, shape, task, n_out):
    keras.utils.set_random_seed(0)
    x = rng.normal(size=(8, *shape)).astype("float32")
    y = np.eye(n_out, dtype="float32")[rng.integers(0, n_out, 8)] if task == "multiclass" else rng.integers(0, 2, (8, 1)).astype("float32")
    model = build_model(name, tiny_params(name), input_shape=shape, n_outputs=n_out, task=task,
                        output_bias=prior_bias(np.clip(y, 0.1, 0.9), task))
    model.compile(optimizer="adam", loss="categorical_crossentropy" if task == "multiclass" else "binary_crossentropy")
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    pred = model.predict_on_batch(x)
    assert pred.shape == (8, n_out) and pred.dtype == np.float32 and np.isfinite(pred).all()
    path = str(tmp_path / "m.keras")
    model.save(path)
    again = keras.models.load_model(path)
    np.testing.assert_allclose(again.predict_on_batch(x), pred, rtol=1e-5, atol=1e-6)


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
