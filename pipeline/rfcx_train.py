"""The fold loop for long recordings with event boxes (rfcx data).

Called by :func:`pipeline.train.run_folds` when the dataset carries boxes. It
differs from the clip-level loop only in its inputs and its predictions:

* training examples are random crops of the cached whole-recording features,
  redrawn every epoch (:func:`pipeline.crops.crop_examples`), with framewise
  and clipwise targets cut from the boxes; NaN marks unknown labels, so
  the loss must ignore them (``masked_bce`` or ``sed``);
* validation examples (for early stopping) are one fixed crop per recording,
  containing a tp box where it has one;
* OOF and test predictions slide a window over each whole recording and take
  the max (or mean) over windows (:func:`pipeline.crops.predict_windows`);
* the Keras metrics are a NaN-aware ROC AUC (``auc``) and LWLRAP (``lwlrap``).

Boxes and labels of validation recordings never reach the training pipeline
(each fold's tables are built from its training ids only), and test labels are
never read.
"""

from __future__ import annotations

import logging
import os

import keras
import numpy as np
import pandas as pd

from pipeline import io

log = logging.getLogger(__name__)

# Fixed seed of the validation crops: the same crops in every epoch and every run.
_VALID_SEED = 7919


def crop_lengths(exp, n_frames: int) -> tuple:
    """(crop, window, hop) in frames from ``exp.crops`` and the feature's frame rate."""
    params = exp.features.params
    rate = exp.audio.sample_rate / params.hop_length

    def frames(seconds, default):
        return default if seconds is None else max(1, min(n_frames, int(round(seconds * rate))))

    crop = frames(exp.crops.crop_seconds, n_frames)
    window = frames(exp.crops.window_seconds, crop)
    hop = frames(exp.crops.window_hop_seconds, max(1, window // 2))
    return crop, window, hop


def check_settings(exp, dataset, shape) -> None:
    """Raise ValueError before any fold trains for settings the rfcx path cannot honour."""
    problems = []
    if exp.features.name not in ("mel", "complexity") or len(shape) != 2:
        problems.append(f"features.name: rfcx crops need time-major features [frames, bins] (mel or complexity); "
                        f"got {exp.features.name} {list(shape)}")
    # A crop away from a tp species' boxes has an unknown (NaN) target for it in either
    # `unknown` mode, so the loss must ignore NaN targets.
    if exp.loss.name not in ("masked_bce", "sed"):
        problems.append(f"loss.name: crops of recordings have unknown (NaN) labels; use masked_bce or sed, "
                        f"not {exp.loss.name}")
    if exp.loss.name == "sed" and exp.model.name != "sed":
        problems.append(f"loss.name: sed needs model.name sed (framewise output); got model {exp.model.name}")
    if exp.augment.mixup_alpha:
        problems.append("augment.mixup_alpha: mixup cannot mix unknown (NaN) labels; set it to 0")
    if exp.augment.time_shift:
        problems.append("augment.time_shift: a circular shift would misalign the framewise targets; random crops "
                        "already shift the calls - set it to 0")
    if exp.train.class_weight != "none":
        problems.append("train.class_weight: balanced weights need known labels; use none with rfcx crops")
    if problems:
        raise ValueError("; ".join(problems))


def run_folds_rfcx(exp, dataset, cache, folds: pd.DataFrame, exp_dir: str, rt=None):
    """Train every fold on crops, predict by sliding windows. Same contract as :func:`pipeline.train.run_folds`.

    rt : :class:`pipeline.distribute.Runtime` (strategy, XLA); None: the default strategy.
    """
    import tensorflow as tf

    from pipeline.distribute import prediction_model

    from pipeline import augment as aug
    from pipeline import crops
    from pipeline.data.rfcx import boxes_of, frame_defaults
    from pipeline.keras_metrics import LWLRAP, MaskedAUC
    from pipeline.losses import make_loss
    from pipeline.metrics import lwlrap
    from pipeline.models import sed
    from pipeline.models.build import build_model, check_model
    from pipeline.models.heads import prior_bias
    from pipeline.predict import collect_folds
    from pipeline.queue import prediction_columns
    from pipeline.records import fits_in_memory, labelled
    from pipeline.schedules import make_optimizer, make_schedule
    from pipeline.train import (clear_state, epoch_seed, features_and_targets, finish_fold, fold_members, pending_folds,
                                train_fold)

    tf.config.experimental.enable_op_determinism()
    task, targets = dataset.task, list(dataset.targets)
    n_classes = len(targets)
    pred_cols = prediction_columns(targets, task)
    ids, fold_arr, train_table = fold_members(dataset, cache, folds)
    rows = train_table.loc[ids]
    test_ids = cache.ids("test")
    batch = rt.global_batch(exp.train.batch_size) if rt is not None else exp.train.batch_size  # per replica
    n_frames = int(cache.shape[0])

    check_settings(exp, dataset, cache.shape)
    check_model(exp.model.name, exp.model.params)
    crop, window, hop = crop_lengths(exp, n_frames)
    input_shape = (crop, *cache.shape[1:])
    aug.check_settings(exp.augment, feature=exp.features.name, shape=input_shape)
    make_loss(exp.loss.name, exp.loss.params, task)
    framewise = exp.loss.name == "sed"
    rate = exp.audio.sample_rate / exp.features.params.hop_length
    late = [b for b in boxes_of(rows.reset_index()) if len(b) and b[:, 2].max() > exp.audio.duration]
    if late:
        log.warning("%s: %d recordings have boxes after audio.duration=%.1f s (is it the recordings' length?); "
                    "those frames are cut off", exp.name, len(late), exp.audio.duration)
    packed = crops.pack_labels(
        frame_defaults(rows.reset_index()),
        crops.box_table(boxes_of(rows.reset_index()), sample_rate=exp.audio.sample_rate,
                        hop_length=exp.features.params.hop_length))
    y_clip = rows[targets].to_numpy(np.float32)
    in_memory = fits_in_memory(len(ids), cache.shape)
    log.info("%s: %d recordings in %d folds; crops of %d frames (%.1f s), windows of %d every %d frames, %s over "
             "windows; targets %s", exp.name, len(ids), exp.folds.n_splits, crop, crop / rate, window, hop,
             exp.crops.aggregate, "clipwise + framewise" if framewise else "clipwise")

    oof_parts, test_parts = [], []
    for k, fold_dir, tr, va, tr_ids, va_ids in pending_folds(exp, exp_dir, ids, fold_arr, oof_parts,
                                                             test_parts if test_ids else None, "recordings"):
        base_train = features_and_targets(labelled(cache.dataset("train"), tr_ids, packed[tr]))
        base_valid = features_and_targets(labelled(cache.dataset("train"), va_ids, packed[va]))
        if in_memory:
            base_train, base_valid = base_train.cache(), base_valid.cache()
        valid_crops = crops.crop_examples(base_valid, n_frames=n_frames, length=crop, positive_probability=1.0,
                                          seed=_VALID_SEED, n_classes=n_classes, framewise=framewise)
        if in_memory:
            valid_crops = valid_crops.cache()
        seed = exp.train.seed

        def train_data(epoch, k=k, base_train=base_train):
            # Shuffle order, crops and augmentation all follow the epoch seed (resumable, reproducible).
            s = epoch_seed(seed, k, epoch)
            ds = base_train.repeat(exp.crops.per_recording)
            ds = ds.shuffle(exp.train.shuffle_buffer, seed=s, reshuffle_each_iteration=False)
            ds = crops.crop_examples(ds, n_frames=n_frames, length=crop,
                                     positive_probability=exp.crops.positive_probability, seed=s,
                                     n_classes=n_classes, framewise=framewise)
            ds = aug.training_batches(ds, exp.augment, feature=exp.features.name, batch_size=batch, seed=s)
            return ds.prefetch(tf.data.AUTOTUNE)

        valid_batches = valid_crops.batch(batch).prefetch(tf.data.AUTOTUNE)
        train_steps = -(-len(tr_ids) * exp.crops.per_recording // batch)
        bias = prior_bias(np.nan_to_num(y_clip[tr]), task)

        def build(bias=bias):
            model = build_model(exp.model.name, exp.model.params, input_shape=input_shape, n_outputs=n_classes,
                                task=task, output_bias=bias)
            if isinstance(model.output, dict):
                model = sed.training_view(model, framewise=framewise)
            return model

        def compile_model(model, train_steps=train_steps):
            schedule = make_schedule(exp.schedule.name, exp.schedule.params, learning_rate=exp.train.learning_rate,
                                     steps_per_epoch=train_steps, epochs=exp.train.epochs)
            model.compile(optimizer=make_optimizer(exp.train, schedule),
                          loss=make_loss(exp.loss.name, exp.loss.params, task),
                          metrics=[MaskedAUC(name="auc", multi_label=True), LWLRAP(name="lwlrap")],
                          jit_compile=rt.jit_compile if rt is not None else False)

        result = train_fold(build=build, compile_model=compile_model, train_data=train_data,
                            valid_data=valid_batches, train_steps=train_steps,
                            valid_steps=-(-len(va_ids) // batch), fold_dir=fold_dir, fold=k,
                            epochs=exp.train.epochs, patience=exp.train.patience, monitor=exp.train.monitor,
                            seed=seed, strategy=rt.strategy if rt is not None else None)
        predictor = prediction_model(result.model, rt)

        val_ds = labelled(cache.dataset("train"), va_ids, y_clip[va]).map(lambda i, x, y: (i, x))
        got_ids, preds = crops.predict_windows(predictor, val_ds.batch(8), window=window, hop=hop,
                                               aggregate=exp.crops.aggregate, batch_size=batch)
        oof = pd.DataFrame({"id": got_ids, "fold": k})
        oof = oof.join(pd.DataFrame(train_table.loc[got_ids, targets].to_numpy(np.float32), columns=targets))
        # float64 from here on: the fold files then round-trip exactly (io.write_csv), so a resumed run
        # re-reads the very values an uninterrupted run keeps in memory and averages them the same way.
        oof[pred_cols] = preds.astype(np.float64)
        io.write_csv(os.path.join(fold_dir, "oof.csv"), oof)
        if test_ids:
            t_ids, t_preds = crops.predict_windows(predictor, cache.dataset("test").batch(8), window=window,
                                                   hop=hop, aggregate=exp.crops.aggregate, batch_size=batch)
            test = pd.DataFrame({"id": t_ids})
            test[pred_cols] = t_preds.astype(np.float64)
            io.write_csv(os.path.join(fold_dir, "test.csv"), test)
            test_parts.append(test)
        finish_fold(result, fold_dir)
        fold_lwlrap = lwlrap(oof[targets].to_numpy(), preds)
        io.write_json(os.path.join(fold_dir, "done.json"),
                      {"fold": k, "lwlrap": fold_lwlrap, "epochs": result.epochs, "best_epoch": result.best_epoch,
                       "best": result.best, "seconds": round(result.seconds, 2), "n_train": len(tr_ids),
                       "n_valid": len(va_ids)})
        clear_state(fold_dir)
        oof_parts.append(oof)
        log.info("%s fold %d/%d: LWLRAP %.4f, %d epochs (best %d), %.0f s", exp.name, k + 1, exp.folds.n_splits,
                 fold_lwlrap, result.epochs, result.best_epoch, result.seconds)
        keras.backend.clear_session(free_memory=True)

    return collect_folds(oof_parts, test_parts, ids, test_ids, pred_cols)
