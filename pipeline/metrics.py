"""Scores computed from predictions (numpy / scikit-learn; no files, no Keras)."""

from __future__ import annotations

from typing import Dict

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, log_loss, precision_score, recall_score, roc_auc_score


def auc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """ROC AUC; macro over columns for 2-D inputs. NaN when a column has one class only.

    y_true, y_pred : [n] or [n, C]
    """
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    if y_true.ndim == 1:
        y_true, y_pred = y_true[:, None], y_pred[:, None]
    values = []
    for c in range(y_true.shape[1]):
        t = y_true[:, c] > 0.5
        if t.all() or not t.any():
            continue
        values.append(roc_auc_score(t, y_pred[:, c]))
    return float(np.mean(values)) if values else float("nan")


def binary_scores(y_true: np.ndarray, y_pred: np.ndarray, threshold: float = 0.5) -> Dict[str, float]:
    """AUC, log loss, and accuracy / F1 / precision / recall at ``threshold``. Inputs [n]."""
    y_true = np.asarray(y_true, dtype=float).ravel() > 0.5
    y_pred = np.asarray(y_pred, dtype=float).ravel()
    hard = y_pred >= threshold
    return {
        "auc": auc(y_true, y_pred),
        "log_loss": float(log_loss(y_true, np.clip(y_pred, 1e-7, 1 - 1e-7), labels=[False, True])),
        "accuracy": float(accuracy_score(y_true, hard)),
        "f1": float(f1_score(y_true, hard, zero_division=0)),
        "precision": float(precision_score(y_true, hard, zero_division=0)),
        "recall": float(recall_score(y_true, hard, zero_division=0)),
    }


def multiclass_scores(y_true: np.ndarray, y_pred: np.ndarray) -> Dict[str, float]:
    """Macro one-vs-rest AUC, log loss and accuracy. Inputs one-hot / probabilities [n, C]."""
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    labels = y_true.argmax(1)
    probs = np.clip(y_pred, 1e-7, 1.0)
    probs = probs / probs.sum(1, keepdims=True)
    return {
        "auc": auc(y_true, y_pred),
        "log_loss": float(log_loss(labels, probs, labels=list(range(y_true.shape[1])))),
        "accuracy": float(accuracy_score(labels, y_pred.argmax(1))),
    }


def score(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> Dict[str, float]:
    """All scores for a task; ``auc`` is always present and is the headline metric."""
    if task == "binary":
        return binary_scores(y_true, y_pred)
    if task == "multiclass":
        return multiclass_scores(y_true, y_pred)
    return multilabel_scores(y_true, y_pred)


def multilabel_scores(y_true: np.ndarray, y_pred: np.ndarray) -> Dict:
    """Macro AUC, LWLRAP and per-class average precision (``ap``: {class index: AP or None}).

    Inputs [n, C]; NaN targets (unknown labels) count as negatives. A class without
    a positive (or without a negative) has AP / AUC None / left out of the mean.
    """
    from sklearn.metrics import average_precision_score

    y_true = np.nan_to_num(np.asarray(y_true, dtype=float), nan=0.0)
    y_pred = np.asarray(y_pred, dtype=float)
    ap = {}
    for c in range(y_true.shape[1]):
        t = y_true[:, c] > 0.5
        ap[str(c)] = float(average_precision_score(t, y_pred[:, c])) if t.any() else None
    return {"auc": auc(y_true, y_pred), "lwlrap": lwlrap(y_true, y_pred),
            "lwlrap_random": random_lwlrap(y_true), "ap": ap}


def random_lwlrap(y_true: np.ndarray, *, draws: int = 20, seed: int = 0) -> float:
    """LWLRAP of random rankings of ``y_true`` [n, C] (mean over ``draws`` seeded uniform scores): the chance level."""
    y_true = np.nan_to_num(np.asarray(y_true, dtype=float), nan=0.0)
    gen = np.random.default_rng(seed)
    return float(np.mean([lwlrap(y_true, gen.random(y_true.shape)) for _ in range(draws)]))


def lwlrap(y_true: np.ndarray, y_pred: np.ndarray, *, block_rows: int = 4096) -> float:
    """Label-weighted label-ranking average precision (the Freesound / rfcx metric).

    For every positive label (i, c): precision = (positive labels of row i
    scored >= y_pred[i, c]) / (labels of row i scored >= y_pred[i, c]); the
    result is the mean over all positive labels of all rows, so each row counts
    in proportion to its number of positives and rows without positives do not
    count. Ties are ranked pessimistically (every tied label counts as ranked
    above), which makes it equal to scikit-learn's
    ``label_ranking_average_precision_score(y_true, y_pred,
    sample_weight=y_true.sum(1))``.

    y_true : [n, C] multi-hot (values > 0.5 are positive); y_pred : [n, C] scores.
    Returns NaN when there is no positive label. Memory: ``block_rows * C * C`` booleans.
    Raises ValueError for shapes that differ or are not 2-D.
    """
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    if y_true.ndim != 2 or y_true.shape != y_pred.shape:
        raise ValueError(f"lwlrap needs y_true and y_pred of the same shape [n, C]. Received: "
                         f"y_true.shape={y_true.shape}, y_pred.shape={y_pred.shape}")
    positive = y_true > 0.5
    total = int(positive.sum())
    if total == 0:
        return float("nan")
    precision_sum = 0.0
    for start in range(0, len(y_true), block_rows):
        pos = positive[start : start + block_rows]
        pred = y_pred[start : start + block_rows]
        # at_least[i, c, j]: label j of row i is scored at least as high as label c.
        at_least = pred[:, None, :] >= pred[:, :, None]
        rank = at_least.sum(axis=2)
        hits = (at_least & pos[:, None, :]).sum(axis=2)
        precision_sum += float((hits / rank)[pos].sum())
    return precision_sum / total


def task_log_loss(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Log loss of a task's predictions [n, C] (natural log; probabilities clipped to [1e-7, 1 - 1e-7]).

    binary: binary cross-entropy; multiclass: categorical cross-entropy of the
    row-normalised probabilities; multilabel: mean over classes of the binary
    cross-entropy.
    """
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    if y_true.ndim == 1:
        y_true, y_pred = y_true[:, None], y_pred[:, None]
    if task == "multiclass":
        return multiclass_scores(y_true, y_pred)["log_loss"]
    p = np.clip(y_pred, 1e-7, 1 - 1e-7)
    t = (y_true > 0.5).astype(float)
    return float(np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p))))


def metric_value(metric: str, task: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """One named metric (a key of :data:`GREATER_IS_BETTER`) of predictions [n, C].

    Raises ValueError for an unknown metric, or for ``lwlrap`` on fewer than 2 classes
    (where it is 1 for every prediction and so cannot compare anything).
    """
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    if y_true.ndim == 1:
        y_true, y_pred = y_true[:, None], y_pred[:, None]
    if metric == "auc":
        return auc(y_true, y_pred)
    if metric == "log_loss":
        return task_log_loss(task, y_true, y_pred)
    if metric == "lwlrap":
        if y_true.shape[1] < 2:
            raise ValueError("lwlrap ranks the classes of each clip, so it needs at least 2 classes; "
                             f"this task has {y_true.shape[1]}. Use auc or log_loss")
        return lwlrap(y_true, y_pred)
    raise ValueError(f"metric must be one of {sorted(GREATER_IS_BETTER)}. Received: metric={metric!r}")


def is_better(metric: str, a: float, b: float) -> bool:
    """Whether score ``a`` is strictly better than ``b`` for ``metric`` (NaN is never better)."""
    if np.isnan(a):
        return False
    if np.isnan(b):
        return True
    return a > b if GREATER_IS_BETTER[metric] else a < b


# Whether a larger value is better, per metric.
GREATER_IS_BETTER = {"auc": True, "log_loss": False, "lwlrap": True}
