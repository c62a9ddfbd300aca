"""Learning-rate schedules: ``make_schedule(name, params, ...)`` for every name in ``schema.SCHEDULES``.

Each schedule (except ``constant``, a plain float) is a ``keras.optimizers.schedules.LearningRateSchedule`` registered
with ``keras.saving.register_keras_serializable`` (it is saved with the
optimizer in every epoch's ``.keras`` checkpoint, so a resumed fold continues
the same curve). Schedules are written per optimizer step; the YAML gives
durations in epochs, converted here with ``steps_per_epoch``. Every schedule
peaks at ``train.learning_rate``.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from pipeline import schema

PACKAGE = "pipeline"


@keras.saving.register_keras_serializable(package=PACKAGE)
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine decay to ``peak * min_fraction``
    at ``total_steps`` (held there after)."""

    def __init__(self, peak, total_steps, warmup_steps=0, min_fraction=0.0):
        self.peak = peak
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.min_fraction = min_fraction

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = float(max(self.warmup_steps, 0))
        warmup = self.peak * (step + 1.0) / max(warm, 1.0)
        progress = ops.clip((step - warm) / max(float(self.total_steps) - warm, 1.0), 0.0, 1.0)
        floor = self.peak * self.min_fraction
        cosine = floor + (self.peak - floor) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < warm, warmup, cosine)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "min_fraction": self.min_fraction}


@keras.saving.register_keras_serializable(package=PACKAGE)
class RampSustainDecay(keras.optimizers.schedules.LearningRateSchedule):
    """The whale seed's schedule, per epoch e = step / steps_per_epoch (fractional):

    e < ramp: start + (peak - start) * e / ramp; ramp <= e < ramp + sustain: peak;
    after: minimum + (peak - minimum) * decay ** (e - ramp - sustain).
    """

    def __init__(self, peak, steps_per_epoch, start=0.0, minimum=0.0, ramp_epochs=0.0, sustain_epochs=0.0,
                 decay=0.8):
        self.peak = peak
        self.steps_per_epoch = steps_per_epoch
        self.start = start
        self.minimum = minimum
        self.ramp_epochs = ramp_epochs
        self.sustain_epochs = sustain_epochs
        self.decay = decay

    def __call__(self, step):
        epoch = ops.cast(step, "float32") / float(max(self.steps_per_epoch, 1))
        ramp = self.start + (self.peak - self.start) * epoch / max(self.ramp_epochs, 1e-9)
        after = ops.maximum(epoch - self.ramp_epochs - self.sustain_epochs, 0.0)
        decayed = self.minimum + (self.peak - self.minimum) * ops.power(self.decay, after)
        sustained = ops.where(epoch < self.ramp_epochs + self.sustain_epochs, self.peak, decayed)
        return ops.where(epoch < self.ramp_epochs, ramp, sustained)

    def get_config(self):
        return {"peak": self.peak, "steps_per_epoch": self.steps_per_epoch, "start": self.start,
                "minimum": self.minimum, "ramp_epochs": self.ramp_epochs, "sustain_epochs": self.sustain_epochs,
                "decay": self.decay}


@keras.saving.register_keras_serializable(package=PACKAGE)
class TriangularCyclic(keras.optimizers.schedules.LearningRateSchedule):
    """Triangular cyclic LR (Smith 2017): from ``low`` up to ``peak`` and back every 2 * half_cycle_steps."""

    def __init__(self, low, peak, half_cycle_steps):
        self.low = low
        self.peak = peak
        self.half_cycle_steps = half_cycle_steps

    def __call__(self, step):
        position = ops.cast(step, "float32") / float(max(self.half_cycle_steps, 1))
        cycle = ops.floor(1.0 + position / 2.0)
        x = ops.abs(position - 2.0 * cycle + 1.0)
        return self.low + (self.peak - self.low) * ops.maximum(0.0, 1.0 - x)

    def get_config(self):
        return {"low": self.low, "peak": self.peak, "half_cycle_steps": self.half_cycle_steps}


def build_constant(params, *, learning_rate, steps_per_epoch, epochs):
    """The constant schedule (:class:`pipeline.schema.ConstantScheduleParams`); durations in steps."""
    return learning_rate  # a plain float: the optimizer keeps it as a variable


def build_cosine(params, *, learning_rate, steps_per_epoch, epochs):
    """The cosine schedule (:class:`pipeline.schema.CosineScheduleParams`); durations in steps."""
    return WarmupCosine(learning_rate, total_steps=epochs * steps_per_epoch,
                        warmup_steps=int(round(params.warmup_epochs * steps_per_epoch)),
                        min_fraction=params.min_fraction)


def build_ramp_sustain_decay(params, *, learning_rate, steps_per_epoch, epochs):
    """The ramp_sustain_decay schedule (:class:`pipeline.schema.RampSustainDecayParams`); durations in steps."""
    return RampSustainDecay(learning_rate, steps_per_epoch, start=learning_rate * params.start_fraction,
                            minimum=learning_rate * params.min_fraction, ramp_epochs=params.ramp_epochs,
                            sustain_epochs=params.sustain_epochs, decay=params.decay)


def build_cyclic(params, *, learning_rate, steps_per_epoch, epochs):
    """The cyclic schedule (:class:`pipeline.schema.CyclicScheduleParams`); durations in steps."""
    return TriangularCyclic(learning_rate * params.min_fraction, learning_rate,
                            half_cycle_steps=max(1, int(round(params.half_cycle_epochs * steps_per_epoch))))


def make_schedule(name: str, params, *, learning_rate: float, steps_per_epoch: int, epochs: int):
    """The schedule ``name`` peaking at ``learning_rate``; durations in epochs become steps."""
    return schema.SCHEDULES[name].load()(params, learning_rate=float(learning_rate),
                                         steps_per_epoch=int(steps_per_epoch), epochs=int(epochs))


def make_optimizer(train, schedule) -> keras.optimizers.Optimizer:
    """Adam, AdamW (decoupled weight decay) or SGD with Nesterov momentum, from ``train`` settings.

    With ``train.ema`` the optimizer keeps the weights' exponential moving average itself (Keras'
    ``use_ema``): its variables are saved with the optimizer in every epoch's checkpoint, so a
    resumed fold continues the same average (see :func:`pipeline.train.train_fold`).
    """
    ema = {} if train.ema is None else {"use_ema": True, "ema_momentum": train.ema.momentum}
    if train.optimizer == "adam":
        return keras.optimizers.Adam(schedule, **ema)
    if train.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=train.weight_decay, **ema)
    if train.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=train.momentum, nesterov=True, **ema)
    raise ValueError(f"train.optimizer must be one of adam, adamw, sgd. Received: optimizer={train.optimizer!r}")
