"""Blending: combine finished experiments' OOF and test predictions.

Reads only ``output/<experiment>/oof.csv``, ``test.csv`` and ``scores.json``
(never training code, never test labels). Refuses to blend experiments whose
folds or id sets differ, because their OOF scores would not be comparable.
Writes ``output/blend/{oof.csv, test.csv, weights.json, scores.json, submission.csv}``.
"""

from __future__ import annotations

import logging
import os
from typing import Dict, List

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from pipeline import io, metrics
from pipeline.registry import Registry
from pipeline import schema

log = logging.getLogger(__name__)

METHODS = Registry("blend method", allowed=schema.BLEND_METHODS)


class BlendError(ValueError):
    """The selected experiments cannot be blended honestly."""


@METHODS.register("mean")
def _mean(params, preds: List[np.ndarray], y=None, folds=None):
    """preds: list of [n, C] -> ([n, C], weights)."""
    w = np.full(len(preds), 1.0 / len(preds))
    return np.mean(np.stack(preds), axis=0), w


@METHODS.register("rank_mean")
def _rank_mean(params, preds: List[np.ndarray], y=None, folds=None):
    """Mean of column-wise ranks scaled to [0, 1]; only the ordering of each model matters."""
    ranked = [np.stack([(rankdata(p[:, c]) - 1) / max(len(p) - 1, 1) for c in range(p.shape[1])], axis=1) for p in preds]
    w = np.full(len(preds), 1.0 / len(preds))
    return np.mean(np.stack(ranked), axis=0), w


def load_predictions(exp_dir: str) -> Dict[str, object]:
    scores = io.read_json(os.path.join(exp_dir, "scores.json"))
    oof = pd.read_csv(os.path.join(exp_dir, "oof.csv"), dtype={"id": str})
    test_path = os.path.join(exp_dir, "test.csv")
    test = pd.read_csv(test_path, dtype={"id": str}) if os.path.isfile(test_path) else None
    return {"scores": scores, "oof": oof, "test": test}


def check_compatible(names: List[str], loaded: List[dict]) -> None:
    """Raise BlendError unless all experiments share ids and folds (OOF) and test ids."""
    ref_name, ref = names[0], loaded[0]
    ref_oof = ref["oof"].set_index("id")["fold"].sort_index()
    for name, item in zip(names[1:], loaded[1:]):
        oof = item["oof"].set_index("id")["fold"].sort_index()
        if set(oof.index) != set(ref_oof.index):
            diff = set(oof.index) ^ set(ref_oof.index)
            raise BlendError(f"cannot blend {ref_name} and {name}: their OOF ids differ ({len(diff)} ids, e.g. "
                             f"{sorted(diff)[:3]}); blend only experiments on the same training clips")
        if not (oof == ref_oof.loc[oof.index]).all():
            raise BlendError(f"cannot blend {ref_name} and {name}: their folds differ; experiments must share "
                             f"the same fold table (same data and folds settings)")
        if (item["test"] is None) != (ref["test"] is None) or (
            item["test"] is not None and set(item["test"]["id"]) != set(ref["test"]["id"])
        ):
            raise BlendError(f"cannot blend {ref_name} and {name}: their test ids differ")


def blend(names: List[str], loaded: List[dict], method: str, params, metric: str = "auc") -> dict:
    """Blend already-loaded predictions. Returns frames, weights and scores (no files written)."""
    check_compatible(names, loaded)
    meta = loaded[0]["scores"]
    task, targets = meta["task"], list(meta["targets"])
    pred_cols = [c for c in loaded[0]["oof"].columns if c == "pred" or c.startswith("pred:")]
    base = loaded[0]["oof"][["id", "fold", *targets]].sort_values("id", kind="stable").reset_index(drop=True)
    oof_preds = [item["oof"].set_index("id").loc[base["id"], pred_cols].to_numpy(float) for item in loaded]
    fn = METHODS.get(method)
    y = base[targets].to_numpy(float)
    blended, weights = fn(params, oof_preds, y=y, folds=base["fold"].to_numpy())
    oof = base.copy()
    oof[pred_cols] = blended
    test = None
    if loaded[0]["test"] is not None:
        test_ids = loaded[0]["test"]["id"]
        test_preds = [item["test"].set_index("id").loc[test_ids, pred_cols].to_numpy(float) for item in loaded]
        test = pd.DataFrame({"id": test_ids})
        test[pred_cols] = np.tensordot(weights, np.stack(test_preds), axes=1) if method != "rank_mean" else fn(params, test_preds)[0]
    singles = {n: _metric(metric, task, y, p) for n, p in zip(names, oof_preds)}
    best = max(singles, key=singles.get) if metrics.GREATER_IS_BETTER[metric] else min(singles, key=singles.get)
    scores = {"metric": metric, "method": method, "blend": _metric(metric, task, y, blended),
              "best_single": {"experiment": best, "score": singles[best]}, "experiments": singles}
    return {"oof": oof, "test": test, "weights": dict(zip(names, map(float, weights))), "scores": scores,
            "meta": meta}


def _metric(metric, task, y, p) -> float:
    if metric == "auc":
        return metrics.auc(y, p)
    if task == "multiclass":
        return metrics.multiclass_scores(y, p)["log_loss"]
    return metrics.binary_scores(y, p)["log_loss"] if y.shape[1] == 1 else float("nan")


def run_blend(queue, paths) -> dict | None:
    """Blend the queue's finished experiments (``blend.include`` or all on the main data) and write blend/."""
    from pipeline.data import format_submission
    from pipeline.folds import fold_key
    from pipeline.queue import finished

    done = finished(queue, paths)
    if queue.blend.include is not None:
        done = [e for e in done if e.name in queue.blend.include]
        missing = set(queue.blend.include) - {e.name for e in done}
        if missing:
            log.warning("blend: %s not finished; blending the rest", ", ".join(sorted(missing)))
    if done:
        key = fold_key(done[0])
        done = [e for e in done if fold_key(e) == key]
    if len(done) < 1 or queue.blend.method is None:
        log.info("blend: no finished experiments to blend")
        return None
    names = [e.name for e in done]
    loaded = [load_predictions(paths.experiment(n)) for n in names]
    try:
        result = blend(names, loaded, queue.blend.method.name, queue.blend.method.params, queue.blend.metric)
    except BlendError as err:
        log.error("blend: %s", err)
        return None
    folder = os.path.join(paths.output, "blend")
    io.write_csv(os.path.join(folder, "oof.csv"), result["oof"])
    io.write_json(os.path.join(folder, "weights.json"), result["weights"])
    io.write_json(os.path.join(folder, "scores.json"), result["scores"])
    if result["test"] is not None:
        io.write_csv(os.path.join(folder, "test.csv"), result["test"])
        meta = result["meta"]
        pred_cols = [c for c in result["test"].columns if c != "id"]
        sub = format_submission(meta["submission"], meta["targets"], list(result["test"]["id"]),
                                result["test"][pred_cols].to_numpy())
        io.write_csv(os.path.join(folder, "submission.csv"), sub)
    s = result["scores"]
    log.info("blend (%s of %d): OOF %s %.4f; best single %s %.4f", queue.blend.method.name, len(names), s["metric"],
             s["blend"], s["best_single"]["experiment"], s["best_single"]["score"])
    return result
