"""Classical model families (scikit-learn) on per-clip pooled features: ``logreg`` and ``hgb``.

A cached example is a time-major array (mel ``[frames, mels]``, complexity
``[frames, 4]``, waveform ``[samples]``). :func:`pool_features` summarises each
channel over time by its mean, standard deviation and a few percentiles, so a
clip of any length becomes one fixed-length row; a scikit-learn classifier
learns on those rows.

:class:`ClassicalModel` wraps the fitted classifiers in the small interface the
prediction stage (:func:`pipeline.predict.predict_examples`) calls on a Keras
model: ``predict_on_batch(x) -> [n, C]`` and the ``inputs`` / ``outputs``
shapes (the window length and the number of outputs). So sliding windows over
long clips and every other part of the prediction stage apply unchanged.

Tasks: binary and multilabel fit one classifier per target column, each on
the rows where that label is known (NaN marks an unknown label); multiclass
fits one classifier on the rows whose targets are all known (class = argmax).
A column (or a multiclass fold) with a single known label value gets no
classifier: it predicts the prior, the mean of its known labels (0 when none
is known, as the Keras families' output bias reads unknown labels).

This module imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np


def pool_features(x, *, percentiles: Sequence[int] = (10, 50, 90)) -> np.ndarray:
    """Per-channel statistics over time: the input of the classical families.

    x : array [n, T] (a waveform: one channel of T samples) or [n, T, C] (mel bands,
        complexity series H, C_SQ, C_JSD, C_TV, ...), any float dtype.
    percentiles : percentiles over time (1-100) taken per channel beside the mean and std.

    Returns float32 [n, C * (2 + len(percentiles))], statistic-major: the C means, the C
    standard deviations, then the C values of each percentile in the order given.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3 or x.shape[1] < 1:
        raise ValueError(f"x must be [n, T] or [n, T, C] with T >= 1; got shape {x.shape}")
    stats = [x.mean(axis=1), x.std(axis=1)]
    if percentiles:
        stats.extend(np.percentile(x, list(percentiles), axis=1))
    return np.concatenate(stats, axis=1).astype(np.float32)


@dataclass(frozen=True)
class _Shape:
    """What predict_examples reads of a Keras model's ``inputs[0]`` / ``outputs[0]``: its ``shape``."""

    shape: Tuple[Optional[int], ...]


class ClassicalModel:
    """Fitted scikit-learn classifiers behind the prediction stage's model interface.

    input_shape : one example's shape (``[T, C]`` or ``[T]``); ``inputs[0].shape`` is ``(None, *input_shape)``.
    n_outputs : C, the number of targets; ``outputs[0].shape`` is ``(None, C)``.
    task : ``binary``, ``multiclass`` or ``multilabel``.
    estimator : an unfitted scikit-learn classifier, cloned for each classifier fitted.
    percentiles : the pooling's percentiles (:func:`pool_features`).
    threads : OpenMP / BLAS threads of fitting and predicting. One by default: scikit-learn's OpenMP
        threads spin while they wait, and on cores that other work shares (TensorFlow's pools, parallel fold
        jobs) two threads fitted gradient boosting 7x slower than one in our measurement (README).
    """

    def __init__(self, *, input_shape: Sequence[int], n_outputs: int, task: str, estimator,
                 percentiles: Sequence[int], threads: int = 1):
        self.input_shape = tuple(int(d) for d in input_shape)
        self.n_outputs = int(n_outputs)
        self.task = task
        self.estimator = estimator
        self.percentiles = tuple(percentiles)
        self.threads = threads
        self.inputs = (_Shape((None, *self.input_shape)),)
        self.outputs = (_Shape((None, self.n_outputs)),)
        # Per classifier: (fitted estimator or None, prior [k]); binary/multilabel: one per column.
        self._fitted: List[Tuple[object, np.ndarray]] = []

    def _limits(self):
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=self.threads)

    def fit(self, features: np.ndarray, y: np.ndarray) -> "ClassicalModel":
        """Fit on pooled features [n, F] (:func:`pool_features`) and targets y [n, C] (NaN: unknown label)."""
        y = np.asarray(y, dtype=np.float64)
        with self._limits():
            if self.task == "multiclass":
                known = ~np.isnan(y).any(axis=1)
                self._fitted = [self._fit_one(features[known], y[known].argmax(axis=1), y[known].mean(axis=0)
                                              if known.any() else np.zeros(self.n_outputs))]
            else:
                self._fitted = []
                for c in range(self.n_outputs):
                    known = ~np.isnan(y[:, c])
                    labels = (y[known, c] >= 0.5).astype(int)
                    prior = np.array([labels.mean() if known.any() else 0.0])
                    self._fitted.append(self._fit_one(features[known], labels, prior))
        return self

    def _fit_one(self, features: np.ndarray, labels: np.ndarray, prior: np.ndarray):
        """(estimator fitted on ``labels``, prior); (None, prior) when the labels hold fewer than two values."""
        if len(np.unique(labels)) < 2:
            return None, prior
        from sklearn.base import clone

        return clone(self.estimator).fit(features, labels), prior

    def predict_pooled(self, features: np.ndarray) -> np.ndarray:
        """Probabilities [n, C] float32 for pooled features [n, F]."""
        if not self._fitted:
            raise RuntimeError("ClassicalModel: call fit before predicting")
        n = len(features)
        out = np.zeros((n, self.n_outputs), np.float32)
        with self._limits():
            if self.task == "multiclass":
                estimator, prior = self._fitted[0]
                if estimator is None:
                    out[:] = prior
                else:  # a class absent from the fold's training clips gets probability 0
                    out[:, estimator.classes_] = estimator.predict_proba(features)
            else:
                for c, (estimator, prior) in enumerate(self._fitted):
                    out[:, c] = prior[0] if estimator is None else estimator.predict_proba(features)[:, 1]
        return out

    def predict_on_batch(self, x) -> np.ndarray:
        """Probabilities [n, C] float32 for examples x [n, T, ...] (a numpy array or tensor)."""
        return self.predict_pooled(pool_features(np.asarray(x), percentiles=self.percentiles))


def _class_weight(balanced: bool):
    return "balanced" if balanced else None


def build_logreg(params, *, input_shape: Sequence[int], n_outputs: int, task: str, seed: int,
                 balanced: bool = False, threads: int = 1) -> ClassicalModel:
    """Standardised pooled features -> L2-regularised logistic regression (lbfgs; deterministic).

    params : :class:`pipeline.schema.LogRegParams`. balanced : class weights ``balanced``
    (``train.class_weight``). seed : ``train.seed`` (lbfgs draws no random numbers; kept for symmetry).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    estimator = make_pipeline(StandardScaler(), LogisticRegression(
        C=1.0 / params.regularization, max_iter=params.max_iter, class_weight=_class_weight(balanced), random_state=seed))
    return ClassicalModel(input_shape=input_shape, n_outputs=n_outputs, task=task, estimator=estimator,
                          percentiles=params.percentiles, threads=threads)


def build_hgb(params, *, input_shape: Sequence[int], n_outputs: int, task: str, seed: int,
              balanced: bool = False, threads: int = 1) -> ClassicalModel:
    """Histogram gradient boosting on pooled features (no early stopping: every fold fits ``max_iter`` trees).

    params : :class:`pipeline.schema.HGBParams`. seed : ``train.seed``, the trees' random state.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    estimator = HistGradientBoostingClassifier(
        learning_rate=params.learning_rate, max_iter=params.max_iter, max_leaf_nodes=params.max_leaf_nodes,
        min_samples_leaf=params.min_samples_leaf, l2_regularization=params.l2_regularization,
        early_stopping=False, class_weight=_class_weight(balanced), random_state=seed)
    return ClassicalModel(input_shape=input_shape, n_outputs=n_outputs, task=task, estimator=estimator,
                          percentiles=params.percentiles, threads=threads)
