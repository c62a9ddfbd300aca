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
    return {"auc": auc(y_true, y_pred)}


# Whether a larger value is better, per headline metric.
GREATER_IS_BETTER = {"auc": True, "log_loss": False}
