"""Keras metrics for monitoring training on multi-label data with unknown labels (rfcx).

Both accept the targets the rfcx path trains on: [B, C] clip targets, or the SED
packing [B, 1 + T, C] (clipwise row first, see ``pipeline.models.sed.training_view``)
of which only the clipwise row is scored; a NaN target (unknown label) counts as
not positive. The numpy reference for LWLRAP is :func:`pipeline.metrics.lwlrap`.
"""

from __future__ import annotations

import keras
from keras import ops

PACKAGE = "pipeline"


def _clip_rows(y_true, y_pred):
    if len(y_pred.shape) == 3:
        y_true, y_pred = y_true[:, 0], y_pred[:, 0]
    y_true = ops.where(ops.isnan(y_true), ops.zeros_like(y_true), y_true)
    return y_true, y_pred


@keras.saving.register_keras_serializable(package=PACKAGE)
class LWLRAP(keras.metrics.Metric):
    """Label-weighted label-ranking average precision, accumulated over batches.

    LWLRAP is a mean over all positive labels of a per-label precision, so the
    sum of those precisions and the number of positive labels can be summed
    over batches: the result over an epoch equals :func:`pipeline.metrics.lwlrap`
    on the whole epoch's predictions (ties ranked pessimistically, as there).
    """

    def __init__(self, name="lwlrap", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.precision_sum = self.add_variable(shape=(), initializer="zeros", name="precision_sum")
        self.positives = self.add_variable(shape=(), initializer="zeros", name="positives")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true, y_pred = _clip_rows(ops.convert_to_tensor(y_true, "float32"), ops.convert_to_tensor(y_pred, "float32"))
        positive = ops.cast(y_true > 0.5, "float32")  # [B, C]
        at_least = ops.cast(y_pred[:, None, :] >= y_pred[:, :, None], "float32")  # [B, c, j]
        rank = ops.sum(at_least, axis=2)
        hits = ops.sum(at_least * positive[:, None, :], axis=2)
        self.precision_sum.assign_add(ops.sum(hits / rank * positive))
        self.positives.assign_add(ops.sum(positive))

    def result(self):
        return ops.divide_no_nan(self.precision_sum, self.positives)

    def reset_state(self):
        self.precision_sum.assign(0.0)
        self.positives.assign(0.0)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskedAUC(keras.metrics.AUC):
    """ROC AUC over the clipwise rows, unknown (NaN) labels counted as negatives."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true, y_pred = _clip_rows(ops.convert_to_tensor(y_true, "float32"), ops.convert_to_tensor(y_pred, "float32"))
        return super().update_state(y_true, y_pred, sample_weight=sample_weight)
