"""Fold models -> predictions: OOF on the held-out fold, test averaged over folds."""

from __future__ import annotations

from typing import List, Tuple

import numpy as np


def predict_with_ids(model, batches) -> Tuple[List[str], np.ndarray]:
    """Run ``model`` over a dataset of ``(id, x)`` batches.

    Returns (ids in dataset order, predictions [n, C] float32).
    """
    ids: List[str] = []
    outs: List[np.ndarray] = []
    for batch_ids, x in batches:
        ids.extend(v.decode() for v in batch_ids.numpy())
        outs.append(np.asarray(model.predict_on_batch(x), dtype=np.float32))
    if not outs:
        return [], np.zeros((0, int(model.outputs[0].shape[-1])), np.float32)
    return ids, np.concatenate(outs)


def mean_over_folds(per_fold: List[np.ndarray]) -> np.ndarray:
    """Test predictions averaged over fold models: list of [n, C] -> [n, C]."""
    return np.mean(np.stack(per_fold), axis=0)
