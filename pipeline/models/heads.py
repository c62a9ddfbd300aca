"""What every model family shares at its output: the activation, the classifier and its prior bias.

The families import this module; it imports none of them.
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras
import numpy as np


def output_activation(task: str) -> str:
    """``softmax`` for multiclass targets (one class per clip), ``sigmoid`` for binary and multilabel."""
    return "softmax" if task == "multiclass" else "sigmoid"


def prior_bias(y: np.ndarray, task: str) -> np.ndarray:
    """Output-layer bias that makes an untrained model predict the class prior.

    y : [n, C] training targets. Returns [C]: log-odds (sigmoid) or log-prior (softmax).
    Starting at the prior avoids the large first-epoch loss on imbalanced data.
    """
    p = np.clip(np.asarray(y, dtype=float).mean(axis=0), 1e-4, 1 - 1e-4)
    return (np.log(p) if task == "multiclass" else np.log(p / (1 - p))).astype(np.float32)


def classifier_head(x, *, n_outputs: int, activation: str, output_bias: Optional[Sequence[float]], name="classifier"):
    """Dense classifier kept in float32 so mixed precision never changes output dtypes."""
    init = keras.initializers.Constant(list(output_bias)) if output_bias is not None else "zeros"
    return keras.layers.Dense(n_outputs, activation=activation, bias_initializer=init, dtype="float32", name=name)(x)
