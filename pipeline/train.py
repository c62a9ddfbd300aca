"""Training of one fold: resumable epoch by epoch, early stopping on a monitored metric.

The loop calls ``model.fit`` for one epoch at a time with a per-epoch seed, so
the shuffle order and every random op of epoch ``e`` are the same whether the
run was interrupted or not. After each epoch it saves, each atomically and in
this order, the best weights (when improved), the full model with optimizer
state, and ``state.json`` (epoch, best score, patience counter, history). A
killed fold resumes from its last completed epoch with the best-weights
checkpoint intact; ``state.json`` is the commit point.

Weight averaging (issue 17, :mod:`pipeline.averaging`): with ``train.ema`` the
optimizer keeps the average, validation and the saved best / averaged weights
use it, and each epoch's checkpoint holds the training weights with the
average in the optimizer state, so a resumed fold continues both. With
``train.swa`` the weights of the epochs to average are kept in the state folder
(named in ``state.json``) and the fold's model is their mean, its batch-norm
statistics recomputed on the fold's training batches.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from typing import Callable, Optional

import keras
import numpy as np
import pandas as pd

from pipeline import averaging, io, layout
from pipeline.errors import TrainingError
from pipeline.memory import release_freed_memory

log = logging.getLogger(__name__)


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


def seed_epoch(seed: int) -> None:
    """``keras.utils.set_random_seed(seed)`` (Python, NumPy and TensorFlow's global seed) without emptying
    TensorFlow's kernel cache, which ``tf.random.set_seed`` also does: emptied every epoch, it made TensorFlow
    instantiate and optimise (grappler) the training and validation steps again at each epoch's first batch,
    about 0.6 s per epoch for the SED model, on the main thread. The cache only holds state for stateful random
    kernels, and the pipeline's random ops are all stateless (Keras' seed generators, ``pipeline.augment``,
    ``pipeline.crops``), so the epoch's shuffle order and random draws are the same as after
    ``set_random_seed``: the seed an op without its own gets (``random_seed.get_seed``) comes from the two
    attributes set here, exactly as ``tf.random.set_seed`` sets them (TensorFlow 2.17; checked by
    tests/test_fold_runtime.py)."""
    import tensorflow as tf
    from tensorflow.python.eager import context

    ctx = context.context()
    if not (tf.executing_eagerly() and hasattr(ctx, "_seed") and hasattr(ctx, "_rng")):
        keras.utils.set_random_seed(seed)  # another TensorFlow: the public call, cache emptied
        return
    random.seed(seed)
    np.random.seed(seed)
    ctx._seed = seed
    ctx._rng = random.Random(seed)


def save_model(model: keras.Model, path: str) -> None:
    """Save the full model (architecture, weights, optimizer state) atomically, also to a gs:// path."""
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
    swa=None,
    progress: Optional[str] = None,
) -> FoldResult:
    """Train (or resume) one fold and return the model holding its best (or averaged) weights.

    build : () -> uncompiled keras.Model; compile_model : compiles it in place.
    train_data : epoch -> tf.data.Dataset of (x, y) batches for that epoch.
    valid_data : tf.data.Dataset of (x, y) batches (deterministic).
    monitor : ``val_auc`` (maximised) or ``val_loss`` (minimised).
    strategy : tf.distribute.Strategy the model, optimizer and metrics are created under (None: the current one).
    swa : None, or :class:`pipeline.schema.SwaSettings`: the returned model averages the weights of the last
        ``swa.epochs`` or the ``swa.best`` best epochs instead of holding the best epoch's.
    EMA is on when ``compile_model`` gives the optimizer ``use_ema`` (``train.ema``).
    progress : a path for :func:`write_progress` after every epoch (None: none; a scheduler polls it).
    """
    scope = strategy.scope if strategy is not None else contextlib.nullcontext
    state_dir = os.path.join(fold_dir, layout.STATE)
    io.makedirs(state_dir)
    state_path = os.path.join(state_dir, layout.STATE_FILE)
    maximise = not monitor.endswith("loss")

    fresh = {"epoch": 0, "best": None, "best_epoch": 0, "wait": 0, "stopped": False, "history": [], "seconds": 0.0,
             "last": None, "best_weights": None, "averaged": []}
    state = dict(fresh)
    model = None
    if io.isfile(state_path):
        try:
            state = {**fresh, **io.read_json(state_path)}  # keys added since (averaged) start empty
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
    training_weights = averaging.TrainingWeights() if averaging.uses_ema(model) else None
    for epoch in range(state["epoch"], epochs):
        if state["stopped"]:
            break
        seed_epoch(epoch_seed(seed, fold, epoch + 1))
        t0 = time.time()
        # TensorBoard: one run per fold under fold<k>/tb/; epochs keep their numbers across resumes.
        callbacks = [keras.callbacks.TerminateOnNaN(),
                     keras.callbacks.TensorBoard(log_dir=os.path.join(fold_dir, layout.TENSORBOARD),
                                                 write_graph=False, profile_batch=0)]
        if training_weights is not None:  # EMA: validated and saved below; training goes on from the raw weights
            callbacks += [training_weights, keras.callbacks.SwapEMAWeights(swap_on_epoch=True)]
        fit = model.fit(
            train_data(epoch), validation_data=valid_data, initial_epoch=epoch, epochs=epoch + 1, verbose=0,
            steps_per_epoch=train_steps, validation_steps=valid_steps, callbacks=callbacks,
        )
        release_freed_memory()  # the epoch's input pipeline is gone (pipeline.memory)
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
        previous = (state["last"], state["best_weights"], *(e["weights"] for e in state["averaged"]))
        if improved:
            state.update(best=value, best_epoch=epoch + 1, wait=0, best_weights=layout.best_weights_name(epoch + 1))
            _save_weights(model, os.path.join(state_dir, state["best_weights"]))
        else:
            state["wait"] += 1
        if swa is not None:
            entry = {"epoch": epoch + 1, "value": value, "weights": layout.averaged_weights_name(epoch + 1)}
            kept = averaging.kept_epochs([*state["averaged"], entry], last=swa.epochs, best=swa.best,
                                         maximise=maximise)
            if entry in kept:
                _save_weights(model, os.path.join(state_dir, entry["weights"]))
            state["averaged"] = kept
        if training_weights is not None:
            training_weights.restore(model)  # the checkpoint: training weights, the average in the optimizer
        state["epoch"] = epoch + 1
        state["stopped"] = state["wait"] >= patience
        state["seconds"] = time.time() - started
        state["last"] = layout.checkpoint_name(epoch + 1)
        save_model(model, os.path.join(state_dir, state["last"]))
        io.write_json(state_path, state)
        current = (state["last"], state["best_weights"], *(e["weights"] for e in state["averaged"]))
        if progress:
            write_progress(progress, epoch=epoch + 1, epochs=epochs, monitor=monitor, value=value)
        for old in previous:
            if old and old not in current:
                io.remove(os.path.join(state_dir, old))
        log.debug("fold %d epoch %d: %s", fold, epoch + 1, " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
        if state["stopped"]:
            log.debug("fold %d: early stop after epoch %d (best %s=%.4f at epoch %d)", fold, epoch + 1, monitor,
                      state["best"], state["best_epoch"])

    if swa is None:
        with io.local_copy(os.path.join(state_dir, state["best_weights"])) as best:
            model.load_weights(best)
    else:
        _average_epochs(model, state_dir, state["averaged"], train_data(state["epoch"]).take(train_steps),
                        seed=epoch_seed(seed, fold, state["epoch"] + 1))
        log.debug("fold %d: model = mean of the weights of epochs %s", fold,
                  [e["epoch"] for e in state["averaged"]])
    history = pd.DataFrame(state["history"])
    return FoldResult(model=model, history=history, epochs=state["epoch"], best_epoch=state["best_epoch"],
                      best=state["best"], seconds=state["seconds"])


def _average_epochs(model: keras.Model, state_dir: str, kept, batches, *, seed: int) -> None:
    """``train.swa``: the model becomes the mean of the kept epochs' weights, batch norm recomputed on
    ``batches`` (training batches of the epoch after the last, seeded: the same in a resumed run)."""
    with contextlib.ExitStack() as stack:
        paths = [stack.enter_context(io.local_copy(os.path.join(state_dir, e["weights"]))) for e in kept]
        averaging.average_weights(model, paths)
    keras.utils.set_random_seed(seed)
    averaging.recompute_batch_norm(model, batches)
def write_progress(path: str, **fields) -> None:
    """Write a running job's ``progress.json`` atomically: ``fields`` (epoch, monitored value, ...), the
    process's id and peak resident memory so far (``peak_rss_mb``, MiB) and the time, for the scheduler to show."""
    import resource

    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    io.write_json(path, {**fields, "pid": os.getpid(), "peak_rss_mb": round(peak_kib / 1024, 1),
                         "updated": time.time()})


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
                    augment=None, feature: str = "mel", weights: Optional[np.ndarray] = None,
                    weighted_examples: bool = False):
    """The fold's tf.data pipelines: (train_data(epoch) -> training batches, validation batches).

    train_examples, valid_examples : datasets of (x, y) examples. Training batches are
    shuffled and augmented (``augment``: schema.AugmentSettings) with the epoch seed, so
    ``train_data(e)`` is the same every time it is built; with ``weights`` (see
    :func:`class_weights`) they carry per-example sample weights. Validation batches are
    never augmented or reweighted and keep the dataset order (deterministic).
    weighted_examples : the training examples are (x, y, sample weight) (pseudo-labelled clips);
    class weights then multiply each example's own weight.
    """
    import tensorflow as tf

    from pipeline import augment as aug
    from pipeline.schema import AugmentSettings

    settings = augment if augment is not None else AugmentSettings()
    after = None if weights is None else (lambda x, y: (x, y, sample_weights(y, weights)))
    if weights is not None and weighted_examples:
        after = lambda x, y, w: (x, y, w * sample_weights(y, weights))  # noqa: E731

    def train_data(epoch: int):
        epoch_s = epoch_seed(seed, fold, epoch)
        ds = train_examples.shuffle(shuffle_buffer, seed=epoch_s, reshuffle_each_iteration=False)
        ds = aug.training_batches(ds, settings, feature=feature, batch_size=batch_size, seed=epoch_s,
                                  after_batch=after)
        return ds.prefetch(tf.data.AUTOTUNE)

    return train_data, valid_examples.batch(batch_size).prefetch(tf.data.AUTOTUNE)
