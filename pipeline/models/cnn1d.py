"""1-D CNN over a raw waveform [samples] or a time-major series [T, C] (e.g. complexity [T, 4]).

``depth`` blocks of two convolutions (kernel ``kernel_size``, BN, ReLU) and a
max-pool by ``pool_size``; the width starts at ``filters`` and doubles every
block up to ``max_filters``. Global average and max pooling over time are
concatenated, then dropout and the classifier.
"""

from __future__ import annotations

import keras
from keras import layers

from pipeline.models.heads import classifier_head
from pipeline.models.layers import BN_MOMENTUM


def build_cnn1d(params, *, input_shape, n_outputs, activation, output_bias=None) -> keras.Model:
    """input_shape: (T, C) or (T,) for a waveform; returns a keras.Model -> [B, n_outputs]."""
    if len(input_shape) not in (1, 2):
        raise ValueError(f"cnn1d expects a waveform [samples] or a series [T, C]. Received: input_shape={input_shape}")
    inputs = keras.Input(shape=input_shape, name="x")
    x = inputs if len(input_shape) == 2 else layers.Reshape((input_shape[0], 1), name="add_channel")(inputs)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="input_bn")(x)
    for d in range(params.depth):
        width = min(params.filters * 2**d, params.max_filters)
        for i in (1, 2):
            x = layers.Conv1D(width, params.kernel_size, padding="same", use_bias=False,
                              name=f"block{d + 1}_conv{i}")(x)
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"block{d + 1}_bn{i}")(x)
            x = layers.Activation("relu", name=f"block{d + 1}_relu{i}")(x)
        if params.pool_size > 1:
            x = layers.MaxPooling1D(params.pool_size, padding="same", name=f"block{d + 1}_pool")(x)
    x = layers.Concatenate(name="pool")([layers.GlobalAveragePooling1D(name="gap")(x),
                                         layers.GlobalMaxPooling1D(name="gmp")(x)])
    if params.dropout:
        x = layers.Dropout(params.dropout, name="dropout")(x)
    outputs = classifier_head(x, n_outputs=n_outputs, activation=activation, output_bias=output_bias)
    return keras.Model(inputs, outputs, name="cnn1d")
