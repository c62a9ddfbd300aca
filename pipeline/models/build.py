"""Build a model by name: ``build_model(name, params, ...)`` for every family in ``schema.MODELS``.

Every family's builder has the signature ``builder(params, *, input_shape,
n_outputs, activation, output_bias) -> keras.Model``; its entry in
:data:`pipeline.schema.MODELS` names it by import path, so only the family
that is built gets imported.
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras

from pipeline import schema
from pipeline.models import layers  # noqa: F401 - registers the custom layers, so saved models load
from pipeline.models.heads import output_activation


def check_model(name: str, params) -> None:
    """Run the family's pre-training check (weights files, layer names); a no-op for most families."""
    check = schema.MODELS[name].load_check()  # unknown names fail here too
    if check is not None:
        check(params)


def build_model(name: str, params, *, input_shape: Sequence[int], n_outputs: int, task: str,
                output_bias: Optional[Sequence[float]] = None) -> keras.Model:
    """Build a registered model by name. Unknown names raise an error listing the choices."""
    builder = schema.MODELS[name].load()
    return builder(
        params,
        input_shape=tuple(int(d) for d in input_shape),
        n_outputs=int(n_outputs),
        activation=output_activation(task),
        output_bias=output_bias,
    )
