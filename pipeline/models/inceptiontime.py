"""InceptionTime (Ismail Fawaz et al., 2020) over a time-major series [T, C].

Each inception module: an optional 1x1 bottleneck, parallel convolutions with
``kernel_sizes`` (default 1, 2 and 4 frames as in the whale seed), a max-pool
branch with a 1x1 convolution, concatenated, batch-normalised, ReLU. With
``residual: true`` a shortcut (1x1 conv + BN) is added every three modules
(the residual variant). Global average pooling over time, then the classifier.
"""

from __future__ import annotations

import keras
from keras import layers

from pipeline.models.heads import classifier_head

# Keras' default momentum (0.99) leaves the moving statistics far from the data
# after the few dozen steps per epoch typical of competition data, so validation
# predictions (inference mode) lag training badly; 0.9 tracks them in ~20 steps.
BN_MOMENTUM = 0.9


def inception_module(x, *, filters, kernel_sizes, bottleneck, name):
    if bottleneck and x.shape[-1] > 1:
        x = layers.Conv1D(bottleneck, 1, padding="same", use_bias=False, name=f"{name}_bottleneck")(x)
    branches = [
        layers.Conv1D(filters, k, padding="same", use_bias=False, name=f"{name}_conv{k}")(x) for k in kernel_sizes
    ]
    pooled = layers.MaxPooling1D(3, strides=1, padding="same", name=f"{name}_maxpool")(x)
    branches.append(layers.Conv1D(filters, 1, padding="same", use_bias=False, name=f"{name}_poolconv")(pooled))
    x = layers.Concatenate(name=f"{name}_concat")(branches)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def shortcut(inputs, x, *, name):
    s = layers.Conv1D(x.shape[-1], 1, padding="same", use_bias=False, name=f"{name}_conv")(inputs)
    s = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(s)
    x = layers.Add(name=f"{name}_add")([s, x])
    return layers.Activation("relu", name=f"{name}_relu")(x)


def build_inceptiontime(params, *, input_shape, n_outputs, activation, output_bias=None) -> keras.Model:
    """input_shape: (T, C) or (T,) for a waveform; returns a keras.Model -> [B, n_outputs]."""
    if len(input_shape) not in (1, 2):
        raise ValueError(f"inceptiontime expects a series [T, C] or [T]. Received: input_shape={input_shape}")
    inputs = keras.Input(shape=input_shape, name="x")
    x = inputs if len(input_shape) == 2 else layers.Reshape((input_shape[0], 1), name="add_channel")(inputs)
    # Batch norm on the input learns scale/offset from training batches only (no dataset statistics).
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="input_bn")(x)
    residual_from = x
    for d in range(params.depth):
        x = inception_module(
            x, filters=params.filters, kernel_sizes=params.kernel_sizes, bottleneck=params.bottleneck,
            name=f"block{d + 1}",
        )
        if params.residual and d % 3 == 2:
            x = shortcut(residual_from, x, name=f"block{d + 1}_shortcut")
            residual_from = x
    x = layers.GlobalAveragePooling1D(name="gap")(x)
    if params.dropout:
        x = layers.Dropout(params.dropout, name="dropout")(x)
    outputs = classifier_head(x, n_outputs=n_outputs, activation=activation, output_bias=output_bias)
    name = "inceptiontime_residual" if params.residual else "inceptiontime"
    return keras.Model(inputs, outputs, name=name)
