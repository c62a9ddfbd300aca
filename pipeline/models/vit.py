"""Vision transformer (Dosovitskiy et al. 2021) over log-mel patches [frames, mels].

The spectrogram is zero-padded to whole patches of ``patch_size`` (frames,
mels) and embedded by a strided convolution, optionally after a 3x3
convolutional stem (``conv_stem`` filters; Xiao et al. 2021, "Early
convolutions help transformers see better": on small datasets it removes
the long plateau a plain patch embedding starts with); a class token (``pooling: cls``)
and a learned position embedding are added; ``depth`` pre-norm encoder blocks
(multi-head self-attention, GELU MLP, residuals) follow. The class token's
output, or the mean over patches (``pooling: mean``), feeds the classifier.
"""

from __future__ import annotations

import keras
from keras import layers

from pipeline.models.heads import classifier_head
from pipeline.models.layers import BN_MOMENTUM, ClassToken, PositionEmbedding


def encoder_block(x, *, num_heads, mlp_dim, dropout, name):
    dim = x.shape[-1]
    h = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm1")(x)
    h = layers.MultiHeadAttention(num_heads, max(1, dim // num_heads), dropout=dropout, name=f"{name}_attention")(h, h)
    x = layers.Add(name=f"{name}_add1")([x, h])
    h = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm2")(x)
    h = layers.Dense(mlp_dim, activation="gelu", name=f"{name}_mlp1")(h)
    if dropout:
        h = layers.Dropout(dropout, name=f"{name}_dropout")(h)
    h = layers.Dense(dim, name=f"{name}_mlp2")(h)
    return layers.Add(name=f"{name}_add2")([x, h])


def build_vit(params, *, input_shape, n_outputs, activation, output_bias=None) -> keras.Model:
    """input_shape: (frames, mels); returns a keras.Model -> [B, n_outputs]."""
    if len(input_shape) != 2:
        raise ValueError(f"vit expects a spectrogram [frames, mels]. Received: input_shape={input_shape}")
    if len(params.patch_size) != 2:
        raise ValueError(f"vit patch_size must be [frames, mels]. Received: patch_size={list(params.patch_size)}")
    frames, mels = input_shape
    pt, pf = params.patch_size
    inputs = keras.Input(shape=input_shape, name="x")
    x = layers.Reshape((frames, mels, 1), name="add_channel")(inputs)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="input_bn")(x)
    pad_t, pad_f = -frames % pt, -mels % pf
    if pad_t or pad_f:
        x = layers.ZeroPadding2D(((0, pad_t), (0, pad_f)), name="pad_to_patches")(x)
    if params.conv_stem:
        x = layers.Conv2D(params.conv_stem, 3, padding="same", use_bias=False, name="stem_conv")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
        x = layers.Activation("relu", name="stem_relu")(x)
    x = layers.Conv2D(params.dim, (pt, pf), strides=(pt, pf), name="patch_embedding")(x)
    x = layers.Reshape((x.shape[1] * x.shape[2], params.dim), name="patches")(x)
    if params.pooling == "cls":
        x = ClassToken(name="class_token")(x)
    x = PositionEmbedding(name="position_embedding")(x)
    if params.dropout:
        x = layers.Dropout(params.dropout, name="embedding_dropout")(x)
    for d in range(params.depth):
        x = encoder_block(x, num_heads=params.num_heads, mlp_dim=params.mlp_dim, dropout=params.dropout,
                          name=f"encoder{d + 1}")
    x = layers.LayerNormalization(epsilon=1e-6, name="encoder_norm")(x)
    if params.pooling == "cls":
        x = layers.Cropping1D((0, x.shape[1] - 1), name="take_class_token")(x)
        x = layers.Flatten(name="class_output")(x)
    else:
        x = layers.GlobalAveragePooling1D(name="mean_pool")(x)
    outputs = classifier_head(x, n_outputs=n_outputs, activation=activation, output_bias=output_bias)
    return keras.Model(inputs, outputs, name="vit")
