"""What differs between kinds of training data in the fold loop: a small registered strategy.

The fold loop (:mod:`pipeline.fold_loop`) and the fold job
(:mod:`pipeline.fold_job`) are the same for every dataset; a strategy answers
only the questions whose answer depends on the data:

* ``clips`` (whale-style clips, one label row per clip): every training clip once
  per epoch, shuffled and augmented; validation on the clips; ROC AUC.
* ``crops`` (long recordings with event boxes, rfcx): random crops of the cached
  whole-recording features, redrawn every epoch, with framewise and clipwise
  targets cut from the boxes (:mod:`pipeline.crops`; NaN marks unknown labels, so
  the loss must ignore them); validation on one fixed crop per recording,
  containing a tp box where it has one; predictions by sliding windows over
  the whole recording; a NaN-aware ROC AUC and LWLRAP. Boxes and labels of
  validation recordings never reach the training pipeline (each fold's label
  rows are cut from its training ids only), and test labels are never read.

An argument ``spec`` is either the :class:`pipeline.config.Experiment` (in
the loop, before any fold trains) or a :class:`pipeline.fold_job.FoldJob`
(inside the job): both carry the sections ``features``, ``audio``, ``crops``,
``loss``, ``model``, ``augment``, ``train`` and ``predict``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

# Fixed seed of the rfcx validation crops: the same crops in every epoch and every run.
_VALID_SEED = 7919


@dataclass
class FoldData:
    """A fold's tf.data input to :func:`pipeline.train.train_fold`."""

    train_data: Callable  # epoch -> tf.data.Dataset of training batches for that epoch
    valid_batches: object  # tf.data.Dataset of validation batches (deterministic)
    train_steps: int
    valid_steps: int
    pseudo_examples: int = 0  # pseudo-labelled test clips among the training examples (pipeline.pseudo)


def strategy_name(dataset) -> str:
    """The fold strategy of ``dataset``: ``crops`` for long recordings with event boxes, else ``clips``."""
    from pipeline.data.rfcx import has_boxes

    return "crops" if has_boxes(dataset) else "clips"


def features_and_targets(ds):
    """``(id, x, y)`` examples as Keras' ``(x, y)`` (``(id, x, y, w)``: ``(x, y, w)``, w a sample weight)."""
    import tensorflow as tf

    return ds.map(lambda i, x, *rest: (x, *rest), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


class ClipStrategy:
    """Clip data: one example per clip, labels are the clip's targets."""

    unit = "clips"
    metric = "auc"

    def input_shape(self, spec, shape) -> tuple:
        """The model's input: the cached clip features [shape]."""
        return tuple(shape)

    def label_rows(self, spec, rows: pd.DataFrame, targets) -> np.ndarray:
        """What the input pipeline joins to each clip's features: its targets [n, C] float32."""
        return rows[list(targets)].to_numpy(np.float32)

    def bias_targets(self, y: np.ndarray) -> np.ndarray:
        """The training targets the output bias is fitted to."""
        return y

    def memory_needs(self, spec, shape, n_examples: int, n_test: int, label_width: int, n_classes: int):
        """What a fold job's input holds (:class:`pipeline.memory.InputNeeds`): the clips with their label rows
        (``label_width`` floats; + a sample weight with pseudo-labels), pseudo-labelled test clips included; the
        shuffle buffer holds clips. ``spec``: the Experiment (``plan_folds``)."""
        from pipeline import memory

        pseudo = n_test if spec.pseudo is not None and "test" in spec.pseudo.on else 0
        clip, label = int(np.prod(shape)) * 4, (label_width + 1) * 4
        n_train = n_examples - n_examples // spec.folds.n_splits  # the largest fold's training share
        return memory.input_needs(n_examples=n_examples + pseudo, example_bytes=clip, label_bytes=label,
                                  shuffle_buffer=spec.train.shuffle_buffer, per_epoch=n_train + pseudo,
                                  input_bytes=clip + label, batch_size=spec.train.batch_size, unit=self.unit)

    def framewise(self, spec) -> bool:
        """Whether an SED model trains its framewise output too (clips have clip labels only)."""
        return False

    def metrics(self, spec, task: str) -> list:
        """Keras metrics logged every epoch (``val_auc`` can be the monitor)."""
        import keras

        return [keras.metrics.AUC(name="auc", multi_label=task == "multilabel")]

    def training_examples(self, job, cache):
        """The fold's training examples and their count, pseudo-labelled test clips included.

        Returns ``(dataset, n, n_pseudo)``: (id, x, y) examples of ``job.train_ids``, or with
        ``pseudo: {on: [test]}`` (id, x, y, sample weight): the training clips (weight 1) then the test
        clips labelled by the teacher's fold-k model (weight ``pseudo.weight``, :func:`pipeline.pseudo.test_examples`).
        """
        import tensorflow as tf

        from pipeline.cache.read import labelled
        from pipeline.pseudo import test_examples

        train = labelled(cache.dataset("train"), job.train_ids, job.train_labels)
        if job.pseudo is None or "test" not in job.pseudo.on:
            return train, len(job.train_ids), 0
        ids, targets, weights = test_examples(job)
        # The weight travels as a last label column through the join, then becomes the sample weight.
        extra = labelled(cache.dataset("test"), ids, np.concatenate([targets, weights[:, None]], axis=1))
        extra = extra.map(lambda i, x, yw: (i, x, yw[:-1], yw[-1]))
        real = train.map(lambda i, x, y: (i, x, y, tf.ones([], tf.float32)))
        log.info("%s fold %d: %d training clips + %d test clips pseudo-labelled by %s's fold-%d model",
                 job.name, job.fold, len(job.train_ids), len(ids), job.pseudo.teacher, job.fold)
        return real.concatenate(extra), len(job.train_ids) + len(ids), len(ids)

    def fold_data(self, job, cache, batch: int, rt, in_memory: bool) -> FoldData:
        """Every training clip once per epoch (shuffled, augmented, optionally class-weighted); validation clips."""
        from pipeline.distribute import with_shard_policy
        from pipeline.cache.read import labelled
        from pipeline.memory import shuffle_elements
        from pipeline.train import class_weights, input_pipelines

        n_shards = len(cache.files("train"))
        examples, n_train, n_pseudo = self.training_examples(job, cache)
        train_examples = features_and_targets(examples)
        valid_examples = features_and_targets(labelled(cache.dataset("train"), job.valid_ids, job.valid_labels))
        base_train = with_shard_policy(train_examples, n_shards, rt)
        base_valid = with_shard_policy(valid_examples, n_shards, rt)
        if in_memory:
            base_train, base_valid = base_train.cache(), base_valid.cache()
        weights = class_weights(job.train_targets, job.task) if job.train.class_weight == "balanced" else None
        train_data, valid_batches = input_pipelines(
            base_train, base_valid, batch_size=batch, seed=job.train.seed,
            shuffle_buffer=shuffle_elements(job.train.shuffle_buffer, int(np.prod(cache.shape)) * 4),
            fold=job.fold, augment=job.augment, feature=job.features.name, weights=weights,
            weighted_examples=job.pseudo is not None and "test" in job.pseudo.on,  # also when hard mode kept none
        )
        return FoldData(train_data=train_data, valid_batches=valid_batches, train_steps=-(-n_train // batch),
                        valid_steps=-(-len(job.valid_ids) // batch), pseudo_examples=n_pseudo)

    def windows(self, spec, shape) -> dict:
        """Prediction settings of :func:`pipeline.predict.predict_examples` (window: the model's input; TTA views)."""
        return {"aggregate": spec.predict.aggregate, "views": test_time_views(spec)}

    def extra_windows(self, cache, split: str):
        """The later windows of clips longer than ``audio.duration`` (None when there are none)."""
        return cache.extra_windows(split)

    def score(self, y: np.ndarray, preds: np.ndarray) -> float:
        """The fold's score in done.json: ROC AUC of the held-out clips."""
        from pipeline.metrics import auc

        return auc(y, preds)

    def describe(self, spec, shape) -> str:
        """What the experiment's log line adds for this kind of data (nothing for clips)."""
        return ""


class CropStrategy:
    """Long recordings with event boxes: random crops for training, sliding windows for predictions."""

    unit = "recordings"
    metric = "lwlrap"

    def input_shape(self, spec, shape) -> tuple:
        """The model's input: a crop [crop frames, bins]."""
        crop, _, _ = crop_lengths(spec, int(shape[0]))
        return (crop, *shape[1:])

    def label_rows(self, spec, rows: pd.DataFrame, targets) -> np.ndarray:
        """Per recording its frame defaults then its flattened box table [n, C + B * 6] (:func:`crops.pack_labels`).

        rows : the recordings' manifest rows (with ``id`` and ``boxes``).
        """
        from pipeline import crops
        from pipeline.data.rfcx import boxes_of, frame_defaults

        boxes = boxes_of(rows)
        late = [b for b in boxes if len(b) and b[:, 2].max() > spec.audio.duration]
        if late:
            log.warning("%s: %d recordings have boxes after audio.duration=%.1f s (is it the recordings' length?); "
                        "those frames are cut off", spec.name, len(late), spec.audio.duration)
        table = crops.box_table(boxes, sample_rate=spec.audio.sample_rate, hop_length=spec.features.params.hop_length)
        return crops.pack_labels(frame_defaults(rows), table)

    def bias_targets(self, y: np.ndarray) -> np.ndarray:
        """Unknown (NaN) labels count as absent for the output bias."""
        return np.nan_to_num(y)

    def memory_needs(self, spec, shape, n_examples: int, n_test: int, label_width: int, n_classes: int):
        """What a fold job's input holds (:class:`pipeline.memory.InputNeeds`): whole recordings with their
        packed label rows (``label_width`` floats) and one validation crop with its targets (``n_classes``,
        per frame too when framewise) per validation recording; the shuffle buffer holds whole recordings
        (cropped after it). ``spec``: the Experiment."""
        from pipeline import memory
        from pipeline.predict import window_starts

        crop, window, hop = crop_lengths(spec, int(shape[0]))
        if spec.pseudo is not None and "unknown" in spec.pseudo.on:  # + window pseudo-labels (about as many
            label_width += len(window_starts(int(shape[0]), window, hop)) * n_classes  # windows as the student's)
        frame = int(np.prod(shape[1:])) * 4
        targets = ((1 + crop) if self.framewise(spec) else 1) * n_classes * 4
        n_valid = -(-n_examples // spec.folds.n_splits)
        n_train = n_examples - n_examples // spec.folds.n_splits  # the largest fold's training share
        return memory.input_needs(n_examples=n_examples, example_bytes=int(shape[0]) * frame,
                                  label_bytes=label_width * 4, shuffle_buffer=spec.train.shuffle_buffer,
                                  per_epoch=n_train * spec.crops.per_recording, input_bytes=crop * frame + targets,
                                  batch_size=spec.train.batch_size, unit=self.unit,
                                  extra_cached=n_valid * (crop * frame + targets))

    def framewise(self, spec) -> bool:
        """The sed loss trains the framewise output on the boxes' framewise targets."""
        return spec.loss.name == "sed"

    def metrics(self, spec, task: str) -> list:
        """NaN-aware ROC AUC and LWLRAP, logged every epoch."""
        from pipeline.keras_metrics import LWLRAP, MaskedAUC

        return [MaskedAUC(name="auc", multi_label=True), LWLRAP(name="lwlrap")]

    def fold_data(self, job, cache, batch: int, rt, in_memory: bool) -> FoldData:
        """``crops.per_recording`` random crops per recording and epoch; one fixed crop per validation recording."""
        import tensorflow as tf

        from pipeline import augment as aug
        from pipeline import crops
        from pipeline.memory import shuffle_elements
        from pipeline.cache.read import labelled
        from pipeline.pseudo import frame_segments
        from pipeline.train import epoch_seed

        n_frames = int(cache.shape[0])
        frame_bytes = int(np.prod(cache.shape[1:])) * 4
        crop, _, _ = crop_lengths(job, n_frames)
        n_classes = len(job.targets)
        framewise = self.framewise(job)
        base_train = features_and_targets(labelled(cache.dataset("train"), job.train_ids, job.train_labels))
        base_valid = features_and_targets(labelled(cache.dataset("train"), job.valid_ids, job.valid_labels))
        if in_memory:
            base_train, base_valid = base_train.cache(), base_valid.cache()
        valid_crops = crops.crop_examples(base_valid, n_frames=n_frames, length=crop, positive_probability=1.0,
                                          seed=_VALID_SEED, n_classes=n_classes, framewise=framewise)
        if in_memory:
            valid_crops = valid_crops.cache()

        # A student's training rows carry its teacher's window pseudo-labels (pipeline.pseudo.fill_unknown).
        windows = {} if job.pseudo_centres is None else {
            "segments": frame_segments(n_frames, job.features.params.hop_length / job.audio.sample_rate,
                                       np.asarray(job.pseudo_centres)),
            "n_segments": len(job.pseudo_centres)}

        def train_data(epoch):
            # Shuffle order, crops and augmentation all follow the epoch seed (resumable, reproducible).
            s = epoch_seed(job.train.seed, job.fold, epoch)
            ds = base_train.repeat(job.crops.per_recording)
            ds = ds.shuffle(shuffle_elements(job.train.shuffle_buffer, n_frames * frame_bytes), seed=s,
                            reshuffle_each_iteration=False)
            ds = crops.crop_examples(ds, n_frames=n_frames, length=crop,
                                     positive_probability=job.crops.positive_probability, seed=s,
                                     n_classes=n_classes, framewise=framewise, **windows)
            ds = aug.training_batches(ds, job.augment, feature=job.features.name, batch_size=batch, seed=s)
            return ds.prefetch(tf.data.AUTOTUNE)

        return FoldData(train_data=train_data, valid_batches=valid_crops.batch(batch).prefetch(tf.data.AUTOTUNE),
                        train_steps=-(-len(job.train_ids) * job.crops.per_recording // batch),
                        valid_steps=-(-len(job.valid_ids) // batch))

    def windows(self, spec, shape) -> dict:
        """Sliding windows over the whole recording from ``crops.window_*`` (frames)."""
        _, window, hop = crop_lengths(spec, int(shape[0]))
        return {"window": window, "hop": hop, "aggregate": spec.crops.aggregate, "views": test_time_views(spec)}

    def extra_windows(self, cache, split: str):
        """None: the whole recording is the example (cut into windows by the prediction stage)."""
        return None

    def score(self, y: np.ndarray, preds: np.ndarray) -> float:
        """The fold's score in done.json: LWLRAP of the held-out recordings."""
        from pipeline.metrics import lwlrap

        return lwlrap(y, preds)

    def describe(self, spec, shape) -> str:
        """Crop, window and target settings for the experiment's log line."""
        crop, window, hop = crop_lengths(spec, int(shape[0]))
        rate = spec.audio.sample_rate / spec.features.params.hop_length
        return (f"; crops of {crop} frames ({crop / rate:.1f} s), windows of {window} every {hop} frames, "
                f"{spec.crops.aggregate} over windows; targets "
                f"{'clipwise + framewise' if self.framewise(spec) else 'clipwise'}")


def test_time_views(spec) -> tuple:
    """``predict.tta`` as views of :func:`pipeline.predict.tta_views`, in the feature's time steps (() = no TTA).

    Every caller of the prediction stage gets them from ``windows()``, so OOF, test and new-audio
    predictions use the same views.
    """
    from pipeline.predict import tta_views

    feature = spec.features.name
    rate = spec.audio.sample_rate if feature == "waveform" else spec.audio.sample_rate / spec.features.params.hop_length
    return tta_views(spec.predict.tta, feature=feature, steps_per_second=rate)


def crop_lengths(spec, n_frames: int) -> tuple:
    """(crop, window, hop) in frames from ``spec.crops`` and the feature's frame rate."""
    rate = spec.audio.sample_rate / spec.features.params.hop_length

    def frames(seconds, default):
        return default if seconds is None else max(1, min(n_frames, int(round(seconds * rate))))

    crop = frames(spec.crops.crop_seconds, n_frames)
    window = frames(spec.crops.window_seconds, crop)
    hop = frames(spec.crops.window_hop_seconds, max(1, window // 2))
    return crop, window, hop
