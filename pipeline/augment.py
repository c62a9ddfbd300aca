"""Training-time augmentation as tf.data transforms (``augment:`` section of an experiment).

Only the fold loop's training batches pass through here; validation and test
pipelines never do. Per example, in this order: random circular time shift,
random gain, Gaussian noise, SpecAugment time masks and frequency masks
(tensorflow-io's ``time_mask`` / ``freq_mask``); then per batch: mixup with a
Beta(alpha, alpha) weight from tensorflow-probability (targets mixed with the
same weight, SED framewise targets too).

Randomness: everything is drawn from the ``seed`` argument (the fold loop
passes the epoch seed), so an epoch replays identically after a resume. Shift,
gain, noise and mixup use stateless random ops keyed by (seed, example or
batch index). tensorflow-io's masks draw from TF's stateful generator; their
map function sets its graph-level seed to ``seed`` and runs sequentially, which
makes them just as reproducible.

Feature semantics: mel features are in dB, so gain is added and masked regions
are set to the clip's mean (tensorflow-io masks to 0, which in dB would be a
loud band); a waveform is scaled by the gain; complexity features are scale
invariant, so gain is an error there. A waveform [samples] has no frequency
axis (``freq_mask`` is an error); its time mask covers samples.
"""

from __future__ import annotations

from typing import Callable, Optional

import tensorflow as tf


def is_active(settings) -> bool:
    """Whether any transform is switched on."""
    return any((settings.time_shift, settings.gain_db, settings.noise_std, settings.time_mask,
                settings.freq_mask, settings.mixup_alpha))


def _stateless_seed(seed: int, salt: int, index):
    return tf.stack([tf.constant(seed * 16 + salt, tf.int64), tf.cast(index, tf.int64)])


def shift_gain_noise(x, settings, *, feature: str, seed):
    """One example's time shift, gain and noise. x : [T] or [T, C]; seed : int64 [2] (stateless)."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    if settings.time_shift:
        frames = tf.shape(x)[0]
        limit = tf.cast(tf.math.floor(settings.time_shift * tf.cast(frames, tf.float32)), tf.int32)
        shift = tf.random.stateless_uniform([], seeds[0], minval=-limit, maxval=limit + 1, dtype=tf.int32)
        x = tf.roll(x, shift, axis=0)
    if settings.gain_db:
        gain = tf.random.stateless_uniform([], seeds[1], -settings.gain_db, settings.gain_db)
        x = x + gain if feature == "mel" else x * tf.pow(10.0, gain / 20.0)
    if settings.noise_std:
        scale = settings.noise_std * tf.math.reduce_std(x)
        x = x + scale * tf.random.stateless_normal(tf.shape(x), seeds[2], dtype=x.dtype)
    return x


def spec_masks(x, settings):
    """SpecAugment masks with tensorflow-io; masked values become the clip's mean.

    x : [T] (waveform: time masks over samples) or [T, C] (masks over frames and channels).
    tensorflow-io masks to 0 (a loud band in dB), so each mask is drawn on x stacked with a
    tensor of ones; where the ones were zeroed, x is replaced by its mean, elsewhere it is
    left bit-for-bit unchanged.
    """
    import tensorflow_io as tfio

    mean = tf.reduce_mean(x)
    y = x[:, None] if len(x.shape) == 1 else x
    channels, frames = tf.shape(y)[1], tf.shape(y)[0]
    ones = tf.ones_like(y)
    # tensorflow-io draws widths in [0, param): param = max width + 1
    if settings.time_mask:
        for _ in range(settings.time_masks):
            z = tfio.audio.time_mask(tf.concat([y, ones], axis=1), param=settings.time_mask + 1)
            y = tf.where(z[:, channels:] > 0, y, mean)
    if settings.freq_mask:
        for _ in range(settings.freq_masks):
            z = tfio.audio.freq_mask(tf.concat([y, ones], axis=0), param=settings.freq_mask + 1)
            y = tf.where(z[frames:] > 0, y, mean)
    return y[:, 0] if len(x.shape) == 1 else y


def augment_examples(ds, settings, *, feature: str, seed: int):
    """Per-example transforms on a dataset of (x, y) or (x, y, sample_weight)."""
    if settings.time_shift or settings.gain_db or settings.noise_std:
        def per_example(index, example):
            x, *rest = example
            return (shift_gain_noise(x, settings, feature=feature, seed=_stateless_seed(seed, 1, index)), *rest)

        ds = ds.enumerate().map(per_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if settings.time_mask or settings.freq_mask:
        def masked(x, *rest):
            # tensorflow-io's masks draw from the stateful generator: seed this graph from `seed`
            # (the op seeds follow deterministically) and map sequentially, so draws never reorder.
            tf.compat.v1.get_default_graph().seed = seed
            return (spec_masks(x, settings), *rest)

        ds = ds.map(masked)
    return ds


def mixup(x, y, *, alpha: float, seed):
    """Mix each example with another of the batch: lam * a + (1 - lam) * b, lam ~ Beta(alpha, alpha).

    x : [B, ...]; y : [B, ...] or a nested structure (e.g. {"clipwise": [B, C], "framewise":
    [B, T, C]}), mixed with the same weights; seed : int [2] (stateless).
    Returns (x, y, lam [B], partner index [B]).
    """
    import tensorflow_probability as tfp

    lam_seed, perm_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    n = tf.shape(x)[0]
    # TFP's stateless seeds are int32 [2]; the cast keeps the low bits
    lam = tfp.distributions.Beta(tf.cast(alpha, tf.float32), tf.cast(alpha, tf.float32)).sample(
        n, seed=tf.cast(lam_seed, tf.int32))
    partner = tf.argsort(tf.random.stateless_uniform([n], perm_seed))

    def mix(v):
        w = tf.reshape(tf.cast(lam, v.dtype), tf.concat([[n], tf.ones([tf.rank(v) - 1], tf.int32)], 0))
        return w * v + (1.0 - w) * tf.gather(v, partner)

    return mix(x), tf.nest.map_structure(mix, y), lam, partner


def mixup_batches(ds, alpha: float, *, seed: int):
    """Mixup on a dataset of (x, y) batches (a sample weight, if present, is mixed like the targets)."""

    def per_batch(index, batch):
        x, *rest = batch
        mixed_x, mixed_rest, _, _ = mixup(x, tuple(rest), alpha=alpha, seed=_stateless_seed(seed, 2, index))
        return (mixed_x, *mixed_rest)

    return ds.enumerate().map(per_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def training_batches(examples, settings, *, feature: str, batch_size: int, seed: int,
                     after_batch: Optional[Callable] = None):
    """(x, y) examples -> augmented (x, y) training batches.

    after_batch : optional map applied to each batch after mixup (e.g. class weights,
    which must see the mixed targets).
    """
    ds = augment_examples(examples, settings, feature=feature, seed=seed).batch(batch_size)
    if settings.mixup_alpha:
        ds = mixup_batches(ds, settings.mixup_alpha, seed=seed)
    if after_batch is not None:
        ds = ds.map(after_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds
