"""Fold models -> predictions: OOF on the held-out fold, test averaged over folds."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd


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


def collect_folds(oof_parts: List[pd.DataFrame], test_parts: List[pd.DataFrame], ids: Sequence[str],
                  test_ids: Sequence[str], pred_cols: Sequence[str]) -> Tuple[pd.DataFrame, Optional[pd.DataFrame]]:
    """The fold loop's result: OOF rows in the order of ``ids`` (clips without a prediction
    left out) and the test predictions averaged over folds (None without a test set)."""
    oof = pd.concat(oof_parts, ignore_index=True)
    present = set(oof["id"])
    oof = oof.set_index("id").loc[[i for i in ids if i in present]].reset_index()
    test = None
    if test_parts:
        aligned = [p.set_index("id").loc[list(test_ids), list(pred_cols)].to_numpy() for p in test_parts]
        test = pd.DataFrame({"id": list(test_ids)})
        test[list(pred_cols)] = mean_over_folds(aligned)
    return oof, test
