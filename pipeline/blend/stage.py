"""The blend stage: choose the experiments, blend their predictions, write ``output/blend/``.

Writes ``output/blend/{oof.csv, test.csv, weights.json, scores.json,
submission.csv}``, or ``error.json`` (and nothing else) when the chosen
experiments cannot be blended. Experiments are those finished on the current
data (:mod:`pipeline.results`), ``blend.include`` of them if given; the files
are read and checked by :mod:`pipeline.blend.predictions`, the methods are in
:mod:`pipeline.blend.methods`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import List, Optional

import numpy as np
import pandas as pd

from pipeline import io, layout, metrics, ownership, results, schema
from pipeline.blend.methods import BlendInput
from pipeline.errors import BlendError
from pipeline.blend.predictions import check_compatible, load_predictions

log = logging.getLogger(__name__)


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
    pred_cols = layout.prediction_columns_of(loaded[0]["oof"].columns)
    base = loaded[0]["oof"][["id", "fold", *targets]].sort_values("id", kind="stable").reset_index(drop=True)
    oof_preds = [item["oof"].set_index("id").loc[base["id"], pred_cols].to_numpy(float) for item in loaded]
    test_ids = None if loaded[0]["test"] is None else list(loaded[0]["test"]["id"])
    # No row in test.csv: every test clip was skipped as bad audio; the methods have nothing to predict.
    test_preds = None if not test_ids else [
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
        test[pred_cols] = out.test if test_ids else np.empty((0, len(pred_cols)))
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


def select_experiments(queue, output: str, current=None) -> List[str]:
    """Names of the experiments to blend: finished ones (of ``blend.include`` if given) on the first one's folds.

    Without ``blend.include``, experiments on other data or folds are left out with a warning; when
    ``blend.include`` names them explicitly, :class:`BlendError` is raised instead. ``current``: the data as
    loaded once for the summary (:func:`pipeline.results.current_data`; None: load it).
    """
    done = results.finished(queue, output, current)
    if queue.blend.include is not None:
        done = [e for e in done if e.name in queue.blend.include]
        missing = set(queue.blend.include) - {e.name for e in done}
        if missing:
            log.warning("blend: %s not finished; blending the rest", ", ".join(sorted(missing)))
    done, other_folds = results.on_shared_folds(done)
    left_out = [e.name for e in other_folds]
    if left_out and queue.blend.include is not None:
        raise BlendError(f"blend.include names experiments on different data or folds ({done[0].name} vs "
                         f"{', '.join(left_out)}); their OOF predictions cannot be blended honestly")
    if left_out:
        log.warning("blend: %s use other data or folds than %s; left out", ", ".join(left_out), done[0].name)
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
    io.write_csv(layout.blend_file(folder, layout.OOF), result["oof"])
    io.write_json(layout.blend_file(folder, layout.WEIGHTS), result["weights"])
    if result["test"] is not None:
        io.write_csv(layout.blend_file(folder, layout.TEST), result["test"])
    if submission is not None:
        io.write_csv(layout.blend_file(folder, layout.SUBMISSION), submission)
    # Last, so a complete scores.json means a complete blend folder.
    io.write_json(layout.blend_file(folder, layout.SCORES), result["scores"])


def _blend_submission(result: dict) -> Optional[pd.DataFrame]:
    """The blend's submission table (None without a test set); ValueError for invalid values.

    One row per test clip in the test manifest's order (``all_test_ids`` of the experiments' scores.json), as
    the experiments' submissions: :func:`pipeline.data.complete_submission` fills the clips whose audio was
    skipped (scores.json keeps them all) with the mean prediction, or with the blend's mean OOF prediction
    when every test clip was skipped.
    """
    from pipeline.data import complete_submission

    meta = result["meta"]
    test = result["test"]
    if test is None:
        return None
    pred_cols = [c for c in test.columns if c != "id"]
    ids = [str(i) for i in test["id"]]
    test_ids = meta.get("all_test_ids") or ids  # written before all_test_ids existed: the rows as predicted
    if not test_ids:
        return None
    oof_mean = result["oof"][pred_cols].to_numpy(float).mean(axis=0)
    return complete_submission(meta["submission"], meta["targets"], test_ids, ids, test[pred_cols].to_numpy(float),
                               oof_mean=oof_mean, label="blend submission")


def _only_blend_files(folder: str) -> bool:
    """A blend folder written before the ownership marker existed: nothing in it but the blend's own files."""
    return ownership.only_names(folder, lambda name: name in layout.BLEND_FOLDER_FILES)


def _clear(folder: str) -> None:
    """Remove an earlier blend's files so that no stale submission survives a refused or changed blend.

    The folder is made (or confirmed) the pipeline's first: files are removed
    only from a folder the pipeline created (:class:`pipeline.ownership.OwnershipError` otherwise).
    """
    ownership.make_owned_dir(folder, recognise=_only_blend_files)
    for name in (*layout.BLEND_FILES, layout.BLEND_ERROR):
        path = layout.blend_file(folder, name)
        if io.isfile(path):
            io.remove(path)


def run_blend(queue, output: str, current=None) -> dict | None:
    """Blend and write ``blend/`` (see :func:`_run_blend`); a ``blend/`` the pipeline cannot write (not its own
    folder, a file of that name, a permission or disk error) is logged naming the path, nothing is written over
    it, and None is returned: the summary and the report still follow.

    ``output``: the queue's output folder. ``current``: :func:`pipeline.results.current_data` as computed for
    the summary, so the data is loaded once and the blend agrees with the summary on which experiments are current.
    """
    folder = layout.blend_dir(output)
    try:
        return _run_blend(queue, output, current, folder)
    except ownership.OwnershipError as err:
        log.error("blend: not written: %s", err)
    except OSError as err:
        log.error("blend: not written: %s: %s", getattr(err, "filename", None) or folder, err)
    return None


def _run_blend(queue, output, current, folder) -> dict | None:
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
        names = select_experiments(queue, output, current)
        if not names or method is None:
            log.info("blend: no finished experiments to blend")
            if io.isdir(folder):
                _clear(folder)
            return None
        loaded = [load_predictions(layout.experiment_dir(output, n)) for n in names]
        result = blend(names, loaded, method.name, method.params, queue.blend.metric)
        result["scores"]["settings_hash"] = queue.blend.settings_hash()  # the blend: section it was made by
        write_blend(folder, result)
    except BlendError as err:
        log.error("blend: %s", err)
        _clear(folder)
        io.write_json(layout.blend_file(folder, layout.BLEND_ERROR), {"method": method.name, "experiments": names,
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
