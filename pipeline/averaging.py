"""Weight averaging of one fold's training trajectory: EMA bookkeeping and SWA / checkpoint averaging.

Both use only the fold's own training run (its weights after each epoch, its
own training batches for the batch-norm statistics), so no information from
the fold's validation clips reaches the model beyond what early stopping and
the best-epoch choice already use.

* EMA (``train.ema``) is kept by the Keras optimizer (``use_ema``) and swapped
  into the model for validation and at the end of every epoch by
  ``keras.callbacks.SwapEMAWeights(swap_on_epoch=True)``. ``fit`` ends by
  overwriting the model with the average (``finalize_variable_values``); since
  the fold loop calls ``fit`` once per epoch, :class:`TrainingWeights` keeps the
  raw weights so that training continues from them (plain EMA, not an average
  that resets the training weights every epoch).
* SWA (``train.swa``): :func:`kept_epochs` chooses which epochs' weights to
  keep, :func:`average_weights` averages them and :func:`recompute_batch_norm`
  renews the batch-norm moving statistics for the averaged weights.
"""

from __future__ import annotations

import math
from typing import Iterable, List, Sequence

import keras
import numpy as np


class TrainingWeights(keras.callbacks.Callback):
    """Remembers the trainable weights at the end of an epoch, before SwapEMAWeights swaps in the average.

    Place it before ``SwapEMAWeights`` in the callback list. After ``fit`` the model holds the EMA
    weights (what was validated: saved as best / averaged weights); :meth:`restore` puts the training
    weights back, leaving the average in the optimizer, which is the state a checkpoint must hold.
    """

    def __init__(self):
        super().__init__()
        self.values: List[np.ndarray] = []

    def on_epoch_end(self, epoch, logs=None):
        self.values = [keras.ops.convert_to_numpy(v) for v in self.model.trainable_variables]

    def restore(self, model: keras.Model) -> None:
        for var, value in zip(model.trainable_variables, self.values):
            var.assign(value)


def uses_ema(model: keras.Model) -> bool:
    """Whether the compiled model's optimizer keeps an EMA of the weights (``train.ema``)."""
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # LossScaleOptimizer wraps it
    return bool(getattr(optimizer, "use_ema", False))


def kept_epochs(entries: Sequence[dict], *, last: int = None, best: int = None, maximise: bool = True) -> List[dict]:
    """The epochs whose weights ``train.swa`` averages, in epoch order.

    entries : one ``{"epoch": e, "value": monitored value, ...}`` per finished epoch whose weights are kept.
    last : keep the last ``last`` epochs; best : keep the ``best`` epochs with the best values (NaN worst,
        ties: the earlier epoch), higher is better when ``maximise``.
    """
    if last is not None:
        chosen = list(entries)[-last:]
    else:
        def rank(entry):
            value = entry["value"]
            bad = value is None or math.isnan(value)
            return (bad, 0.0 if bad else (-value if maximise else value), entry["epoch"])

        chosen = sorted(entries, key=rank)[:best]
    return sorted(chosen, key=lambda e: e["epoch"])


def average_weights(model: keras.Model, paths: Sequence[str]) -> None:
    """Set ``model``'s floating-point weights to the mean of the ``.weights.h5`` files ``paths`` (same model).

    Integer state (e.g. random-seed counters) keeps the model's current values. Arithmetic mean
    in float64, cast back to each weight's dtype.
    """
    current = model.get_weights()
    floating = [np.issubdtype(w.dtype, np.floating) for w in current]
    total = [np.zeros(w.shape, np.float64) for w in current]
    for path in paths:
        model.load_weights(path)
        for n, w in enumerate(model.get_weights()):
            if floating[n]:
                total[n] += w
    model.set_weights([(t / len(paths)).astype(w.dtype) if f else w for t, w, f in zip(total, current, floating)])


def batch_norm_layers(model) -> List[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer of ``model``, nested models included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found.extend(batch_norm_layers(layer))
    return found


def recompute_batch_norm(model: keras.Model, batches: Iterable) -> int:
    """Renew the batch-norm moving statistics of (averaged) weights from training batches; returns batches used.

    An average of weights never had statistics of its own: the moving mean and variance of each
    BatchNormalization layer become the plain mean of the per-batch means and variances over
    ``batches`` (tf.data batches ``(x, y[, w])``, x [B, ...]), the cumulative-average form of
    PyTorch's ``swa_utils.update_bn``: before batch i (0-based) each layer's momentum is set to
    i / (i + 1), so batch 0 replaces the old statistics and later ones are averaged in. The model runs
    eagerly in training mode (momentum is read at every call); momenta are restored afterwards.
    Frozen layers (``trainable=False``) keep their statistics. Does nothing without such layers.
    """
    layers = [layer for layer in batch_norm_layers(model) if layer.trainable]
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    n = 0
    try:
        for batch in batches:
            for layer in layers:
                layer.momentum = n / (n + 1.0)
            model(batch[0], training=True)
            n += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return n
