"""Xception transfer learning (keras.applications) on a log-mel [frames, mels].

The spectrogram is standardised by batch normalisation (no trainable scale or offset),
resized to ``image_size`` x ``image_size`` (Xception needs at least 71 x 71) and
repeated to 3 channels; the backbone's features are average-pooled, then
dropout and the classifier.

``weights``: null (random), ``imagenet`` (read from the local Keras cache,
``$KERAS_HOME/models/`` or ``~/.keras/models/`` - never downloaded) or an absolute
path to backbone weights (``include_top=False``; ``.h5`` or ``.weights.h5``).
:func:`check_xception` raises before any training when the file is missing.
``base_trainable: false`` freezes the backbone (run in inference mode);
``fine_tune_from: <layer name>`` trains only that backbone layer and those after it.
``backbone_output: <layer name>`` cuts the backbone at that layer (e.g. ``block4_pool``,
the end of the entry flow): the usual way to use an ImageNet backbone on small
inputs, where the middle and exit flows see 5 x 5 and 3 x 3 maps, and about five
times cheaper to train than the whole network at 71 x 71.
"""

from __future__ import annotations

import os

import keras
from keras import layers

from pipeline.errors import QueueError
from pipeline.models.heads import classifier_head
from pipeline.models.layers import BN_MOMENTUM

IMAGENET_FILE = "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"


def imagenet_weights_path() -> str:
    """Where Keras caches the ImageNet Xception (no top) weights on this machine."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models", IMAGENET_FILE)


def resolve_weights(weights):
    """None, or the absolute path of the weights file to load; raises when it is not there."""
    if weights is None:
        return None
    if weights == "imagenet":
        path = imagenet_weights_path()
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"xception: weights: imagenet needs the ImageNet weights in the local Keras cache, and "
                f"nothing is downloaded here. Place the file {IMAGENET_FILE} (from "
                f"https://storage.googleapis.com/tensorflow/keras-applications/xception/{IMAGENET_FILE}) "
                f"at {path}, or set weights: null or weights: /absolute/path/to/weights.h5."
            )
        return path
    path = os.path.expanduser(weights)
    if not os.path.isabs(path):
        raise QueueError(f"xception: weights must be null, imagenet or an absolute path to a .h5 / .weights.h5 "
                         f"file. Received: weights={weights!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"xception: weights file not found: {path}")
    return path


def check_xception(params) -> None:
    """Fail before training when the configured weights cannot be loaded or fine_tune_from names no layer."""
    resolve_weights(params.weights)
    if params.fine_tune_from is not None or params.backbone_output is not None:
        base = keras.applications.Xception(include_top=False, weights=None, input_shape=(71, 71, 3))
        if params.backbone_output is not None:
            _check_layer(base, params.backbone_output, "backbone_output", "block4_pool, block13_pool")
            base = _truncate(base, params.backbone_output)
        if params.fine_tune_from is not None:
            _check_layer(base, params.fine_tune_from, "fine_tune_from", "block13_sepconv1, block14_sepconv1")


def _check_layer(base, name, key, examples):
    if name not in [layer.name for layer in base.layers]:
        where = f" up to {base.layers[-1].name}" if base.name.endswith("_cut") else ""
        raise QueueError(f"xception: {key} must name a backbone layer{where} (e.g. {examples}). "
                         f"Received: {key}={name!r}")


def _truncate(base, name):
    """The backbone from its input to layer ``name`` (weights shared with ``base``)."""
    return keras.Model(base.input, base.get_layer(name).output, name=f"{base.name}_cut")


def build_xception(params, *, input_shape, n_outputs, activation, output_bias=None) -> keras.Model:
    """input_shape: (frames, mels); returns a keras.Model -> [B, n_outputs]."""
    if len(input_shape) != 2:
        raise ValueError(f"xception expects a spectrogram [frames, mels]. Received: input_shape={input_shape}")
    frames, mels = input_shape
    size = params.image_size
    inputs = keras.Input(shape=input_shape, name="x")
    x = layers.Reshape((frames, mels, 1), name="add_channel")(inputs)
    # Standardise with batch statistics but no trainable scale/offset: a trainable input layer
    # would need gradients through the whole backbone even when only its top is fine-tuned.
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, center=False, scale=False, name="input_bn")(x)
    # Resizing runs in float32 under any policy (it cannot compute in bfloat16); the backbone casts after it.
    x = layers.Resizing(size, size, interpolation="bilinear", dtype="float32", name="resize")(x)
    x = layers.Concatenate(axis=-1, name="to_rgb")([x, x, x])

    base = keras.applications.Xception(include_top=False, weights=None, input_shape=(size, size, 3))
    path = resolve_weights(params.weights)
    if path is not None:
        base.load_weights(path)
    if params.backbone_output is not None:
        _check_layer(base, params.backbone_output, "backbone_output", "block4_pool, block13_pool")
        base = _truncate(base, params.backbone_output)
    # Keras' backbones use batch-norm momentum 0.99: with the few dozen steps per epoch of a
    # competition dataset the moving statistics stay near their initial values, and the
    # validation predictions (inference mode) are constant for several epochs.
    for layer in base.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    base.trainable = params.base_trainable
    if params.base_trainable and params.fine_tune_from is not None:
        _check_layer(base, params.fine_tune_from, "fine_tune_from", "block13_sepconv1, block14_sepconv1")
        names = [layer.name for layer in base.layers]
        for layer in base.layers[: names.index(params.fine_tune_from)]:
            layer.trainable = False
    # A frozen backbone keeps its batch-norm statistics (inference mode).
    x = base(x, training=None if params.base_trainable else False)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if params.dropout:
        x = layers.Dropout(params.dropout, name="dropout")(x)
    outputs = classifier_head(x, n_outputs=n_outputs, activation=activation, output_bias=output_bias)
    return keras.Model(inputs, outputs, name="xception_transfer")
