"""Small custom layers shared by the model families (keras.ops only, serialisable).

Each layer is registered with ``keras.saving.register_keras_serializable`` so a
saved ``.keras`` model reloads without ``custom_objects``; ``get_config``
returns exactly the constructor arguments.
"""

from __future__ import annotations

import keras
from keras import ops

PACKAGE = "pipeline"
# Batch-norm momentum of every family here: Keras' default (0.99) leaves the moving statistics
# far from the data after the few dozen steps per epoch of competition data, so validation
# (inference mode) lags training badly; 0.9 tracks them within ~20 steps.
BN_MOMENTUM = 0.9


@keras.saving.register_keras_serializable(package=PACKAGE)
class AttentionPooling(keras.layers.Layer):
    """Clipwise output of a SED head: attention-weighted sum of per-frame predictions.

    Inputs ``[attention, framewise]``, both [B, T, C]: ``attention`` are tanh-bounded
    logits, normalised with a softmax over time (axis 1); ``framewise`` are per-frame
    probabilities. Returns [B, C] = sum_t softmax_t(attention) * framewise.
    """

    def call(self, inputs):
        attention, framewise = inputs
        weights = ops.softmax(attention, axis=1)
        return ops.sum(weights * framewise, axis=1)

    def compute_output_shape(self, input_shapes):
        shape = input_shapes[0]
        return (shape[0], shape[2])


@keras.saving.register_keras_serializable(package=PACKAGE)
class FrameInterpolation(keras.layers.Layer):
    """Linear interpolation along time: [B, T_in, C] -> [B, frames, C].

    Brings a SED model's framewise output (on the backbone's coarse time grid)
    back to the input's frame count; values are sampled at frame centres, so an
    integer upsampling repeats each coarse frame's neighbourhood smoothly.
    """

    def __init__(self, frames: int, **kwargs):
        super().__init__(**kwargs)
        if frames < 1:
            raise ValueError(f"frames must be at least 1. Received: frames={frames}")
        self.frames = int(frames)

    def call(self, x):
        image = ops.expand_dims(x, 2)  # [B, T, 1, C]: resize along T only
        out = ops.image.resize(image, (self.frames, 1), interpolation="bilinear")
        return ops.squeeze(out, 2)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.frames, input_shape[2])

    def get_config(self):
        return {**super().get_config(), "frames": self.frames}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClassToken(keras.layers.Layer):
    """Prepends one learned token to a sequence: [B, N, D] -> [B, N + 1, D]."""

    def build(self, input_shape):
        self.token = self.add_weight(shape=(1, 1, input_shape[-1]), initializer="zeros", name="token")

    def call(self, x):
        token = ops.broadcast_to(ops.cast(self.token, x.dtype), (ops.shape(x)[0], 1, ops.shape(x)[2]))
        return ops.concatenate([token, x], axis=1)

    def compute_output_shape(self, input_shape):
        n = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], n, input_shape[2])


@keras.saving.register_keras_serializable(package=PACKAGE)
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned position embedding to a fixed-length sequence [B, N, D]."""

    def build(self, input_shape):
        self.embedding = self.add_weight(
            shape=(1, input_shape[1], input_shape[2]),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="embedding",
        )

    def call(self, x):
        return x + ops.cast(self.embedding, x.dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
class PackSED(keras.layers.Layer):
    """Packs SED outputs into one tensor for :class:`pipeline.losses.SEDTwoWayLoss`.

    Inputs ``[clipwise [B, C], framewise [B, T, C]]`` -> [B, 1 + T, C] (row 0 is the clip).
    """

    def call(self, inputs):
        clipwise, framewise = inputs
        return ops.concatenate([ops.expand_dims(clipwise, 1), framewise], axis=1)

    def compute_output_shape(self, input_shapes):
        clip, frame = input_shapes
        t = None if frame[1] is None else frame[1] + 1
        return (clip[0], t, clip[1])
