"""Every registered Keras family exports (SavedModel and TFLite) to a model that computes what it computes.

The export traces each fold model without a ``training`` value; a layer that then runs in training mode
(batch statistics, dropout) makes the export predict something else, which the export's own check refuses.
The test list is generated from pipeline.schema.MODELS, so a newly registered family is tested automatically.
"""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from pipeline import schema  # noqa: E402
from pipeline.export import (EXPORT_TOLERANCE, ExportMismatch, all_folds_model, check_exported,  # noqa: E402
                             clipwise_model, save_exported)
from pipeline.exported import TFLiteModel  # noqa: E402
from pipeline.models.build import build_model  # noqa: E402

pytestmark = pytest.mark.slow

KERAS_FAMILIES = [entry.name for entry in schema.MODELS.entries() if entry.kind == "keras"]
# Presets that skip a trainable path: Xception's preset freezes the backbone (run in inference mode whatever the
# caller asks); trained, it is the family whose export ran its batch norms on batch statistics.
TRAINABLE = {"xception": {"base_trainable": True, "backbone_output": "block2_pool"}}


def trained(name, rng):
    """A tiny ``name`` model on its first preset input after a few training steps: its batch-norm moving
    statistics have left their initial values, so batch statistics and moving statistics differ."""
    shape = schema.MODELS[name].preset_inputs[0]
    keras.utils.set_random_seed(0)
    model = build_model(name, schema.MODELS[name].tiny(**TRAINABLE.get(name, {})), input_shape=shape, n_outputs=2, task="multilabel")
    x = (3 * rng.normal(size=(8, *shape)) + 1).astype("float32")
    y = rng.integers(0, 2, (8, 2)).astype("float32")
    if isinstance(model.output, dict):  # SED: saved as its outputs packed [B, 1 + frames, C], as with boxes
        from pipeline.models.sed import training_view

        model = training_view(model, framewise=True)
        y = np.repeat(y[:, None], 1 + shape[0], axis=1)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    for _ in range(3):
        model.train_on_batch(x, y)
    return model, x


@pytest.mark.parametrize("name", KERAS_FAMILIES)
def test_every_family_exports_to_models_that_reproduce_it(tmp_path, rng, name):
    model, x = trained(name, rng)
    wrapper = clipwise_model(model, "fold0")
    save_exported(wrapper, str(tmp_path / "fold0.savedmodel"), str(tmp_path / "fold0.tflite"))  # checks itself
    # And on inputs like the training data, in batches of other sizes than the check's.
    expected = keras.ops.convert_to_numpy(wrapper.predict_on_batch(x))
    tflite = TFLiteModel(str(tmp_path / "fold0.tflite"))
    np.testing.assert_allclose(tflite.predict_on_batch(x), expected, atol=EXPORT_TOLERANCE)
    np.testing.assert_allclose(np.concatenate([tflite.predict_on_batch(x[i:i + 1]) for i in range(len(x))]),
                               expected, atol=EXPORT_TOLERANCE)


def test_the_all_folds_model_exports_each_fold_in_inference_mode(tmp_path, rng):
    """The model pipeline.exported runs: the folds side by side [B, K * C], each as its Keras model predicts."""
    (first, x), (second, _) = trained("xception", rng), trained("xception", np.random.default_rng(1))
    expected = np.concatenate([first.predict_on_batch(x), second.predict_on_batch(x)], axis=1)
    save_exported(all_folds_model([first, second]), str(tmp_path / "folds.savedmodel"), str(tmp_path / "folds.tflite"))
    np.testing.assert_allclose(TFLiteModel(str(tmp_path / "folds.tflite")).predict_on_batch(x), expected,
                               atol=EXPORT_TOLERANCE)


def test_the_check_refuses_an_export_that_computes_something_else(tmp_path, rng):
    model, _ = trained("cnn1d", rng)
    wrapper = clipwise_model(model, "fold0")
    saved, tflite = str(tmp_path / "m.savedmodel"), str(tmp_path / "m.tflite")
    save_exported(wrapper, saved, tflite)
    last = wrapper.layers[-1].layers[-1] if hasattr(wrapper.layers[-1], "layers") else wrapper.layers[-1]
    last.set_weights([w + 0.5 for w in last.get_weights()])  # the Keras model moves on; the files do not
    with pytest.raises(ExportMismatch, match=r"m\.savedmodel: the SavedModel export does not reproduce the Keras "
                                             r"model: on 3 test inputs its outputs differ by up to"):
        check_exported(wrapper, saved, tflite, name=tflite)
