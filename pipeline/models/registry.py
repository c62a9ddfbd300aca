"""The model registry: ``build_model(name, params, ...)`` for every family in ``schema.MODELS``.

Every builder has the signature ``builder(params, *, input_shape, n_outputs,
activation, output_bias) -> keras.Model`` and registers itself with
``@MODELS.register("<name>")``. Importing this module imports every family, so
the registry is always complete (a test checks it equals ``schema.MODELS``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras
import numpy as np

from pipeline import schema
from pipeline.registry import Registry

MODELS = Registry("model", allowed=schema.MODELS)
# Optional per-family checks run before any training (e.g. a weights file that must exist).
_CHECKS = {}


def register_check(name: str):
    """Decorator: ``check(params) -> None`` raising a clear error for settings that cannot work here."""
    if name not in schema.MODELS:
        raise ValueError(f"model {name!r} has no parameter schema in pipeline.schema; add it there first")

    def decorator(fn):
        _CHECKS[name] = fn
        return fn

    return decorator


def check_model(name: str, params) -> None:
    """Run the family's pre-training check (weights files, ...); a no-op for most families."""
    MODELS.get(name)  # unknown names fail here too
    check = _CHECKS.get(name)
    if check is not None:
        check(params)


def output_activation(task: str) -> str:
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


def build_model(name: str, params, *, input_shape: Sequence[int], n_outputs: int, task: str,
                output_bias: Optional[Sequence[float]] = None) -> keras.Model:
    """Build a registered model by name. Unknown names raise an error listing the choices."""
    builder = MODELS.get(name)
    return builder(
        params,
        input_shape=tuple(int(d) for d in input_shape),
        n_outputs=int(n_outputs),
        activation=output_activation(task),
        output_bias=output_bias,
    )


# Register every family (each module decorates its builder with MODELS.register).
from pipeline.models import attentionlstm, cnn1d, inceptiontime, sed, vit, xception  # noqa: E402,F401
