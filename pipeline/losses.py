"""Losses: ``make_loss(name, params, task)`` for every loss in ``schema.LOSSES``.

Every loss is a ``keras.losses.Loss`` (built-in, or a subclass here registered
with ``keras.saving.register_keras_serializable``) whose ``get_config`` returns
its constructor arguments, so a model saved with its compiled loss reloads.
Inputs are probabilities (the models end in sigmoid / softmax), shape [B, C];
each loss returns one value per example. Multiclass data (softmax outputs,
one-hot targets) gets the categorical form of each loss.

Masks: ``masked_bce`` reads a NaN target as "unknown" (mask 0) and ignores it,
so tp/fp data keeps its targets and mask in one [B, C] tensor.
"""

from __future__ import annotations

import keras
from keras import ops

from pipeline import schema
from pipeline.errors import QueueError

PACKAGE = "pipeline"
EPSILON = 1e-7


def _clip(p):
    return ops.clip(p, EPSILON, 1.0 - EPSILON)


def _smooth(y, label_smoothing):
    return y * (1.0 - label_smoothing) + 0.5 * label_smoothing if label_smoothing else y


def binary_crossentropy(y, p):
    """Elementwise BCE of probabilities p for targets y (same shape)."""
    p = _clip(p)
    return -(y * ops.log(p) + (1.0 - y) * ops.log(1.0 - p))


def _masked_mean_bce(y_true, y_pred, axis):
    """Mean BCE over the entries whose target is not NaN (0 when none is); NaN entries get no gradient."""
    known = ops.logical_not(ops.isnan(y_true))
    y = ops.where(known, y_true, ops.zeros_like(y_true))
    per = ops.where(known, binary_crossentropy(y, y_pred), ops.zeros_like(y_pred))
    return ops.sum(per, axis=axis) / ops.maximum(ops.sum(ops.cast(known, y_pred.dtype), axis=axis), 1.0)


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskedBinaryCrossentropy(keras.losses.Loss):
    """BCE over the known labels only; a NaN target is unknown and contributes nothing.

    y_true : [B, C] targets in [0, 1], NaN where the label is unknown (mask 0).
    Returns [B]: each example's mean BCE over its known labels (0 when none is known);
    the gradient with respect to an unknown label's prediction is exactly zero.
    """

    def __init__(self, label_smoothing=0.0, name="masked_bce", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        known = ops.logical_not(ops.isnan(y_true))
        y = _smooth(ops.where(known, y_true, ops.zeros_like(y_true)), self.label_smoothing)
        mask = ops.cast(known, y_pred.dtype)
        # where() after a finite computation: no NaN can leak into the gradient
        per_label = ops.where(known, binary_crossentropy(y, y_pred), ops.zeros_like(y_pred))
        return ops.sum(per_label, axis=-1) / ops.maximum(ops.sum(mask, axis=-1), 1.0)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SEDTwoWayLoss(keras.losses.Loss):
    """SED two-way loss: clipwise_weight * BCE(clip) + framewise_weight * BCE(frames).

    A NaN target is an unknown label (tp/fp data with ``unknown: mask``): it is left out of
    both terms' means and gets no gradient; without NaNs the terms are plain mean BCEs.

    y_true, y_pred : [B, 1 + T, C] with the clip in row 0 and the T frames after it
    (``pipeline.models.sed.training_view(model, framewise=True)`` packs the model's
    outputs this way), or [B, C]: clip labels only, where just the clipwise term applies.
    Returns [B]. ``multiclass`` uses categorical cross-entropy for the clip term.
    """

    def __init__(self, clipwise_weight=1.0, framewise_weight=0.5, multiclass=False, name="sed_loss",
                 reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.clipwise_weight = clipwise_weight
        self.framewise_weight = framewise_weight
        self.multiclass = multiclass

    def _clip_term(self, y, p):
        if self.multiclass:
            return -ops.sum(y * ops.log(_clip(p)), axis=-1)
        return _masked_mean_bce(y, p, axis=-1)

    def call(self, y_true, y_pred):
        if len(y_pred.shape) == 2:
            return self.clipwise_weight * self._clip_term(y_true, y_pred)
        clip = self._clip_term(y_true[:, 0], y_pred[:, 0])
        frames = _masked_mean_bce(y_true[:, 1:], y_pred[:, 1:], axis=(1, 2))
        return self.clipwise_weight * clip + self.framewise_weight * frames

    def get_config(self):
        return {**super().get_config(), "clipwise_weight": self.clipwise_weight,
                "framewise_weight": self.framewise_weight, "multiclass": self.multiclass}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SymmetricCrossentropy(keras.losses.Loss):
    """Symmetric cross-entropy (Wang et al. 2019): alpha * CE(y, p) + beta * CE(p, y).

    The reverse term reads log(0) of a hard target as log(log_floor). Binary / multilabel:
    per label, averaged over labels; multiclass: over the class distribution. Returns [B].
    """

    def __init__(self, alpha=0.1, beta=1.0, log_floor=1e-4, multiclass=False, name="symmetric_ce",
                 reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.alpha = alpha
        self.beta = beta
        self.log_floor = log_floor
        self.multiclass = multiclass

    def call(self, y_true, y_pred):
        p = _clip(y_pred)
        log_y = ops.log(ops.clip(y_true, self.log_floor, 1.0))
        if self.multiclass:
            ce = -ops.sum(y_true * ops.log(p), axis=-1)
            rce = -ops.sum(p * log_y, axis=-1)
        else:
            log_not_y = ops.log(ops.clip(1.0 - y_true, self.log_floor, 1.0))
            ce = ops.mean(binary_crossentropy(y_true, p), axis=-1)
            rce = -ops.mean(p * log_y + (1.0 - p) * log_not_y, axis=-1)
        return self.alpha * ce + self.beta * rce

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta, "log_floor": self.log_floor,
                "multiclass": self.multiclass}


@keras.saving.register_keras_serializable(package=PACKAGE)
class DiceBCE(keras.losses.Loss):
    """Cross-entropy + dice_weight * (1 - soft Dice).

    Dice is computed over the whole batch per class, (2 sum p y + smooth) / (sum p +
    sum y + smooth), and averaged over classes; that batch-level term is added to every
    example's cross-entropy, so the batch mean is CE + dice_weight * dice loss. Returns [B].
    """

    def __init__(self, dice_weight=1.0, smooth=1.0, multiclass=False, name="dice_bce",
                 reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.dice_weight = dice_weight
        self.smooth = smooth
        self.multiclass = multiclass

    def call(self, y_true, y_pred):
        if self.multiclass:
            ce = -ops.sum(y_true * ops.log(_clip(y_pred)), axis=-1)
        else:
            ce = ops.mean(binary_crossentropy(y_true, y_pred), axis=-1)
        intersection = ops.sum(y_true * y_pred, axis=0)
        dice = (2.0 * intersection + self.smooth) / (ops.sum(y_true, axis=0) + ops.sum(y_pred, axis=0) + self.smooth)
        return ce + self.dice_weight * (1.0 - ops.mean(dice))

    def get_config(self):
        return {**super().get_config(), "dice_weight": self.dice_weight, "smooth": self.smooth,
                "multiclass": self.multiclass}


# ----------------------------------------------------------------------------- builders (see schema.LOSSES)


def build_bce(params, task: str):
    """The bce loss for ``task`` (binary / multiclass / multilabel)."""
    if task == "multiclass":
        return keras.losses.CategoricalCrossentropy(label_smoothing=params.label_smoothing)
    return keras.losses.BinaryCrossentropy(label_smoothing=params.label_smoothing)


def build_focal(params, task: str):
    """The focal loss for ``task`` (binary / multiclass / multilabel)."""
    kwargs = dict(gamma=params.gamma, alpha=params.alpha, label_smoothing=params.label_smoothing)
    if task == "multiclass":
        # Keras' categorical focal loss always applies alpha; alpha 1 is "no balancing".
        return keras.losses.CategoricalFocalCrossentropy(**{**kwargs, "alpha": params.alpha if params.class_balancing else 1.0})
    return keras.losses.BinaryFocalCrossentropy(apply_class_balancing=params.class_balancing, **kwargs)


def build_masked_bce(params, task: str):
    """The masked_bce loss for ``task`` (binary / multiclass / multilabel)."""
    if task == "multiclass":
        raise QueueError("loss masked_bce needs binary or multilabel targets (one sigmoid per label). "
                         f"Received: task={task!r}")
    return MaskedBinaryCrossentropy(label_smoothing=params.label_smoothing)


def build_sed_loss(params, task: str):
    """The sed loss for ``task`` (binary / multiclass / multilabel)."""
    return SEDTwoWayLoss(clipwise_weight=params.clipwise_weight, framewise_weight=params.framewise_weight,
                         multiclass=task == "multiclass")


def build_symmetric_ce(params, task: str):
    """The symmetric_ce loss for ``task`` (binary / multiclass / multilabel)."""
    return SymmetricCrossentropy(alpha=params.alpha, beta=params.beta, log_floor=params.log_floor,
                                 multiclass=task == "multiclass")


def build_dice_bce(params, task: str):
    """The dice_bce loss for ``task`` (binary / multiclass / multilabel)."""
    return DiceBCE(dice_weight=params.dice_weight, smooth=params.smooth, multiclass=task == "multiclass")


def make_loss(name: str, params, task: str) -> keras.losses.Loss:
    """The loss named ``name`` with its schema params, for ``task`` (binary / multiclass / multilabel)."""
    return schema.LOSSES[name].load()(params, task)
