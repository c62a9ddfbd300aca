"""The blend methods: their registry and their math, on arrays only (no files).

Methods (``blend.method`` in the queue file, parameters in
:data:`pipeline.schema.BLEND_METHODS`):

``mean``
    plain mean of the predictions.
``rank_mean``
    mean of each experiment's ranks scaled to [0, 1] (OOF and test are ranked
    separately), for experiments whose calibrations differ.
``weights``
    non-negative weights summing to 1 chosen on the OOF by greedy forward
    selection with replacement, started from the best single experiment and
    keeping the best ensemble seen: the blend's OOF score is never below the
    best single experiment's. That score is chosen on the OOF, so it is
    slightly optimistic; ``scores.json`` also holds ``held_out``, the score when
    the weights of each fold are chosen on the other folds.
``stacking``
    a logistic (or ridge) regression per class on the experiments'
    predictions. Its OOF predictions and reported score come from
    cross-validation over the same fold column as the experiments' OOF (fit on
    the other folds, predict the held-out fold), so the score is not
    optimistic; test predictions come from a model fit on the whole OOF.
    Multiclass rows are renormalised to sum to 1.

Every method receives a :class:`BlendInput` (the OOF predictions, their labels
and folds, and the test predictions, never test labels) and returns a
:class:`BlendOutput`: blended OOF and test predictions plus a JSON description
of its weights.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional

import numpy as np
from scipy.stats import rankdata

from pipeline import metrics
from pipeline.errors import BlendError


@dataclasses.dataclass(frozen=True)
class BlendInput:
    """What a blend method may see.

    Attributes
    ----------
    names : list of str [K]
        Experiment names, in the order of ``oof`` and ``test``.
    oof : list of np.ndarray [K x (n, C)]
        Each experiment's OOF predictions, rows aligned.
    y : np.ndarray [n, C]
        OOF targets.
    folds : np.ndarray [n]
        The fold each OOF row was held out in (shared by every experiment).
    test : list of np.ndarray [K x (m, C)] or None
        Each experiment's test predictions, rows aligned.
    task : str
        ``binary``, ``multiclass`` or ``multilabel``.
    targets : list of str [C]
        Target names, in column order.
    metric : str
        A key of :data:`pipeline.metrics.GREATER_IS_BETTER`.
    """

    names: List[str]
    oof: List[np.ndarray]
    y: np.ndarray
    folds: np.ndarray
    test: Optional[List[np.ndarray]]
    task: str
    targets: List[str]
    metric: str

    def score(self, pred: np.ndarray, rows: Optional[np.ndarray] = None) -> float:
        """The metric of OOF predictions [n, C] (or of the rows ``rows`` of them)."""
        y = self.y if rows is None else self.y[rows]
        return metrics.metric_value(self.metric, self.task, y, pred)


@dataclasses.dataclass
class BlendOutput:
    """A method's result: blended OOF [n, C] and test [m, C] predictions and a JSON-able weights description.

    ``scores`` may add method-specific scores (``held_out``, ``in_sample``) to scores.json.
    """

    oof: np.ndarray
    test: Optional[np.ndarray]
    weights: dict
    scores: dict = dataclasses.field(default_factory=dict)
    score_kind: str = "OOF"


# ----------------------------------------------------------------------------- methods


def blend_mean(params, data: BlendInput) -> BlendOutput:
    """The mean method (see the module doc)."""
    w = np.full(len(data.oof), 1.0 / len(data.oof))
    return BlendOutput(oof=_weighted(w, data.oof), test=_weighted(w, data.test), weights=_named(data.names, w))


def blend_rank_mean(params, data: BlendInput) -> BlendOutput:
    """The rank_mean method (see the module doc)."""
    w = np.full(len(data.oof), 1.0 / len(data.oof))
    test = None if data.test is None else _weighted(w, [column_ranks(p) for p in data.test])
    return BlendOutput(oof=_weighted(w, [column_ranks(p) for p in data.oof]), test=test,
                       weights=_named(data.names, w))


def blend_weights(params, data: BlendInput) -> BlendOutput:
    """The weights method (see the module doc)."""
    w = greedy_weights(data.oof, data.score, data.metric, iterations=params.iterations)
    # Honest companion score: each fold blended with weights chosen on the other folds.
    held_out = np.zeros_like(data.oof[0])
    for k in np.unique(data.folds):
        fit = data.folds != k
        if not fit.any():
            break
        wk = greedy_weights([p[fit] for p in data.oof], lambda p, fit=fit: data.score(p, fit), data.metric,
                            iterations=params.iterations)
        held_out[~fit] = _weighted(wk, [p[~fit] for p in data.oof])
    extra = {"held_out": data.score(held_out)} if len(np.unique(data.folds)) > 1 else {}
    return BlendOutput(oof=_weighted(w, data.oof), test=_weighted(w, data.test), weights=_named(data.names, w),
                       scores=extra, score_kind="OOF (weights chosen on the OOF)")


def blend_stacking(params, data: BlendInput) -> BlendOutput:
    """The stacking method (see the module doc)."""
    fold_values = np.unique(data.folds)
    if len(fold_values) < 2:
        raise BlendError("stacking is scored by cross-validation over the folds, so it needs at least 2 folds; "
                         f"the OOF has {len(fold_values)}")
    oof = np.zeros_like(data.oof[0])
    for k in fold_values:
        held = data.folds == k
        models = _fit_stackers(params, data, ~held)
        oof[held] = _apply_stackers(models, [p[held] for p in data.oof], data.task)
    full = _fit_stackers(params, data, np.ones(len(data.y), bool))
    test = None if data.test is None else _apply_stackers(full, data.test, data.task)
    in_sample = data.score(_apply_stackers(full, data.oof, data.task))
    weights = {
        "model": params.model,
        "inputs": "logit of each experiment's prediction" if params.model == "logistic" else "predictions",
        "classes": [m.describe(data.names, data.targets) for m in full],
    }
    return BlendOutput(oof=oof, test=test, weights=weights, scores={"in_sample": in_sample},
                       score_kind="held-out folds (stacker fit on the other folds)")


# ----------------------------------------------------------------------------- helpers


def column_ranks(pred: np.ndarray) -> np.ndarray:
    """Ranks of each column scaled to [0, 1] (ties share their mean rank). pred: [n, C] -> [n, C]."""
    pred = np.asarray(pred, dtype=float)
    if len(pred) < 2:
        return np.full_like(pred, 0.5)
    return (np.apply_along_axis(rankdata, 0, pred) - 1) / (len(pred) - 1)


def greedy_weights(preds: List[np.ndarray], score: Callable[[np.ndarray], float], metric: str, *,
                   iterations: int = 100) -> np.ndarray:
    """Greedy forward selection with replacement (Caruana et al. 2004) of the mean of predictions.

    Parameters
    ----------
    preds : list of np.ndarray [K x (n, C)]
        Candidate predictions.
    score : callable
        ``score(pred [n, C]) -> float``, the metric on the rows of ``preds``.
    metric : str
        Its name (decides whether larger is better).
    iterations : int
        Selection steps after the first pick.

    Returns
    -------
    np.ndarray [K]
        Non-negative weights summing to 1. The first pick is the best single
        prediction and only a strictly better ensemble replaces the best one
        seen, so ``score`` of the weighted mean is never worse than the best
        single prediction's.
    """
    singles = [score(p) for p in preds]
    best_k = 0
    for k, s in enumerate(singles):
        if metrics.is_better(metric, s, singles[best_k]):
            best_k = k
    counts = np.zeros(len(preds))
    counts[best_k] = 1
    total = preds[best_k].astype(float).copy()
    best_counts, best_score = counts.copy(), singles[best_k]
    for step in range(iterations):
        n = counts.sum() + 1
        trial = [score((total + p) / n) for p in preds]
        pick = 0
        for k, s in enumerate(trial):
            if metrics.is_better(metric, s, trial[pick]):
                pick = k
        counts[pick] += 1
        total += preds[pick]
        if metrics.is_better(metric, trial[pick], best_score):
            best_counts, best_score = counts.copy(), trial[pick]
    return best_counts / best_counts.sum()


@dataclasses.dataclass
class _Stacker:
    """One class's second-level model (or a constant fallback when its training labels have one class)."""

    target: int
    model: object = None  # a fitted sklearn LogisticRegression / Ridge, or None: mean of the experiments
    logistic: bool = True

    def describe(self, names, targets):
        if self.model is None:
            return {"class": targets[self.target], "fallback": "mean of the experiments (one label value only)"}
        return {"class": targets[self.target], "intercept": float(np.ravel(self.model.intercept_)[0]),
                "coefficients": dict(zip(names, map(float, np.ravel(self.model.coef_))))}


def _stack_inputs(preds: List[np.ndarray], c: int, logit: bool) -> np.ndarray:
    x = np.stack([p[:, c] for p in preds], axis=1).astype(float)
    if logit:
        x = np.clip(x, 1e-6, 1 - 1e-6)
        x = np.log(x) - np.log1p(-x)
    return x


def _fit_stackers(params, data: BlendInput, rows: np.ndarray) -> List[_Stacker]:
    from sklearn.linear_model import LogisticRegression, Ridge

    logistic = params.model == "logistic"
    models = []
    for c in range(data.y.shape[1]):
        x = _stack_inputs([p[rows] for p in data.oof], c, logistic)
        t = data.y[rows, c] > 0.5
        if t.all() or not t.any():
            models.append(_Stacker(c))
            continue
        if logistic:
            model = LogisticRegression(C=1.0 / params.regularization, max_iter=1000)
        else:
            model = Ridge(alpha=params.regularization)
        model.fit(x, t if logistic else t.astype(float))
        models.append(_Stacker(c, model=model, logistic=logistic))
    return models


def _apply_stackers(models: List[_Stacker], preds: List[np.ndarray], task: str) -> np.ndarray:
    out = np.zeros_like(preds[0], dtype=float)
    for s in models:
        if s.model is None:
            out[:, s.target] = np.mean([p[:, s.target] for p in preds], axis=0)
        elif s.logistic:
            out[:, s.target] = s.model.predict_proba(_stack_inputs(preds, s.target, True))[:, 1]
        else:
            out[:, s.target] = np.clip(s.model.predict(_stack_inputs(preds, s.target, False)), 0.0, 1.0)
    if task == "multiclass":
        out = np.clip(out, 1e-7, None)
        out = out / out.sum(axis=1, keepdims=True)
    return out


def _weighted(w: np.ndarray, preds: Optional[List[np.ndarray]]) -> Optional[np.ndarray]:
    if preds is None:
        return None
    return np.tensordot(np.asarray(w, float), np.stack(preds).astype(float), axes=1)


def _named(names, w) -> dict:
    return {"weights": dict(zip(names, map(float, w)))}


# ----------------------------------------------------------------------------- re-applying a saved blend


def apply_saved(weights: dict, preds: List[np.ndarray], task: str) -> np.ndarray:
    """A written blend (its ``weights.json``) applied to new predictions of its experiments.

    Parameters
    ----------
    weights : dict
        ``weights.json`` of a blend: ``method``, ``experiments`` and the method's description
        (``weights`` per experiment for mean / rank_mean / weights; per class ``intercept`` and
        ``coefficients`` or a ``fallback`` for stacking).
    preds : list of np.ndarray [K x (n, C)]
        The predictions of ``weights["experiments"]``, in that order, rows aligned.
    task : str
        ``multiclass`` rows of a stacker are renormalised, as when the blend was made.

    Returns
    -------
    np.ndarray [n, C]
        What the blend method gave for its test predictions, had these been the test set:
        rank_mean ranks the new predictions among themselves, as it ranks a test set.

    Raises
    ------
    BlendError
        When ``weights`` does not describe a blend of the method (an edited or foreign file).
    """
    method, names = weights.get("method"), list(weights.get("experiments") or [])
    if len(names) != len(preds):
        raise BlendError(f"weights.json names {len(names)} experiments; got predictions of {len(preds)}")
    try:
        if method in ("mean", "weights", "rank_mean"):
            w = np.array([float(weights["weights"][n]) for n in names])
            ranked = [column_ranks(p) for p in preds] if method == "rank_mean" else preds
            return _weighted(w, ranked)
        if method == "stacking":
            logistic = weights["model"] == "logistic"
            out = np.zeros_like(preds[0], dtype=float)
            for c, cls in enumerate(weights["classes"]):
                if "fallback" in cls:
                    out[:, c] = np.mean([p[:, c] for p in preds], axis=0)
                    continue
                coef = np.array([float(cls["coefficients"][n]) for n in names])
                z = _stack_inputs(preds, c, logistic) @ coef + float(cls["intercept"])
                out[:, c] = 1.0 / (1.0 + np.exp(-z)) if logistic else np.clip(z, 0.0, 1.0)
            if task == "multiclass":
                out = np.clip(out, 1e-7, None)
                out = out / out.sum(axis=1, keepdims=True)
            return out
    except (KeyError, TypeError, ValueError) as err:
        raise BlendError(f"weights.json does not describe a {method} blend ({type(err).__name__}: {err})") from None
    raise BlendError(f"weights.json: method {method!r} cannot be re-applied; one of mean, rank_mean, weights, stacking")
