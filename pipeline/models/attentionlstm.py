"""AttentionLSTM over a time-major series [T, C] (the whale seed's model).

Two branches read the (batch-normalised) series in parallel: an LSTM returning
its sequence, and multi-head self-attention (with a residual connection from a
linear projection of the input). Their outputs are concatenated per frame,
layer-normalised, passed through TimeDistributed dense layers, averaged over
time, then dropout and the classifier.
"""

from __future__ import annotations

import keras
from keras import layers

from pipeline.models.heads import classifier_head
from pipeline.models.layers import BN_MOMENTUM


def build_attentionlstm(params, *, input_shape, n_outputs, activation, output_bias=None) -> keras.Model:
    """input_shape: (T, C) or (T,); returns a keras.Model -> [B, n_outputs]."""
    if len(input_shape) not in (1, 2):
        raise ValueError(f"attentionlstm expects a series [T, C] or [T]. Received: input_shape={input_shape}")
    inputs = keras.Input(shape=input_shape, name="x")
    x = inputs if len(input_shape) == 2 else layers.Reshape((input_shape[0], 1), name="add_channel")(inputs)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="input_bn")(x)
    lstm = layers.LSTM(params.lstm_units, return_sequences=True, name="lstm")(x)
    projected = layers.Dense(params.num_heads * params.key_dim, name="attention_projection")(x)
    attended = layers.MultiHeadAttention(params.num_heads, params.key_dim, dropout=params.dropout,
                                         name="self_attention")(projected, projected)
    attended = layers.Add(name="attention_residual")([projected, attended])
    x = layers.Concatenate(name="concat")([lstm, attended])
    x = layers.LayerNormalization(name="layer_norm")(x)
    for i, units in enumerate(params.dense_units):
        x = layers.TimeDistributed(layers.Dense(units, activation="relu"), name=f"time_dense{i + 1}")(x)
    x = layers.GlobalAveragePooling1D(name="gap")(x)
    if params.dropout:
        x = layers.Dropout(params.dropout, name="dropout")(x)
    outputs = classifier_head(x, n_outputs=n_outputs, activation=activation, output_bias=output_bias)
    return keras.Model(inputs, outputs, name="attentionlstm")
