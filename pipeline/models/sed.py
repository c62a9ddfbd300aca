"""PANNs-style sound event detection (Kong et al. 2020) over a log-mel [frames, mels].

Backbone: the small built-in CNN (``backbone: cnn``: blocks of two 3x3
conv-BN-ReLU and a 2x2 average pool, widths ``widths``) or any keras.applications
model by name (EfficientNetB0, ResNet50, DenseNet121, ...; 3-channel input,
``weights`` null or a local file: nothing is downloaded). The feature map
[T', F', C] is averaged over frequency, smoothed over time by max + average
pooling, optionally passed through dropout and a dense block, then two per-frame
heads share it: a sigmoid (softmax for multiclass) classifier ``framewise`` and
a tanh attention; ``clipwise`` is the attention-weighted sum over frames (softmax
over time). The framewise output is interpolated back to the input's frame count.

The model has two named outputs, ``{"clipwise": [B, C], "framewise": [B, frames, C]}``.
:func:`training_view` gives the single-output model the fold loop trains: the
clipwise output for clip labels, or both outputs packed for the SED two-way loss.
"""

from __future__ import annotations

import os

import keras
from keras import layers

from pipeline.errors import QueueError
from pipeline.models.heads import classifier_head
from pipeline.models.layers import BN_MOMENTUM, AttentionPooling, FrameInterpolation, PackSED


def conv_block(x, filters, *, name):
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return layers.AveragePooling2D(2, padding="same", name=f"{name}_pool")(x)


def application_backbone(name: str, *, input_shape, weights, trainable: bool) -> keras.Model:
    """A keras.applications model without its top; ``weights`` None or a local file path."""
    if not hasattr(keras.applications, name):
        raise ValueError(f"backbone must be 'cnn' or a keras.applications model. Received: backbone={name!r}")
    base = getattr(keras.applications, name)(include_top=False, weights=None, input_shape=input_shape)
    if weights is not None:
        check_weights_file(weights, "sed")
        base.load_weights(weights)
    base.trainable = trainable
    return base


def check_weights_file(path: str, family: str) -> None:
    if not os.path.isabs(os.path.expanduser(path)):
        raise QueueError(f"{family}: weights must be null or an absolute path to a .h5 / .weights.h5 file. "
                         f"Received: weights={path!r}")
    if not os.path.isfile(os.path.expanduser(path)):
        raise FileNotFoundError(f"{family}: weights file not found: {path}")


def build_sed(params, *, input_shape, n_outputs, activation, output_bias=None) -> keras.Model:
    """input_shape: (frames, mels). Returns a keras.Model with outputs clipwise [B, C] and framewise [B, frames, C]."""
    if len(input_shape) != 2:
        raise ValueError(f"sed expects a spectrogram [frames, mels]. Received: input_shape={input_shape}")
    frames, mels = input_shape
    inputs = keras.Input(shape=input_shape, name="x")
    x = layers.Reshape((frames, mels, 1), name="add_channel")(inputs)
    # A frozen application backbone gets a parameter-free input standardisation, so no gradient
    # has to flow through it.
    learn_input = params.backbone == "cnn" or params.base_trainable
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, center=learn_input, scale=learn_input, name="input_bn")(x)
    if params.backbone == "cnn":
        for i, width in enumerate(params.widths):
            x = conv_block(x, width, name=f"block{i + 1}")
        if params.weights is not None:
            raise QueueError("sed: weights apply to a keras.applications backbone; the built-in cnn starts "
                             f"from random weights. Received: weights={params.weights!r}")
    else:
        x = layers.Concatenate(axis=-1, name="to_rgb")([x, x, x])
        base = application_backbone(params.backbone, input_shape=(frames, mels, 3), weights=params.weights,
                                    trainable=params.base_trainable)
        x = base(x, training=None if params.base_trainable else False)
    t, f = x.shape[1], x.shape[2]
    x = layers.AveragePooling2D((1, f), name="freq_pool")(x)
    x = layers.Reshape((t, x.shape[-1]), name="freq_squeeze")(x)
    # max + average smoothing over neighbouring frames (PANNs)
    x1 = layers.MaxPooling1D(params.smoothing, strides=1, padding="same", name="time_maxpool")(x)
    x2 = layers.AveragePooling1D(params.smoothing, strides=1, padding="same", name="time_avgpool")(x)
    x = layers.Add(name="time_smooth")([x1, x2])
    if params.dropout:
        x = layers.Dropout(params.dropout, name="dropout1")(x)
    if params.dense_units:
        x = layers.Dense(params.dense_units, activation="relu", name="dense")(x)
        if params.dropout:
            x = layers.Dropout(params.dropout, name="dropout2")(x)
    attention = layers.Dense(n_outputs, activation="tanh", dtype="float32", name="attention")(x)
    segmentwise = classifier_head(x, n_outputs=n_outputs, activation=activation, output_bias=output_bias,
                                  name="classifier")
    clipwise = AttentionPooling(dtype="float32", name="clipwise")([attention, segmentwise])
    framewise = FrameInterpolation(frames, dtype="float32", name="framewise")(segmentwise)
    return keras.Model(inputs, {"clipwise": clipwise, "framewise": framewise}, name=f"sed_{params.backbone.lower()}")


def training_view(model: keras.Model, *, framewise: bool = False) -> keras.Model:
    """The single-output model the fold loop trains and saves (layers shared with ``model``).

    framewise False: ``clipwise`` [B, C] (clip labels, e.g. the whale data).
    framewise True: clipwise and framewise packed into [B, 1 + frames, C] for
    :class:`pipeline.losses.SEDTwoWayLoss` (data with framewise targets).
    """
    outputs = model.output
    if framewise:
        packed = PackSED(dtype="float32", name="packed")([outputs["clipwise"], outputs["framewise"]])
        return keras.Model(model.input, packed, name=f"{model.name}_two_way")
    return keras.Model(model.input, outputs["clipwise"], name=f"{model.name}_clipwise")


def check_sed(params) -> None:
    """Fail before training when the backbone weights cannot be loaded."""
    if params.weights is None:
        return
    if params.backbone == "cnn":
        raise QueueError("sed: weights apply to a keras.applications backbone; the built-in cnn starts "
                         f"from random weights. Received: weights={params.weights!r}")
    check_weights_file(params.weights, "sed")
