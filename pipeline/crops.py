"""Crops of long recordings with event boxes: training examples and their framewise targets.

Their OOF and test predictions slide windows over the whole recording
(:func:`pipeline.predict.predict_examples`).

The feature cache holds each whole recording as a time-major array [frames, bins]
(frame ``i`` is centred at ``i * hop_length / sample_rate`` s, see
:mod:`pipeline.features`). Boxes from the manifest become a fixed-size table per
recording (:func:`box_table`), joined to the cached features by id, so the
crop, its framewise targets and its clipwise targets are all cut inside the
tf.data graph:

* a crop of ``length`` frames contains a randomly chosen tp box with
  probability ``positive_probability`` (:func:`crop_start`), else starts
  uniformly at random;
* framewise target [length, C]: 1 on the frames of a tp box of the species,
  0 on the frames of an fp box, elsewhere the recording's frame default
  (:func:`pipeline.data.rfcx.frame_defaults`: 0, or NaN for unknown);
* clipwise target [C]: the max over the crop's frames, NaN-aware (1 if any
  frame is 1, else 0 if any frame is known, else NaN = unknown).

Box columns (:data:`BOX_FIELDS`): species, first frame, end frame (exclusive),
f_min and f_max (Hz; there for losses and augmentations that want frequency
bounds), is_tp. Padding rows have species -1.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

BOX_FIELDS = ("species", "frame_start", "frame_end", "f_min", "f_max", "is_tp")


def frame_range(t_min: float, t_max: float, *, sample_rate: int, hop_length: int) -> tuple:
    """Frames whose centre lies in [t_min, t_max] s: (first, end) with end exclusive (at least one frame)."""
    rate = sample_rate / hop_length
    first = int(math.ceil(t_min * rate - 1e-9))
    end = int(math.floor(t_max * rate + 1e-9)) + 1
    return first, max(end, first + 1)


def box_table(boxes: Sequence[np.ndarray], *, sample_rate: int, hop_length: int, max_boxes: int = 0) -> np.ndarray:
    """Per-recording boxes in frames, padded: float32 [n, B, 6] (see :data:`BOX_FIELDS`).

    boxes : per recording an array [k, 6] of (species, t_min, t_max, f_min, f_max, is_tp) in s / Hz
    (:func:`pipeline.data.rfcx.boxes_of`). ``B`` is the largest k (at least ``max_boxes`` and 1).
    """
    width = max([max_boxes, 1, *[len(b) for b in boxes]])
    table = np.zeros((len(boxes), width, len(BOX_FIELDS)), np.float32)
    table[:, :, 0] = -1.0
    for i, rec in enumerate(boxes):
        for j, (species, t0, t1, f0, f1, tp) in enumerate(np.asarray(rec, np.float64).reshape(-1, 6)):
            first, end = frame_range(t0, t1, sample_rate=sample_rate, hop_length=hop_length)
            table[i, j] = (species, first, end, f0, f1, tp)
    return table


def framewise_targets(boxes, start, length: int, defaults, fill=None):
    """Framewise targets of the crop [start, start + length): tf.float32 [length, C].

    boxes : [B, 6] (one recording of :func:`box_table`); start : int32 scalar;
    defaults : [C] float32, the value of frames outside every box (0 or NaN);
    fill : None, or [length, C] float32 values for the frames whose default is NaN (a student's window
    pseudo-labels, :mod:`pipeline.pseudo`; NaN where there is none). Boxes take precedence.
    """
    import tensorflow as tf

    n_classes = int(defaults.shape[-1])
    frames = tf.cast(start, tf.float32) + tf.range(length, dtype=tf.float32)
    species = tf.cast(boxes[:, 0], tf.int32)
    inside = (frames[:, None] >= boxes[None, :, 1]) & (frames[:, None] < boxes[None, :, 2]) & (species >= 0)[None, :]
    onehot = tf.one_hot(tf.maximum(species, 0), n_classes, dtype=tf.float32)  # [B, C]
    is_tp = boxes[:, 5] > 0.5
    tp_hit = tf.matmul(tf.cast(inside & is_tp[None, :], tf.float32), onehot) > 0
    fp_hit = tf.matmul(tf.cast(inside & ~is_tp[None, :], tf.float32), onehot) > 0
    base = tf.broadcast_to(tf.cast(defaults, tf.float32)[None, :], (length, n_classes))
    if fill is not None:
        base = tf.where(tf.math.is_nan(base), tf.cast(fill, tf.float32), base)
    return tf.where(tp_hit, 1.0, tf.where(fp_hit, 0.0, base))


def clipwise_targets(framewise):
    """NaN-aware max over frames: [T, C] -> [C] (the largest known frame value, NaN if no frame is known).

    With 0/1 frames: 1 if any frame is 1, else 0 if any is known. A soft pseudo-label filled into
    a recording's unknown frames (:mod:`pipeline.pseudo`) keeps its value.
    """
    import tensorflow as tf

    missing = tf.math.is_nan(framewise)
    known = tf.reduce_any(~missing, axis=0)
    top = tf.reduce_max(tf.where(missing, tf.zeros_like(framewise), framewise), axis=0)
    return tf.where(known, top, float("nan"))


def crop_start(boxes, n_frames: int, length: int, positive_probability: float, seed):
    """Start frame (int32) of a random crop of ``length`` frames out of ``n_frames``.

    With probability ``positive_probability`` (and when the recording has a tp box)
    the crop contains a tp box chosen uniformly (a box longer than the crop covers
    it entirely); else the start is uniform over [0, n_frames - length].
    seed : int tensor [2] for the stateless random draws.
    """
    import tensorflow as tf

    last = n_frames - length
    u = tf.random.stateless_uniform([3], seed=seed)
    uniform = tf.cast(tf.floor(u[2] * tf.cast(last + 1, tf.float32)), tf.int32)
    tp = (boxes[:, 5] > 0.5) & (boxes[:, 0] >= 0)
    tp_boxes = tf.boolean_mask(boxes, tp)
    n_tp = tf.shape(tp_boxes)[0]
    pick = tf.minimum(tf.cast(tf.floor(u[1] * tf.cast(n_tp, tf.float32)), tf.int32), tf.maximum(n_tp - 1, 0))
    box = tf.gather(tf.concat([tp_boxes, tf.zeros([1, 6])], 0), pick)
    first, end = tf.cast(box[1], tf.int32), tf.cast(box[2], tf.int32)
    lo = tf.minimum(end - length, first)
    hi = tf.maximum(end - length, first)
    lo = tf.clip_by_value(lo, 0, last)
    hi = tf.clip_by_value(hi, lo, last)
    biased = lo + tf.cast(tf.floor(u[2] * tf.cast(hi - lo + 1, tf.float32)), tf.int32)
    biased = tf.minimum(biased, hi)
    use_box = (u[0] < positive_probability) & (n_tp > 0)
    return tf.where(use_box, biased, tf.minimum(uniform, last))


def crop_examples(ds, *, n_frames: int, length: int, positive_probability: float, seed: int, n_classes: int,
                  framewise: bool, segments=None, n_segments: int = 0):
    """(x [n_frames, D], packed) examples -> (x [length, D], y) crops, one random crop per example.

    packed : [C + B * 6] float32: the recording's frame defaults then its flattened box table; with
    ``n_segments`` (a pseudo-labelled student, :func:`pipeline.pseudo.fill_unknown`) followed by
    [n_segments * C] window pseudo-labels, which fill the unknown frames of their segment.
    segments : int32 [n_frames], each frame's segment (:func:`pipeline.pseudo.frame_segments`), or None.
    y : [C] clipwise targets, or [1 + length, C] (clipwise row, then the framewise targets)
    when ``framewise``. The draw of example ``i`` is seeded by ``(seed, i)``: the same
    dataset order and seed give the same crops.
    """
    import tensorflow as tf

    segment_of = None if not n_segments else tf.constant(np.asarray(segments, np.int32))

    def crop(index, example):
        x, packed = example
        defaults = packed[:n_classes]
        end = tf.shape(packed)[0] - n_segments * n_classes
        boxes = tf.reshape(packed[n_classes:end], (-1, 6))
        start = crop_start(boxes, n_frames, length, positive_probability,
                           tf.stack([tf.cast(seed, tf.int64), index]))
        x = x[start: start + length]
        x = tf.ensure_shape(x, (length, *x.shape[1:]))
        fill = None
        if n_segments:
            values = tf.reshape(packed[end:], (n_segments, n_classes))
            fill = tf.gather(values, segment_of[start: start + length])
        frames = framewise_targets(boxes, start, length, defaults, fill)
        clip = clipwise_targets(frames)
        y = tf.concat([clip[None], frames], 0) if framewise else clip
        return x, y

    return ds.enumerate().map(tf.autograph.experimental.do_not_convert(crop),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def pack_labels(defaults: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """[n, C] frame defaults and [n, B, 6] box tables -> [n, C + B * 6] rows for :func:`pipeline.cache.read.labelled`."""
    return np.concatenate([defaults, boxes.reshape(len(boxes), -1)], axis=1).astype(np.float32)

