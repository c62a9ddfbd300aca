"""Training of one fold: resumable epoch by epoch, early stopping on a monitored metric.

The loop calls ``model.fit`` for one epoch at a time with a per-epoch seed, so
the shuffle order and every random op of epoch ``e`` are the same whether the
run was interrupted or not. After each epoch it saves, each atomically and in
this order, the best weights (when improved), the full model with optimizer
state, and ``state.json`` (epoch, best score, patience counter, history). A
killed fold resumes from its last completed epoch with the best-weights
checkpoint intact; ``state.json`` is the commit point.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

import keras
import numpy as np
import pandas as pd

from pipeline import io

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training a fold failed for a reason the user can act on (e.g. NaN loss)."""


@dataclass
class FoldResult:
    model: keras.Model
    history: pd.DataFrame
    epochs: int
    best_epoch: int
    best: float
    seconds: float


def epoch_seed(seed: int, fold: int, epoch: int) -> int:
    return (seed * 1_000_003 + fold * 10_007 + epoch) % (2**31 - 1)


def _save_model(model: keras.Model, path: str) -> None:
    if io.is_remote(path):
        with io.atomic_path(path) as tmp:  # a local .keras file, uploaded and renamed
            model.save(tmp)
        return
    # Keras insists on the .keras suffix, so the temporary name keeps it.
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path).replace(".keras", ".tmp.keras"))
    model.save(tmp)
    os.replace(tmp, path)


def _save_weights(model: keras.Model, path: str) -> None:
    if io.is_remote(path):  # h5py writes local files only
        with io.atomic_path(path) as tmp:
            model.save_weights(tmp)
        return
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path).replace(".weights.h5", ".tmp.weights.h5"))
    model.save_weights(tmp)
    os.replace(tmp, path)


def _learning_rate(model) -> float:
    lr = model.optimizer.learning_rate
    try:
        return float(keras.ops.convert_to_numpy(lr))
    except Exception:  # a schedule object: evaluate at the current step
        return float(keras.ops.convert_to_numpy(lr(model.optimizer.iterations)))


def train_fold(
    *,
    build: Callable[[], keras.Model],
    compile_model: Callable[[keras.Model], None],
    train_data: Callable[[int], object],
    valid_data,
    train_steps: int,
    valid_steps: int,
    fold_dir: str,
    fold: int,
    epochs: int,
    patience: int,
    monitor: str,
    seed: int,
    custom_objects: Optional[dict] = None,
    strategy=None,
) -> FoldResult:
    """Train (or resume) one fold and return the model holding its best weights.

    build : () -> uncompiled keras.Model; compile_model : compiles it in place.
    train_data : epoch -> tf.data.Dataset of (x, y) batches for that epoch.
    valid_data : tf.data.Dataset of (x, y) batches (deterministic).
    monitor : ``val_auc`` (maximised) or ``val_loss`` (minimised).
    strategy : tf.distribute.Strategy the model, optimizer and metrics are created under (None: the current one).
    """
    scope = strategy.scope if strategy is not None else contextlib.nullcontext
    state_dir = os.path.join(fold_dir, "state")
    io.makedirs(state_dir)
    state_path = os.path.join(state_dir, "state.json")
    maximise = not monitor.endswith("loss")

    fresh = {"epoch": 0, "best": None, "best_epoch": 0, "wait": 0, "stopped": False, "history": [], "seconds": 0.0,
             "last": None, "best_weights": None}
    state = dict(fresh)
    model = None
    if io.isfile(state_path):
        try:
            state = io.read_json(state_path)
            with scope():
                model = keras.models.load_model(os.path.join(state_dir, state["last"]), custom_objects=custom_objects,
                                                compile=True)
            log.info("fold %d: resuming after epoch %d", fold, state["epoch"])
        except Exception as err:  # a corrupt checkpoint costs this fold, not the run
            log.warning("fold %d: checkpoint unusable (%s); starting the fold again", fold, err)
            state, model = dict(fresh), None
    if model is None:
        io.rmtree(state_dir)
        io.makedirs(state_dir)
        keras.utils.set_random_seed(epoch_seed(seed, fold, 0))
        with scope():
            model = build()
            compile_model(model)

    started = time.time() - state["seconds"]
    for epoch in range(state["epoch"], epochs):
        if state["stopped"]:
            break
        keras.utils.set_random_seed(epoch_seed(seed, fold, epoch + 1))
        t0 = time.time()
        fit = model.fit(
            train_data(epoch), validation_data=valid_data, initial_epoch=epoch, epochs=epoch + 1, verbose=0,
            steps_per_epoch=train_steps, validation_steps=valid_steps,
            # TensorBoard: one run per fold under fold<k>/tb/; epochs keep their numbers across resumes.
            callbacks=[keras.callbacks.TerminateOnNaN(),
                       keras.callbacks.TensorBoard(log_dir=os.path.join(fold_dir, "tb"), write_graph=False,
                                                   profile_batch=0)],
        )
        if strategy is not None:
            from pipeline.distribute import average_non_trainable

            average_non_trainable(model, strategy)
        logs = {k: float(v[-1]) for k, v in fit.history.items()}
        if not all(math.isfinite(v) for k, v in logs.items() if k.endswith("loss")) or not logs:
            raise TrainingError(
                f"fold {fold}: the loss became NaN or infinite in epoch {epoch + 1} ({logs}); lower "
                f"train.learning_rate or check the features for non-finite values"
            )
        if monitor not in logs:
            raise TrainingError(f"train.monitor={monitor!r} is not among the logged metrics {sorted(logs)}")
        value = logs[monitor]
        row = {"epoch": epoch + 1, **logs, "learning_rate": _learning_rate(model), "seconds": round(time.time() - t0, 3)}
        state["history"].append(row)
        improved = state["best"] is None or (value > state["best"] if maximise else value < state["best"])
        if math.isnan(value):
            improved = state["best"] is None
        # Checkpoints are named by epoch and state.json (written last) names the current ones,
        # so a kill between any two writes resumes from a consistent (epoch, weights) pair.
        previous = (state["last"], state["best_weights"])
        if improved:
            state.update(best=value, best_epoch=epoch + 1, wait=0, best_weights=f"best-epoch{epoch + 1}.weights.h5")
            _save_weights(model, os.path.join(state_dir, state["best_weights"]))
        else:
            state["wait"] += 1
        state["epoch"] = epoch + 1
        state["stopped"] = state["wait"] >= patience
        state["seconds"] = time.time() - started
        state["last"] = f"epoch{epoch + 1}.keras"
        _save_model(model, os.path.join(state_dir, state["last"]))
        io.write_json(state_path, state)
        for old in previous:
            if old and old not in (state["last"], state["best_weights"]):
                io.remove(os.path.join(state_dir, old))
        log.debug("fold %d epoch %d: %s", fold, epoch + 1, " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
        if state["stopped"]:
            log.debug("fold %d: early stop after epoch %d (best %s=%.4f at epoch %d)", fold, epoch + 1, monitor,
                      state["best"], state["best_epoch"])

    with io.local_copy(os.path.join(state_dir, state["best_weights"])) as best:
        model.load_weights(best)
    history = pd.DataFrame(state["history"])
    return FoldResult(model=model, history=history, epochs=state["epoch"], best_epoch=state["best_epoch"],
                      best=state["best"], seconds=state["seconds"])


def skip_finished_fold(fold_dir: str, oof_parts: list, test_parts: Optional[list]) -> bool:
    """If the fold in ``fold_dir`` finished in an earlier run (``done.json``), append its OOF
    (and, unless ``test_parts`` is None, its test) predictions and return True."""
    if not io.isfile(os.path.join(fold_dir, "done.json")):
        return False
    oof_parts.append(io.read_csv(os.path.join(fold_dir, "oof.csv"), dtype={"id": str}))
    if test_parts is not None:
        test_parts.append(io.read_csv(os.path.join(fold_dir, "test.csv"), dtype={"id": str}))
    return True


def finish_fold(result: FoldResult, fold_dir: str) -> None:
    """Write model.keras and history.csv, then drop the resume state."""
    _save_model(result.model, os.path.join(fold_dir, "model.keras"))
    io.write_csv(os.path.join(fold_dir, "history.csv"), result.history)


def clear_state(fold_dir: str) -> None:
    io.rmtree(os.path.join(fold_dir, "state"))


# ----------------------------------------------------------------------------- input pipelines


def class_weights(y: np.ndarray, task: str) -> np.ndarray:
    """Balanced class weights from training targets y [n, C] (NaN: unknown, as masked_bce reads it).

    Returns [2, C]: rows (negative, positive) weights n / (2 n_neg), n / (2 n_pos) per label
    (binary / multilabel, n counting the clips where that label is known), or [1, C]:
    n / (C n_c) per class (multiclass). Counts are floored at 1 so a class absent from the
    fold cannot produce an infinite weight.
    """
    y = np.asarray(y, dtype=np.float64)
    if task == "multiclass":
        return (len(y) / (y.shape[1] * np.maximum(y.sum(0), 1.0)))[None].astype(np.float32)
    known = ~np.isnan(y)
    n = np.maximum(known.sum(0), 1.0)
    pos = np.maximum(np.nansum(y, axis=0), 1.0)
    neg = np.maximum(n - np.nansum(y, axis=0), 1.0)
    return np.stack([n / (2 * neg), n / (2 * pos)]).astype(np.float32)


def sample_weights(y, weights: np.ndarray):
    """Per-example weights [B] for (possibly mixed, soft) targets y [B, C] from :func:`class_weights`.

    Binary / multilabel: the mean over the clip's known labels (unknown ones are NaN).
    """
    from keras import ops

    w = ops.convert_to_tensor(weights, y.dtype)
    if weights.shape[0] == 1:  # multiclass: sum_c y_c w_c
        return ops.sum(y * w[0], axis=-1)
    known = ops.logical_not(ops.isnan(y))
    y0 = ops.where(known, y, ops.zeros_like(y))
    per_label = ops.where(known, y0 * w[1] + (1.0 - y0) * w[0], ops.zeros_like(y))
    n_known = ops.sum(ops.cast(known, y.dtype), axis=-1)
    return ops.sum(per_label, axis=-1) / ops.maximum(n_known, 1.0)


def input_pipelines(train_examples, valid_examples, *, batch_size: int, shuffle_buffer: int, seed: int, fold: int,
                    augment=None, feature: str = "mel", weights: Optional[np.ndarray] = None):
    """The fold's tf.data pipelines: (train_data(epoch) -> training batches, validation batches).

    train_examples, valid_examples : datasets of (x, y) examples. Training batches are
    shuffled and augmented (``augment``: schema.AugmentSettings) with the epoch seed, so
    ``train_data(e)`` is the same every time it is built; with ``weights`` (see
    :func:`class_weights`) they carry per-example sample weights. Validation batches are
    never augmented or reweighted and keep the dataset order (deterministic).
    """
    import tensorflow as tf

    from pipeline import augment as aug
    from pipeline.schema import AugmentSettings

    settings = augment if augment is not None else AugmentSettings()
    after = None if weights is None else (lambda x, y: (x, y, sample_weights(y, weights)))

    def train_data(epoch: int):
        epoch_s = epoch_seed(seed, fold, epoch)
        ds = train_examples.shuffle(shuffle_buffer, seed=epoch_s, reshuffle_each_iteration=False)
        ds = aug.training_batches(ds, settings, feature=feature, batch_size=batch_size, seed=epoch_s,
                                  after_batch=after)
        return ds.prefetch(tf.data.AUTOTUNE)

    return train_data, valid_examples.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------- the fold loop


def fold_members(dataset, cache, folds: pd.DataFrame):
    """``(ids, fold_arr, train_table)``: the cached training ids that have a fold, in dataset order,
    each one's fold number, and the dataset's training table indexed by id (shared by both fold loops)."""
    fold_of = dict(zip(folds["id"], folds["fold"]))
    ids = [i for i in cache.ids("train") if i in fold_of]
    order = {i: n for n, i in enumerate(dataset.train["id"])}
    ids.sort(key=order.__getitem__)
    return ids, np.array([fold_of[i] for i in ids]), dataset.train.set_index("id")


def pending_folds(exp, exp_dir: str, ids: list, fold_arr: np.ndarray, oof_parts: list, test_parts: Optional[list],
                  unit: str):
    """Yield ``(k, fold_dir, tr, va, tr_ids, va_ids)`` for each fold still to train (shared by both fold loops).

    A fold finished earlier (its ``done.json`` written) is skipped and its
    saved predictions are appended to ``oof_parts`` / ``test_parts``; an
    empty training or validation side raises StageError (``unit``: clips, ...).
    """
    from pipeline.queue import StageError

    for k in range(exp.folds.n_splits):
        fold_dir = os.path.join(exp_dir, f"fold{k}")
        if skip_finished_fold(fold_dir, oof_parts, test_parts):
            log.info("%s fold %d/%d: finished earlier; skipped", exp.name, k + 1, exp.folds.n_splits)
            continue
        io.makedirs(fold_dir)
        tr, va = np.flatnonzero(fold_arr != k), np.flatnonzero(fold_arr == k)
        if len(tr) == 0 or len(va) == 0:
            raise StageError(f"fold {k} has no {'training' if len(tr) == 0 else 'validation'} {unit} left "
                             f"after skipping bad audio")
        yield k, fold_dir, tr, va, [ids[i] for i in tr], [ids[i] for i in va]


def features_and_targets(ds):
    """``(id, x, y)`` examples as Keras' ``(x, y)``."""
    import tensorflow as tf

    return ds.map(lambda i, x, y: (x, y), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def run_folds(exp, dataset, cache, folds: pd.DataFrame, exp_dir: str):
    """Train every fold of an experiment (skipping finished ones) and collect predictions.

    Runs under the experiment's strategy, dtype policy and XLA setting
    (:func:`pipeline.distribute.experiment_runtime`, which logs them and
    restores the global dtype policy afterwards).

    Returns (oof DataFrame ``id, fold, <targets>, <pred columns>`` in manifest order,
    test DataFrame ``id, <pred columns>`` averaged over folds, or None without a test set).
    """
    from pipeline import distribute
    from pipeline.data.rfcx import has_boxes

    with distribute.experiment_runtime(exp.train, name=exp.name) as rt:
        if has_boxes(dataset):  # long recordings with event boxes: crops and sliding windows
            from pipeline.rfcx_train import run_folds_rfcx

            return run_folds_rfcx(exp, dataset, cache, folds, exp_dir, rt)
        return _run_folds(exp, dataset, cache, folds, exp_dir, rt)


def _run_folds(exp, dataset, cache, folds: pd.DataFrame, exp_dir: str, rt):
    import tensorflow as tf

    from pipeline.distribute import prediction_model, with_shard_policy

    from pipeline import augment as aug
    from pipeline.losses import make_loss
    from pipeline.models import sed
    from pipeline.models.build import build_model, check_model
    from pipeline.models.heads import prior_bias
    from pipeline.schedules import make_optimizer, make_schedule
    from pipeline.predict import collect_folds, predict_with_ids
    from pipeline.queue import prediction_columns
    from pipeline.records import fits_in_memory, labelled

    # Same seed, same result, also across a kill and resume: op determinism is switched on by
    # distribute.experiment_runtime (CPU kernels are deterministic under it), except with XLA.
    task, targets = dataset.task, list(dataset.targets)
    pred_cols = prediction_columns(targets, task)
    ids, fold_arr, train_table = fold_members(dataset, cache, folds)
    y_all = train_table.loc[ids, targets].to_numpy(np.float32)
    test_ids = cache.ids("test")
    batch = rt.global_batch(exp.train.batch_size)  # train.batch_size is per replica
    in_memory = fits_in_memory(len(ids), cache.shape)
    log.info("%s: %d training clips in %d folds; input %s", exp.name, len(ids), exp.folds.n_splits,
             "cached in memory" if in_memory else "streamed from shards (too large to cache in memory)")

    # Settings that cannot work fail here, before any fold trains (weights files, augmentations, losses).
    check_model(exp.model.name, exp.model.params)
    aug.check_settings(exp.augment, feature=exp.features.name, shape=cache.shape)
    make_loss(exp.loss.name, exp.loss.params, task)

    oof_parts, test_parts = [], []
    for k, fold_dir, tr, va, tr_ids, va_ids in pending_folds(exp, exp_dir, ids, fold_arr, oof_parts,
                                                             test_parts if test_ids else None, "clips"):
        n_shards = len(cache.files("train"))
        train_examples = features_and_targets(labelled(cache.dataset("train"), tr_ids, y_all[tr]))
        valid_examples = features_and_targets(labelled(cache.dataset("train"), va_ids, y_all[va]))
        base_train = with_shard_policy(train_examples, n_shards, rt)
        base_valid = with_shard_policy(valid_examples, n_shards, rt)
        if in_memory:
            base_train, base_valid = base_train.cache(), base_valid.cache()
        train_steps = -(-len(tr_ids) // batch)
        train_data, valid_batches = input_pipelines(
            base_train, base_valid, batch_size=batch, shuffle_buffer=exp.train.shuffle_buffer, seed=exp.train.seed,
            fold=k, augment=exp.augment, feature=exp.features.name,
            weights=class_weights(y_all[tr], task) if exp.train.class_weight == "balanced" else None,
        )

        bias = prior_bias(y_all[tr], task)

        def build(bias=bias):
            model = build_model(exp.model.name, exp.model.params, input_shape=cache.shape, n_outputs=len(targets),
                                task=task, output_bias=bias)
            if isinstance(model.output, dict):
                # SED: the data has clip labels only, so the clipwise output is trained (and saved).
                model = sed.training_view(model)
            return model

        def compile_model(model, train_steps=train_steps):
            metrics = [keras.metrics.AUC(name="auc", multi_label=task == "multilabel")]
            schedule = make_schedule(exp.schedule.name, exp.schedule.params, learning_rate=exp.train.learning_rate,
                                     steps_per_epoch=train_steps, epochs=exp.train.epochs)
            model.compile(optimizer=make_optimizer(exp.train, schedule),
                          loss=make_loss(exp.loss.name, exp.loss.params, task), metrics=metrics,
                          jit_compile=rt.jit_compile)

        result = train_fold(build=build, compile_model=compile_model, train_data=train_data,
                            valid_data=valid_batches, train_steps=train_steps,
                            valid_steps=-(-len(va_ids) // batch), fold_dir=fold_dir, fold=k, epochs=exp.train.epochs,
                            patience=exp.train.patience, monitor=exp.train.monitor, seed=exp.train.seed,
                            strategy=rt.strategy)

        val_ds = labelled(cache.dataset("train"), va_ids, y_all[va]).map(lambda i, x, y: (i, x))
        predictor = prediction_model(result.model, rt)
        got_ids, preds = predict_with_ids(predictor, val_ds.batch(batch))
        oof = pd.DataFrame({"id": got_ids, "fold": k})
        oof = oof.join(pd.DataFrame(train_table.loc[got_ids, targets].to_numpy(np.float32), columns=targets))
        # float64 from here on: the fold files then round-trip exactly (io.write_csv), so a resumed run
        # re-reads the very values an uninterrupted run keeps in memory and averages them the same way.
        oof[pred_cols] = preds.astype(np.float64)
        io.write_csv(os.path.join(fold_dir, "oof.csv"), oof)
        if test_ids:
            t_ids, t_preds = predict_with_ids(predictor, cache.dataset("test").batch(batch))
            test = pd.DataFrame({"id": t_ids})
            test[pred_cols] = t_preds.astype(np.float64)
            io.write_csv(os.path.join(fold_dir, "test.csv"), test)
            test_parts.append(test)
        finish_fold(result, fold_dir)
        from pipeline.metrics import auc

        fold_auc = auc(oof[targets].to_numpy(), preds)
        io.write_json(os.path.join(fold_dir, "done.json"),
                      {"fold": k, "auc": fold_auc, "epochs": result.epochs, "best_epoch": result.best_epoch,
                       "best": result.best, "seconds": round(result.seconds, 2), "n_train": len(tr_ids),
                       "n_valid": len(va_ids)})
        clear_state(fold_dir)
        oof_parts.append(oof)
        log.info("%s fold %d/%d: AUC %.4f, %d epochs (best %d), %.0f s", exp.name, k + 1, exp.folds.n_splits,
                 fold_auc, result.epochs, result.best_epoch, result.seconds)
        keras.backend.clear_session(free_memory=True)

    return collect_folds(oof_parts, test_parts, ids, test_ids, pred_cols)
