"""Training of one fold for a classical family (registry kind ``sklearn``): pool the training clips, fit once.

The Keras families train epoch by epoch (:mod:`pipeline.train`); a classical
family (:mod:`pipeline.models.classical`) has no epochs. Its fold job reads the
same training examples the Keras path reads - the fold's ``train_ids`` with
their label rows joined from the manifest (:func:`pipeline.cache.read.labelled`),
each clip's cached features of its first ``audio.duration`` seconds - pools
each example over time and fits the family's classifiers once. Validation
clips are not read here: they are predicted afterwards by the one prediction
stage, like every fold model.

Settings of the epoch loop do not apply and are ignored: ``loss``,
``schedule``, ``augment`` (the examples are never augmented),
``train.epochs / learning_rate / patience / monitor / optimizer /
weight_decay / momentum / shuffle_buffer / precision / jit_compile``.
``train.seed`` seeds the classifiers, ``train.class_weight: balanced`` becomes
scikit-learn's ``class_weight="balanced"``, ``train.batch_size`` is the number
of examples read (and predicted) at a time.

A fold keeps no resume state: killed mid-fit, it fits again (a matter of
seconds); a finished fold is skipped by its ``done.json`` like every fold.
"""

from __future__ import annotations

import time
from typing import Sequence, Tuple

import numpy as np
import pandas as pd

from pipeline import io
from pipeline.errors import TrainingError


def pooled_examples(examples, *, percentiles: Sequence[int], batch_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pooled features and label rows of ``(id, x, y)`` examples, read ``batch_size`` at a time.

    examples : tf.data.Dataset of ``(id, x [T, ...], y [C])``, unbatched.
    Returns (features [n, F] float32 from :func:`pipeline.models.classical.pool_features`, y [n, C] float32),
    in dataset order; only the pooled rows are held in memory, never the whole fold's features.
    """
    from pipeline.models.classical import pool_features

    features, labels = [], []
    for _, x, y in examples.batch(batch_size):
        features.append(pool_features(x.numpy(), percentiles=percentiles))
        labels.append(y.numpy())
    if not features:
        raise TrainingError("the fold has no training examples to fit")
    return np.concatenate(features), np.concatenate(labels).astype(np.float32)


def fit_fold(job, cache, *, batch_size: int):
    """Fit the classical family of ``job`` (a :class:`pipeline.fold_job.FoldJob`) on its training clips.

    Returns a :class:`pipeline.train.FoldResult`: the fitted
    :class:`pipeline.models.classical.ClassicalModel`, a one-row history (``epoch`` 1, ``seconds``),
    ``epochs`` 1 and ``best_epoch`` 1 (the one fit), ``best`` None (no monitored validation metric)
    and ``seconds`` of reading, pooling and fitting.
    """

    from pipeline.cache.read import labelled
    from pipeline.schema import MODELS
    from pipeline.train import FoldResult

    if job.strategy != "clips":  # pipeline.config_checks refuses long recordings with boxes up front
        raise TrainingError(f"model {job.model.name} fits whole clips; the {job.strategy} fold strategy of long "
                            f"recordings is not supported")
    started = time.time()
    # One thread, wherever the job runs: fold jobs share the cores, and gradient boosting's parallel sums
    # depend on the thread count (the same fold gives the same model in the runner and in a worker).
    threads = 1
    model = MODELS[job.model.name].load()(
        job.model.params, input_shape=cache.shape, n_outputs=len(job.targets), task=job.task, seed=job.train.seed,
        balanced=job.train.class_weight == "balanced", threads=threads)
    examples = labelled(cache.dataset("train"), job.train_ids, job.train_labels)
    features, y = pooled_examples(examples, percentiles=model.percentiles, batch_size=batch_size)
    model.fit(features, y)
    seconds = time.time() - started
    history = pd.DataFrame([{"epoch": 1, "seconds": round(seconds, 3)}])
    return FoldResult(model=model, history=history, epochs=1, best_epoch=1, best=None, seconds=seconds)


def save_classical(model, path: str) -> None:
    """Write a fitted :class:`pipeline.models.classical.ClassicalModel` to ``path`` atomically (joblib pickle)."""
    import joblib

    with io.atomic_path(path) as tmp:
        joblib.dump(model, tmp)


def load_classical(path: str):
    """The :class:`pipeline.models.classical.ClassicalModel` written by :func:`save_classical` (the pipeline's own
    file: unpickling runs code, so never load one from an untrusted source)."""
    import joblib

    with io.local_copy(path) as local:
        return joblib.load(local)
