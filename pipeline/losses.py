"""Loss registry: ``make_loss(name, params, task)`` for every loss in ``schema.LOSSES``."""

from __future__ import annotations

import keras

from pipeline import schema
from pipeline.registry import Registry

LOSSES = Registry("loss", allowed=schema.LOSSES)


@LOSSES.register("bce")
def _bce(params, task: str):
    if task == "multiclass":
        return keras.losses.CategoricalCrossentropy(label_smoothing=params.label_smoothing)
    return keras.losses.BinaryCrossentropy(label_smoothing=params.label_smoothing)


def make_loss(name: str, params, task: str):
    return LOSSES.get(name)(params, task)
