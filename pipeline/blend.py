"""Blending: combine finished experiments' OOF and test predictions.

Reads only ``output/<experiment>/oof.csv``, ``test.csv`` and ``scores.json``
(never training code, never test labels). Refuses to blend experiments whose
folds or id sets differ, because their OOF scores would not be comparable.
Writes ``output/blend/{oof.csv, test.csv, weights.json, scores.json, submission.csv}``.

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

Every method receives the OOF predictions, their labels and folds, and the
test predictions (never test labels) and returns blended OOF and test
predictions plus a JSON description of its weights.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable, Dict, List, Optional

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from pipeline import io, layout, metrics, ownership
from pipeline import schema
from pipeline.errors import BlendError

log = logging.getLogger(__name__)


BLEND_FILES = ("oof.csv", "test.csv", "weights.json", "scores.json", "submission.csv")


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


# ----------------------------------------------------------------------------- loading and checks


def load_predictions(exp_dir: str) -> Dict[str, object]:
    """Read one experiment's ``scores.json``, ``oof.csv`` and (when present) ``test.csv``; nothing else.

    Raises
    ------
    BlendError
        Naming the file, when one is missing, truncated or unparsable, or when
        scores.json lacks what the blend needs (task, targets, submission).
        The values themselves are checked by :func:`check_compatible`.
    """
    scores_path = os.path.join(exp_dir, "scores.json")
    scores = _read(scores_path, io.read_json)
    if not isinstance(scores, dict):
        raise BlendError(f"{scores_path}: expected a JSON object; found {type(scores).__name__}")
    lacking = [k for k in ("task", "targets", "submission") if k not in scores]
    if lacking:
        raise BlendError(f"{scores_path}: lacks {lacking}; rerun the experiment (--force --only "
                         f"{os.path.basename(exp_dir)})")
    if scores["task"] not in ("binary", "multiclass", "multilabel") or not isinstance(scores["targets"], list) \
            or not scores["targets"] or not all(isinstance(t, str) for t in scores["targets"]):
        raise BlendError(f"{scores_path}: 'task' must be binary, multiclass or multilabel and 'targets' a list of "
                         f"names; found task={scores['task']!r}, targets={scores['targets']!r}")
    all_test_ids = scores.get("all_test_ids")
    if all_test_ids is not None and not (isinstance(all_test_ids, list) and all(
            isinstance(i, (str, int)) and not isinstance(i, bool) for i in all_test_ids)):
        raise BlendError(f"{scores_path}: 'all_test_ids' must be a list of test ids; found "
                         f"{type(all_test_ids).__name__}")
    oof = _read(os.path.join(exp_dir, "oof.csv"), lambda p: io.read_csv(p, dtype={"id": str}))
    test_path = os.path.join(exp_dir, "test.csv")
    test = _read(test_path, lambda p: io.read_csv(p, dtype={"id": str})) if io.isfile(test_path) else None
    if test is None and scores.get("all_test_ids") and io.isfile(os.path.join(exp_dir, "submission.csv")):
        # The experiment predicted a test set (it wrote a submission), so its test.csv was deleted.
        raise BlendError(f"{test_path}: missing, but the experiment has test predictions (submission.csv); "
                         f"rerun it (--force --only {os.path.basename(exp_dir)})")
    return {"scores": scores, "oof": oof, "test": test}


def _read(path: str, reader):
    """``reader(path)``, with a BlendError naming the file for a missing, empty or unparsable one."""
    try:
        return reader(path)
    except FileNotFoundError:
        raise BlendError(f"{path}: missing; rerun the experiment (--force --only "
                         f"{os.path.basename(os.path.dirname(path))})") from None
    except pd.errors.EmptyDataError:
        raise BlendError(f"{path}: empty") from None
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise BlendError(f"{path}: unreadable ({type(err).__name__}: {err})") from None


def prediction_columns(frame: pd.DataFrame) -> List[str]:
    """``pred`` or ``pred:<class>`` columns of an experiment's oof.csv / test.csv."""
    return [c for c in frame.columns if c == "pred" or c.startswith("pred:")]


def check_compatible(names: List[str], loaded: List[dict]) -> None:
    """Raise BlendError unless every experiment's files are valid and all share task, targets, OOF ids and
    folds, and test ids.

    Valid: oof.csv has ``id``, ``fold``, the targets of scores.json (0/1 or
    empty) and the prediction columns; test.csv has ``id`` and the same
    prediction columns; every prediction is a finite probability in [0, 1]
    (every blend metric - auc, log_loss, lwlrap - and every method reads
    probabilities; a 1.5 or a NaN would be averaged or ranked without a
    word). Messages name the file (``<experiment>/oof.csv`` inside the
    output folder), the column and the CSV line.
    """
    if not names:
        raise BlendError("nothing to blend: no experiments given")
    ref_name, ref = names[0], loaded[0]
    for name, item in zip(names[1:], loaded[1:]):  # first: a mismatch explains more than a column it lacks
        for key in ("task", "targets"):
            if item["scores"].get(key) != ref["scores"].get(key):
                raise BlendError(f"cannot blend {ref_name} and {name}: their {key} differ "
                                 f"({ref['scores'].get(key)!r} vs {item['scores'].get(key)!r})")
    for name, item in zip(names, loaded):
        oof = item["oof"]
        for col in ("id", "fold"):
            if col not in oof.columns:
                raise BlendError(f"cannot blend {name}: {name}/oof.csv has no {col!r} column")
        if not prediction_columns(oof):
            raise BlendError(f"cannot blend {name}: {name}/oof.csv has no prediction column (pred or pred:<class>)")
        if oof["id"].duplicated().any():
            dup = oof.loc[oof["id"].duplicated(), "id"].iloc[:3].tolist()
            raise BlendError(f"cannot blend {name}: {name}/oof.csv repeats ids (e.g. {dup})")
        _check_values(name, item)
        if item["test"] is not None and item["test"]["id"].duplicated().any():
            raise BlendError(f"cannot blend {name}: {name}/test.csv repeats ids")
    ref_oof = ref["oof"].set_index("id")["fold"]
    for name, item in zip(names[1:], loaded[1:]):
        if prediction_columns(item["oof"]) != prediction_columns(ref["oof"]):
            raise BlendError(f"cannot blend {ref_name} and {name}: their prediction columns differ")
        oof = item["oof"].set_index("id")["fold"]
        if set(oof.index) != set(ref_oof.index):
            diff = set(oof.index) ^ set(ref_oof.index)
            raise BlendError(f"cannot blend {ref_name} and {name}: their OOF ids differ ({len(diff)} ids, e.g. "
                             f"{sorted(diff)[:3]}); blend only experiments on the same training clips")
        differ = (oof != ref_oof.loc[oof.index]).to_numpy()
        if differ.any():
            example = oof.index[differ][:3].tolist()
            raise BlendError(f"cannot blend {ref_name} and {name}: their folds differ ({int(differ.sum())} clips, "
                             f"e.g. {example}); experiments must share the same fold table (same data and folds "
                             f"settings), otherwise their OOF scores are not comparable")
        if (item["test"] is None) != (ref["test"] is None) or (
            item["test"] is not None and set(item["test"]["id"]) != set(ref["test"]["id"])
        ):
            raise BlendError(f"cannot blend {ref_name} and {name}: their test ids differ")


def _check_values(name: str, item: dict) -> None:
    """BlendError naming file, column and CSV line for a label or prediction a blend must not read."""
    oof, test = item["oof"], item["test"]
    pred = prediction_columns(oof)
    targets = [str(t) for t in item["scores"].get("targets", [])]
    missing = [t for t in targets if t not in oof.columns]
    if missing:
        raise BlendError(f"cannot blend {name}: {name}/oof.csv has no label column(s) {missing[:5]} "
                         f"(scores.json lists the targets {targets[:5]})")
    if not pd.to_numeric(oof["fold"], errors="coerce").notna().all():
        bad = pd.to_numeric(oof["fold"], errors="coerce").isna().to_numpy()
        raise BlendError(f"cannot blend {name}: {name}/oof.csv column 'fold' line {_line(bad)} holds "
                         f"{oof['fold'][bad].iloc[0]!r}; expected a fold number")
    for col in targets:
        values = pd.to_numeric(oof[col], errors="coerce")
        bad = (values.notna() & ~values.isin([0, 1])) | (values.isna() & oof[col].notna())
        if bad.any():
            raise BlendError(f"cannot blend {name}: {name}/oof.csv label column {col!r} line {_line(bad)} holds "
                             f"{oof[col][bad].iloc[0]!r}; labels are 0 or 1")
    frames = [("oof.csv", oof)]
    if test is not None:
        if "id" not in test.columns or prediction_columns(test) != pred:
            raise BlendError(f"cannot blend {name}: {name}/test.csv needs the columns id, {', '.join(pred)}; "
                             f"found {list(map(str, test.columns))[:8]}")
        frames.append(("test.csv", test))
    for file, frame in frames:
        for col in pred:
            values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float)
            bad = ~((values >= 0.0) & (values <= 1.0))  # NaN, inf, text and out-of-range values alike
            if bad.any():
                raise BlendError(f"cannot blend {name}: {name}/{file} column {col!r} line {_line(bad)} holds "
                                 f"{frame[col].iloc[int(np.flatnonzero(bad)[0])]!r} ({int(bad.sum())} such "
                                 f"row(s)); predictions must be finite probabilities in [0, 1]")


def _line(mask) -> int:
    """The CSV line (header = line 1) of the first True entry of ``mask``."""
    return int(np.flatnonzero(np.asarray(mask, bool))[0]) + 2


# ----------------------------------------------------------------------------- blending


def blend(names: List[str], loaded: List[dict], method: str, params=None, metric: str = "auc") -> dict:
    """Blend already-loaded predictions (see :func:`load_predictions`); writes nothing.

    Parameters
    ----------
    names : list of str [K]
        Experiment names.
    loaded : list of dict [K]
        :func:`load_predictions` of each experiment.
    method : str
        A registered blend method.
    params : dataclass or None
        Its parameters (:data:`pipeline.schema.BLEND_METHODS`); None: defaults.
    metric : str
        ``auc``, ``log_loss`` or ``lwlrap``.

    Returns
    -------
    dict
        ``oof`` (``id, fold, <targets>, <pred columns>``), ``test`` (``id,
        <pred columns>`` or None), ``weights`` (weights.json), ``scores``
        (scores.json: the blend's OOF score, how it was obtained, every
        experiment's score and the best single one) and ``meta`` (the first
        experiment's scores.json: task, targets, submission format).

    Raises
    ------
    BlendError
        Mismatched experiments, or a metric that does not apply to the task.
    UnknownNameError
        An unregistered method.
    """
    entry = schema.BLEND_METHODS[method]
    fn = entry.load()
    params = entry.params() if params is None else params
    check_compatible(names, loaded)
    meta = loaded[0]["scores"]
    task, targets = meta["task"], list(meta["targets"])
    pred_cols = prediction_columns(loaded[0]["oof"])
    base = loaded[0]["oof"][["id", "fold", *targets]].sort_values("id", kind="stable").reset_index(drop=True)
    oof_preds = [item["oof"].set_index("id").loc[base["id"], pred_cols].to_numpy(float) for item in loaded]
    test_ids = None if loaded[0]["test"] is None else list(loaded[0]["test"]["id"])
    test_preds = None if test_ids is None else [
        item["test"].set_index("id").loc[test_ids, pred_cols].to_numpy(float) for item in loaded]
    data = BlendInput(names=list(names), oof=oof_preds, y=base[targets].to_numpy(float),
                      folds=base["fold"].to_numpy(), test=test_preds, task=task, targets=targets,
                      metric=metric)
    try:
        singles = {n: data.score(p) for n, p in zip(names, oof_preds)}
    except ValueError as err:
        raise BlendError(f"metric {metric}: {err}") from None
    out = fn(params, data)

    oof = base.copy()
    oof[pred_cols] = out.oof
    test = None
    if test_ids is not None:
        test = pd.DataFrame({"id": test_ids})
        test[pred_cols] = out.test
    best = names[0]
    for n in names:
        if metrics.is_better(metric, singles[n], singles[best]):
            best = n
    value = data.score(out.oof)
    scores = {
        "metric": metric,
        "method": method,
        "params": dataclasses.asdict(params),
        "blend": value,
        "score_kind": out.score_kind,
        **out.scores,
        "best_single": {"experiment": best, "score": singles[best]},
        "gain_over_best_single": value - singles[best],
        "experiments": singles,
        "n_oof": int(len(base)),
        "n_test": 0 if test_ids is None else len(test_ids),
    }
    weights = {"method": method, "experiments": list(names), **out.weights}
    return {"oof": oof, "test": test, "weights": weights, "scores": scores, "meta": meta}


def select_experiments(queue, paths, current=None) -> List[str]:
    """Names of the experiments to blend: finished ones (of ``blend.include`` if given) on the first one's folds.

    Without ``blend.include``, experiments on other data or folds are left out with a warning; when
    ``blend.include`` names them explicitly, :class:`BlendError` is raised instead.
    """
    from pipeline.folds import fold_key
    from pipeline.queue import finished

    done = finished(queue, paths, current)  # current: the data as loaded once for the summary (None: load it)
    if queue.blend.include is not None:
        done = [e for e in done if e.name in queue.blend.include]
        missing = set(queue.blend.include) - {e.name for e in done}
        if missing:
            log.warning("blend: %s not finished; blending the rest", ", ".join(sorted(missing)))
    if done:
        key = fold_key(done[0].data, done[0].folds)
        left_out = [e.name for e in done if fold_key(e.data, e.folds) != key]
        if left_out and queue.blend.include is not None:
            raise BlendError(f"blend.include names experiments on different data or folds ({done[0].name} vs "
                             f"{', '.join(left_out)}); their OOF predictions cannot be blended honestly")
        if left_out:
            log.warning("blend: %s use other data or folds than %s; left out", ", ".join(left_out), done[0].name)
        done = [e for e in done if fold_key(e.data, e.folds) == key]
    return [e.name for e in done]


def write_blend(folder: str, result: dict) -> None:
    """Write a :func:`blend` result to ``folder`` (oof.csv, test.csv, weights.json, scores.json, submission.csv).

    Every file's content (the submission included, which checks its values)
    is built before the folder is touched, so a failure leaves the earlier
    blend as it was instead of half of a new one; scores.json is written last,
    so a complete scores.json means a complete folder.

    Raises
    ------
    BlendError
        When the submission cannot be built (e.g. a prediction outside [0, 1]).
    """
    try:
        submission = _blend_submission(result)
    except ValueError as err:
        raise BlendError(f"the blend's submission cannot be written: {err}") from None
    _clear(folder)
    io.write_csv(os.path.join(folder, "oof.csv"), result["oof"])
    io.write_json(os.path.join(folder, "weights.json"), result["weights"])
    if result["test"] is not None:
        io.write_csv(os.path.join(folder, "test.csv"), result["test"])
    if submission is not None:
        io.write_csv(os.path.join(folder, "submission.csv"), submission)
    # Last, so a complete scores.json means a complete blend folder.
    io.write_json(os.path.join(folder, "scores.json"), result["scores"])


def _blend_submission(result: dict) -> Optional[pd.DataFrame]:
    """The blend's submission table (None without test predictions); ValueError for invalid values."""
    from pipeline.data import format_submission

    if result["test"] is not None:
        meta = result["meta"]
        pred_cols = [c for c in result["test"].columns if c != "id"]
        ids = [str(i) for i in result["test"]["id"]]
        preds = result["test"][pred_cols].to_numpy(float)
        # Test clips whose audio was skipped have no prediction, but a submission must list every test clip
        # (scores.json keeps them all); like the experiments' submissions, they get the mean prediction.
        given = set(ids)
        absent = [str(i) for i in meta.get("all_test_ids") or [] if str(i) not in given]
        if absent and ids:
            log.warning("blend submission: %d test clips have no prediction (skipped audio?); they get the mean "
                        "prediction, e.g. %s", len(absent), absent[:3])
            preds = np.concatenate([preds, np.broadcast_to(preds.mean(axis=0), (len(absent), preds.shape[1]))])
            ids = ids + absent
        return format_submission(meta["submission"], meta["targets"], ids, preds)
    return None


def _only_blend_files(folder: str) -> bool:
    """A blend folder written before the ownership marker existed: nothing in it but the blend's own files."""
    return ownership.only_names(folder, lambda name: name in BLEND_FILES + ("error.json",))


def _clear(folder: str) -> None:
    """Remove an earlier blend's files so that no stale submission survives a refused or changed blend.

    The folder is made (or confirmed) the pipeline's first: files are removed
    only from a folder the pipeline created (:class:`pipeline.ownership.OwnershipError` otherwise).
    """
    ownership.make_owned_dir(folder, recognise=_only_blend_files)
    for name in BLEND_FILES + ("error.json",):
        path = os.path.join(folder, name)
        if io.isfile(path):
            io.remove(path)


def run_blend(queue, paths, current=None) -> dict | None:
    """Blend and write ``blend/`` (see :func:`_run_blend`); a ``blend/`` the pipeline cannot write (not its own
    folder, a file of that name, a permission or disk error) is logged naming the path, nothing is written over
    it, and None is returned: the summary and the report still follow.

    ``current``: :func:`pipeline.queue.current_data` as computed for the summary, so the data is loaded once
    and the blend agrees with the summary on which experiments are current.
    """
    folder = os.path.join(paths.output, layout.BLEND)
    try:
        return _run_blend(queue, paths, current, folder)
    except ownership.OwnershipError as err:
        log.error("blend: not written: %s", err)
    except OSError as err:
        log.error("blend: not written: %s: %s", getattr(err, "filename", None) or folder, err)
    return None


def _run_blend(queue, paths, current, folder) -> dict | None:
    """Blend the queue's finished experiments (``blend.include`` or all on the main data) and write blend/.

    A refused blend (:class:`BlendError`: experiments that do not match, or a
    selected experiment's prediction file missing, unreadable or holding a
    value that is not a probability) is logged and recorded in
    ``blend/error.json``; earlier blend files are removed so that the folder
    never holds a stale submission, and nothing of a new blend is written
    before all of it is known to be valid. Returns the :func:`blend` result or None.
    """
    method = queue.blend.method
    names: List[str] = []
    if io.isdir(folder) and not ownership.is_owned(folder) and ownership.entries(folder) and not _only_blend_files(folder):
        log.error("blend: %s holds files the pipeline did not write (%s); not blending into it. Move them away",
                  folder, ", ".join(ownership.entries(folder)[:3]))
        return None
    try:
        names = select_experiments(queue, paths, current)
        if not names or method is None:
            log.info("blend: no finished experiments to blend")
            if io.isdir(folder):
                _clear(folder)
            return None
        loaded = [load_predictions(paths.experiment(n)) for n in names]
        result = blend(names, loaded, method.name, method.params, queue.blend.metric)
        write_blend(folder, result)
    except BlendError as err:
        log.error("blend: %s", err)
        _clear(folder)
        io.write_json(os.path.join(folder, "error.json"), {"method": method.name, "experiments": names,
                                                             "error": str(err)})
        return None
    s = result["scores"]
    log.info("blend (%s of %d: %s): OOF %s %.4f [%s]; best single %s %.4f (%+.4f)", method.name, len(names),
             ", ".join(names), s["metric"], s["blend"], s["score_kind"], s["best_single"]["experiment"],
             s["best_single"]["score"], s["gain_over_best_single"])
    if "held_out" in s:
        log.info("blend: with weights chosen on the other folds (honest estimate): OOF %s %.4f", s["metric"],
                 s["held_out"])
    return result
