"""The queue: run each experiment's stages in order, record status, resume, summarise.

Per experiment (``output/<name>/``): data -> feature cache -> folds -> one
model per fold (OOF + test predictions) -> ``oof.csv``, ``test.csv``,
``scores.json``, ``submission.csv``. A finished experiment whose resolved
config and data (ids, audio files' size and mtime, labels, groups:
:mod:`pipeline.data.identity`) are unchanged is skipped; an unfinished one
resumes at its first unfinished fold (and inside that fold at its last
completed epoch); changed data starts it afresh, saying what changed. An
experiment that fails is recorded with its traceback and the queue moves on.
After the experiments: ``output/oof.csv``, ``output/summary.csv`` and the
blend, from the experiments finished on the data as it is then.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shlex
import signal
import sys
import time
import traceback
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from pipeline import io, layout, ownership, results, schema
from pipeline.config import ConfigError, Experiment, Queue, dump_experiment, run_order
from pipeline.errors import PipelineError, QueueError, TrainingError
from pipeline.status import DONE, FAILED, INTERRUPTED, RUNNING, now, read_status, write_status

log = logging.getLogger("pipeline")

EXIT_CONFIG = 2  # as pipeline.cli: a queue whose output cannot be used is refused like an invalid file


class StageError(QueueError):
    """An experiment failed in a known way; the message is enough (no traceback needed)."""


# ----------------------------------------------------------------------------- paths


@dataclasses.dataclass(frozen=True)
class Paths:
    output: str

    @property
    def cache(self):
        return layout.cache_root(self.output)

    @property
    def folds(self):
        return layout.folds_dir(self.output)

    def experiment(self, name):
        return layout.experiment_dir(self.output, name)


# ----------------------------------------------------------------------------- one experiment


def run_experiment(exp: Experiment, paths: Paths, *, force: bool = False, memory_budget: Optional[int] = None) -> dict:
    """Run (or resume, or skip) one experiment in this process. Returns its final status dict.

    memory_budget : bytes for a fold job's input (``execution.memory_budget_gb``; None: automatic).

    The data is loaded first (a CSV read and one ``stat`` per file; nothing is
    written unless a synthetic dataset must be generated), because whether
    earlier work counts depends on it: a finished experiment is skipped only
    when its config and its data (:meth:`Dataset.identity`: ids, files' size
    and mtime, labels, groups) are unchanged, and an unfinished one resumes
    only on the same data; otherwise it starts afresh and the log says what
    changed. A synthetic dataset that is not on disk is a function of the
    config, so a finished experiment on it is skipped without generating it.
    """
    run = ExperimentRun(exp, paths, force=force, memory_budget=memory_budget)
    if run.start():
        with run.recording():
            _stages(exp, paths, run.exp_dir, run.timings, run.data, memory_budget=memory_budget)
            run.done()
    return run.status


class ExperimentRun:
    """One experiment's run, in parts: :meth:`start` (skip or set up its folder), stages under
    :meth:`recording`, :meth:`done`. In this process the stages run in one go (:func:`run_experiment`); with
    a pool of fold jobs (:func:`_run_pooled`) its folds train between its preparation and its outputs.

    ``status`` is the final status dict once the experiment is skipped, done or failed, else None.
    """

    def __init__(self, exp: Experiment, paths: Paths, *, force: bool = False, memory_budget: Optional[int] = None):
        self.exp, self.paths, self.force = exp, paths, force
        self.memory_budget = memory_budget  # bytes for a fold job's input (pipeline.memory); None: automatic
        self.exp_dir = paths.experiment(exp.name)
        self.status: Optional[dict] = None
        self.timings: Dict[str, float] = {}
        self.data = None  # (dataset, load error, load seconds), see _load_data
        self.started = 0.0

    def start(self) -> bool:
        """Skip the experiment (finished on the same config and data) or set up its folder and status.

        True when there is work to do; else ``status`` is final (skipped, or refused by ownership).
        """
        from pipeline.data import needs_generation
        from pipeline.data.identity import write_clips

        exp, exp_dir, force = self.exp, self.exp_dir, self.force
        status = read_status(exp_dir)
        config_hash = exp.config_hash()
        same_config = status.get("config_hash") == config_hash
        if (status.get("state") == DONE and same_config and not force
                and needs_generation(exp.data.name, exp.data.params)):
            log.info("%s: finished earlier with the same config; skipped (its synthetic data is not on disk: it "
                     "would be regenerated from the same parameters)", exp.name)
            self.status = status
            return False
        self.data = dataset, _, _ = _load_data(exp)
        changed = results.data_changes(exp_dir, status, dataset) if same_config and dataset is not None else ""
        if status.get("state") == DONE and same_config and not force and dataset is not None and not changed:
            log.info("%s: finished earlier with the same config; skipped (data unchanged)", exp.name)
            self.status = status
            return False
        try:
            # Only a folder the pipeline made (or an older version's experiment folder) is ever deleted or reused.
            if io.isdir(exp_dir) and (force or not same_config or changed):
                reason = ("--force" if force else
                          f"its config changed{_config_change_words(exp, exp_dir)}" if not same_config
                          else f"data changed since the last run: {changed}")
                log.info("%s: starting afresh (%s)", exp.name, reason)
                ownership.remove_owned(exp_dir, recognise=ownership.is_legacy_experiment,
                                       foreign=ownership.experiment_foreign)
            ownership.make_owned_dir(exp_dir, recognise=ownership.is_legacy_experiment)
        except ownership.OwnershipError as err:
            log.error("%s: FAILED: %s", exp.name, err)  # nothing of the folder's was touched, so no status is written
            self.status = {"state": FAILED, "error": str(err)}
            return False
        io.write_text(layout.experiment_file(exp_dir, layout.CONFIG), dump_experiment(exp))
        data_fields = {}
        if dataset is not None:  # the per-clip table first: a status naming data always has its table beside it
            write_clips(layout.experiment_file(exp_dir, layout.CLIPS), dataset.identity)
            data_fields["data"] = dataset.identity.checked()
        self.started = time.time()
        self.timings = dict(status.get("timings") or {}) if same_config and not changed else {}
        write_status(exp_dir, state=RUNNING, stage="start", config_hash=config_hash, started=now(), error=None,
                     timings=self.timings, **data_fields)
        return True

    @contextlib.contextmanager
    def recording(self):
        """Log to the experiment's run.log meanwhile; an exception fails the experiment (:meth:`fail`), Ctrl-C or
        SIGTERM marks it interrupted and goes on up."""
        handler = io.log_handler(layout.experiment_file(self.exp_dir, layout.RUN_LOG))
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        try:
            yield
        except KeyboardInterrupt:
            self.interrupted()
            raise
        except Exception as err:  # noqa: BLE001 - a failing experiment never stops the queue
            # A fold job's exception from a worker process carries the worker's traceback.
            self.fail(err, getattr(err, "worker_traceback", None) or traceback.format_exc())
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()

    def done(self) -> None:
        """Record the experiment as finished."""
        wall = time.time() - self.started + sum(v for k, v in self.timings.items() if k == "previous_runs")
        self.status = write_status(self.exp_dir, state=DONE, stage="done", finished=now(), timings=self.timings,
                                   wall_seconds=round(wall, 2))
        log.info("%s: done in %.0f s", self.exp.name, time.time() - self.started)

    def fail(self, err: BaseException, trace: str) -> None:
        """Record the experiment as failed by ``err``: a user's mistake (PipelineError) by its message alone
        (the traceback only in run.log), a bug with its traceback."""
        message = f"{type(err).__name__}: {err}"
        log.error("%s: FAILED: %s", self.exp.name, message)
        log.debug("%s", trace)
        kept = None if isinstance(err, PipelineError) else trace
        self.status = write_status(self.exp_dir, state=FAILED, error=message, traceback=kept, finished=now(),
                                   timings=self.timings)

    def interrupted(self) -> None:
        write_status(self.exp_dir, state=INTERRUPTED, error="interrupted by the user or SIGTERM", timings=self.timings)


def _stage(exp_dir, timings, name):
    write_status(exp_dir, stage=name)
    t0 = time.time()

    def done():
        timings[name] = round(timings.get(name, 0.0) + time.time() - t0, 2)

    return done


def _load_data(exp: Experiment):
    """``(dataset, None, seconds)``, or ``(None, the exception, seconds)`` when the data cannot be read.

    The error is raised again in the experiment's data stage, so it fails
    that experiment with its message like any other stage error.
    """
    from pipeline.data import load_dataset

    t0 = time.time()
    try:
        dataset = load_dataset(exp.data.name, exp.data.params)
        _ = dataset.identity  # stat the files now, before any stage depends on them
        return dataset, None, time.time() - t0
    except Exception as err:  # noqa: BLE001 - reported by the data stage
        return None, err, time.time() - t0


def _stages(exp: Experiment, paths: Paths, exp_dir: str, timings: dict, data,
            memory_budget: Optional[int] = None) -> None:
    """Every stage of the experiment in this process, its folds one after the other."""
    from pipeline.fold_loop import run_folds

    prepared = _prepare(exp, paths, exp_dir, timings, data)
    oof, test = run_folds(exp, prepared.dataset, prepared.cache, prepared.folds, exp_dir, prepared.teacher_dir,
                          prepared.teacher_cache, memory_budget)
    _finish(prepared, oof, test)


@dataclasses.dataclass
class _Prepared:
    """An experiment up to its training stage: its dataset, feature cache and fold table, and the clock of the
    training stage (started)."""

    exp: Experiment
    exp_dir: str
    timings: dict
    dataset: object
    cache: object  # pipeline.cache.read.FeatureCache
    folds: pd.DataFrame
    train_done: object  # ends the "train" stage's timing
    teacher_dir: Optional[str] = None  # a pseudo-label student's teacher folder (pipeline.pseudo)
    teacher_cache: object = None  # with pseudo.on unknown: the teacher's FeatureCache


def _prepare(exp: Experiment, paths: Paths, exp_dir: str, timings: dict, data) -> _Prepared:
    """The data, features and folds stages; starts the training stage's clock."""
    from pipeline.features import check_settings
    from pipeline.folds import ensure_folds
    from pipeline.cache.build import ensure_features

    done = _stage(exp_dir, timings, "data")
    dataset, load_error, load_seconds = data
    timings["data"] = round(timings.get("data", 0.0) + load_seconds, 2)
    if load_error is not None:
        raise load_error
    teacher_dir = _check_teacher(exp, paths, dataset)
    train = dataset.train
    log.info("%s: %s data: %d train, %d test clips, task %s, targets %s", exp.name, exp.data.name, len(train),
             len(dataset.test), dataset.task, ",".join(dataset.targets))
    clash = layout.queue_column_clash(exp.name, dataset.targets, dataset.task)
    if clash:  # refused before training, not after hours of it
        raise StageError(f"experiments: the name {exp.name!r} would give output/oof.csv the column(s) {clash}, "
                         f"which hold the labels of the data ({exp.data.name}); rename the experiment")
    for warning in check_settings(exp.features.name, exp.features.params, sample_rate=exp.audio.sample_rate):
        log.warning("%s: features: %s", exp.name, warning)
    done()

    done = _stage(exp_dir, timings, "features")
    cache = ensure_features(dataset, paths.cache, data=exp.data, audio=exp.audio, features=exp.features,
                            cache=exp.cache, predict=exp.predict, label=exp.name)
    done()

    done = _stage(exp_dir, timings, "folds")
    folds = ensure_folds(dataset, exp.data, exp.folds, paths.folds)
    done()

    teacher_cache = _teacher_cache(exp, paths, dataset)
    return _Prepared(exp, exp_dir, timings, dataset, cache, folds, _stage(exp_dir, timings, "train"),
                     teacher_dir, teacher_cache)


def _finish(prepared: _Prepared, oof: pd.DataFrame, test: Optional[pd.DataFrame]) -> None:
    """End the training stage with the gathered folds' (oof, test) and write the experiment's outputs."""
    from pipeline.data import submission_frame

    prepared.train_done()

    done = _stage(prepared.exp_dir, prepared.timings, "outputs")
    _write_experiment_outputs(prepared.exp, prepared.dataset, oof, test, prepared.exp_dir, submission_frame)
    done()


def _check_teacher(exp: Experiment, paths: Paths, dataset) -> Optional[str]:
    """A student's teacher folder, after checking that the teacher finished on the data the student runs on
    (None without ``pseudo:``). A teacher trained on other data (clips added, relabelled) split it by another
    fold table: its fold-k model may have seen the student's fold-k validation clips."""
    if exp.pseudo is None:
        return None
    from pipeline.pseudo import TeacherError, check_teacher

    teacher_dir = paths.experiment(exp.teacher.name)
    check_teacher(exp, teacher_dir)
    changed = results.data_changes(teacher_dir, read_status(teacher_dir), dataset)
    if changed:
        raise TeacherError(f"pseudo.teacher: the teacher {exp.teacher.name!r} of {exp.name!r} ran on other data "
                           f"({changed}); run it again on the current data first (python run_queue.py <queue> "
                           f"--only {exp.teacher.name})")
    return teacher_dir


def _teacher_cache(exp: Experiment, paths: Paths, dataset):
    """With ``pseudo: {on: [unknown]}`` the teacher's feature cache (built again if it was removed), else None."""
    if exp.pseudo is None or "unknown" not in exp.pseudo.on:
        return None
    from pipeline.cache.build import ensure_features

    teacher = exp.teacher
    return ensure_features(dataset, paths.cache, data=teacher.data, audio=teacher.audio, features=teacher.features,
                           cache=teacher.cache, predict=teacher.predict, label=teacher.name)


def _write_experiment_outputs(exp, dataset, oof: pd.DataFrame, test: Optional[pd.DataFrame], exp_dir, submission_frame):
    from pipeline.metrics import score

    targets = list(dataset.targets)
    pred_cols = layout.prediction_columns(targets, dataset.task)
    per_fold = {}
    for k, part in oof.groupby("fold"):
        per_fold[int(k)] = score(dataset.task, part[targets].to_numpy(), part[pred_cols].to_numpy())
    undefined = [k + 1 for k, s in sorted(per_fold.items()) if not _defined(s)]
    if undefined:  # e.g. a fold finished by an earlier version, whose done.json holds NaN
        raise TrainingError(f"fold(s) {undefined} of {exp.name}: the validation score is undefined (NaN); the "
                            f"experiment is not scored. Check folds.n_splits and data.group_column, then run it "
                            f"again with --force")
    io.write_csv(layout.experiment_file(exp_dir, layout.OOF), oof)
    overall = score(dataset.task, oof[targets].to_numpy(), oof[pred_cols].to_numpy())
    fold_auc = np.array([s["auc"] for s in per_fold.values()], dtype=float)
    fold_auc = fold_auc[np.isfinite(fold_auc)]
    scores = {
        "metric": "auc",
        "oof": overall,
        "folds": {str(k): v for k, v in sorted(per_fold.items())},
        "fold_mean": float(np.mean(fold_auc)) if len(fold_auc) else None,
        "fold_std": float(np.std(fold_auc)) if len(fold_auc) else None,
        "n_oof": int(len(oof)),
        # What the blend needs to read the prediction files without the dataset.
        "task": dataset.task,
        "targets": targets,
        "submission": dataset.submission,
        # Every test id, also those whose audio was skipped: a submission must list them all.
        "all_test_ids": [str(i) for i in dataset.test["id"]],
    }
    io.write_json(layout.experiment_file(exp_dir, layout.SCORES), scores)
    folds_auc = "n/a" if scores["fold_mean"] is None else f"{scores['fold_mean']:.4f} +- {scores['fold_std']:.4f}"
    log.info("%s: OOF AUC %.4f (folds %s)", exp.name, overall["auc"], folds_auc)
    if "lwlrap" in overall:
        log.info("%s: OOF LWLRAP %.4f (random ranking %.4f)", exp.name, overall["lwlrap"], overall["lwlrap_random"])
    if len(dataset.test):
        if test is None:  # every test clip was skipped as bad audio: test.csv has a header and no row
            test = pd.DataFrame(columns=["id", *pred_cols])
        io.write_csv(layout.experiment_file(exp_dir, layout.TEST), test)
        # A row for every test clip all the same; with no test prediction at all, the mean OOF prediction.
        sub = submission_frame(dataset, list(test["id"]), test[pred_cols].to_numpy(float),
                               oof_mean=oof[pred_cols].to_numpy(float).mean(axis=0))
        io.write_csv(layout.experiment_file(exp_dir, layout.SUBMISSION), sub)


def _defined(fold_scores: dict) -> bool:
    """Whether a fold's scores (:func:`pipeline.metrics.score`) have a finite headline: AUC, or LWLRAP (rfcx)."""
    return any(np.isfinite(fold_scores[m]) for m in ("auc", "lwlrap") if m in fold_scores)


# ----------------------------------------------------------------------------- queue-level outputs


def write_queue_oof(queue: Queue, paths: Paths,
                    current: Optional[Dict[str, object]] = None) -> Optional[pd.DataFrame]:
    """``output/oof.csv``: one row per training clip, one prediction column (set) per finished experiment.

    Only experiments on the same data and folds as the queue's first finished
    experiment with readable predictions can share this table (:func:`pipeline.results.on_shared_folds`);
    others are left out with a warning, as are experiments whose data changed
    since they ran (:func:`pipeline.results.finished`).
    """
    # The shared folds are those of the first experiment whose predictions can be read (an unreadable
    # oof.csv is warned about and left out), so one broken file never drops the others.
    parts = {}
    for exp in results.finished(queue, paths.output, current):
        got = _queue_oof_part(exp.name, paths.experiment(exp.name))
        if got is not None:
            parts[exp.name] = (exp, got)
    done, other_folds = results.on_shared_folds([exp for exp, _ in parts.values()])
    for exp in other_folds:
        log.warning("%s uses other data or folds than %s; left out of output/oof.csv", exp.name, done[0].name)
    table = None
    for exp in done:
        part, new = parts[exp.name][1]
        if table is None:
            table = part
            continue
        taken = sorted(set(new) & set(table.columns))
        if taken:
            log.warning("%s: its column(s) %s are already columns of output/oof.csv (labels or another "
                        "experiment); left out of output/oof.csv - rename the experiment", exp.name, taken)
            continue
        table = table.merge(part[["id", *new]], on="id", how="outer")
    if table is None:
        return _no_queue_oof(paths)
    io.write_csv(layout.queue_file(paths.output, layout.QUEUE_OOF), table)
    return table


def _no_queue_oof(paths: Paths) -> None:
    """No experiment is current: an ``output/oof.csv`` of an earlier run (stale predictions and labels) is removed,
    so that nothing (the report's correlation plot) presents it as current. The output folder is the pipeline's."""
    path = layout.queue_file(paths.output, layout.QUEUE_OOF)
    if io.isfile(path):
        log.warning("%s: no experiment is finished on the current data; the earlier table is removed", path)
        io.remove(path)
    return None


def _queue_oof_part(name: str, exp_dir: str) -> Optional[Tuple[pd.DataFrame, List[str]]]:
    """An experiment's oof.csv with its prediction columns renamed for output/oof.csv (``pred`` -> ``<name>``,
    ``pred:<class>`` -> ``<name>:<class>``), and those new names; None, with a warning naming the file, when
    it is missing, unreadable or lacks the columns a finished experiment writes."""
    path = layout.experiment_file(exp_dir, layout.OOF)
    try:
        oof = io.read_csv(path, dtype={"id": str})
    except FileNotFoundError:
        log.warning("%s: missing; %s is left out of output/oof.csv (rerun it with --force --only %s)", path,
                    os.path.basename(exp_dir), os.path.basename(exp_dir))
        return None
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        log.warning("%s: unreadable (%s); left out of output/oof.csv", path, err)
        return None
    pred = layout.prediction_columns_of(oof.columns)
    lacking = [c for c in ("id", "fold") if c not in oof.columns] + ([] if pred else ["pred or pred:<class>"])
    if lacking:
        log.warning("%s: no column(s) %s; left out of output/oof.csv", path, lacking)
        return None
    if oof["id"].duplicated().any():
        log.warning("%s: repeats ids (e.g. %s); left out of output/oof.csv", path,
                    oof.loc[oof["id"].duplicated(), "id"].iloc[:3].tolist())
        return None
    name_of = {c: layout.queue_oof_column(c, name) for c in pred}
    clash = sorted((set(name_of.values()) | {name}) & (set(oof.columns) - set(pred)))
    if clash:
        log.warning("%s: the experiment's column(s) %s in output/oof.csv would replace its label column(s) of the "
                    "same name; left out of output/oof.csv - rename the experiment", path, clash)
        return None
    return oof.rename(columns=name_of), list(name_of.values())


def write_summary(queue: Queue, paths: Paths, current: Optional[Dict[str, object]] = None,
                  failures: Optional[Dict[str, str]] = None) -> pd.DataFrame:
    """``output/summary.csv``: the leaderboard, one row per experiment of the queue, best first.

    An experiment finished with another config, or on data that changed since
    (``current``: :func:`current_data`, computed when None), is ``stale``
    without scores; the error column says what changed.

    Columns: experiment, model, features, status, oof_auc, ``oof_<blend.metric>``
    (when the blend metric is not auc), fold_mean / fold_std (AUC over the
    folds), epochs (mean over folds), fold_seconds (mean training seconds per fold, done.json ``seconds``:
    the epoch loop of a Keras family, the one fit of a classical family; comparable across families
    however folds are scheduled), wall_seconds, error. ``failures``
    (``{experiment: error}``) are this run's failures, shown as ``failed`` with
    their error even when no status.json could be written (an experiment
    folder refused as not the pipeline's is never written into). Rows are sorted by
    the blend metric (best first; unfinished experiments last). The output
    folder and metric are kept in ``summary.attrs`` for :func:`format_summary`.
    """
    from pipeline import metrics

    metric = queue.blend.metric
    metric_col = f"oof_{metric}"
    if current is None:
        current = results.current_data(queue)
    rows = []
    for exp in queue.experiments:
        exp_dir = paths.experiment(exp.name)
        status = read_status(exp_dir)
        row = {
            "experiment": exp.name,
            "status": status.get("state", "not run"),
            "model": schema.MODELS[exp.model.name].describe(exp.model.params),
            "features": exp.features.name,
            "oof_auc": np.nan,
            metric_col: np.nan,
            "fold_mean": np.nan,
            "fold_std": np.nan,
            "epochs": np.nan,
            "fold_seconds": np.nan,
            "wall_seconds": status.get("wall_seconds", np.nan),
            "error": status.get("error") or "",
        }
        if status.get("config_hash") not in (None, exp.config_hash()):
            row["status"] = "stale"
        elif row["status"] == DONE:
            reason = results.stale_reason(exp, paths.output, current)
            if reason:
                row.update(status="stale", error=reason)
        if failures and exp.name in failures:
            row.update(status=FAILED, error=failures[exp.name])
        if row["status"] == DONE:
            row.update(_summary_scores(exp_dir, metric, metric_col))
        rows.append(row)
    summary = pd.DataFrame(rows)
    summary = summary.sort_values(metric_col, ascending=not metrics.GREATER_IS_BETTER[metric], na_position="last",
                                  kind="stable").reset_index(drop=True)
    io.write_csv(layout.queue_file(paths.output, layout.SUMMARY), summary)
    summary.attrs.update(output=paths.output, metric=metric)
    return summary


def _summary_scores(exp_dir: str, metric: str, metric_col: str) -> dict:
    """A finished experiment's scores for its summary row, from scores.json (and oof.csv, done.json).

    A missing, truncated or edited file costs only its numbers: they stay empty,
    the ``error`` column names the file and a warning is logged.
    """
    path = layout.experiment_file(exp_dir, layout.SCORES)
    out = {}
    try:
        scores = io.read_json(path)
        oof = scores["oof"]
        out.update(oof_auc=_number(oof["auc"]), fold_mean=_number(scores["fold_mean"]),
                   fold_std=_number(scores["fold_std"]))
        out[metric_col] = _number(oof[metric]) if metric in oof else _oof_metric(exp_dir, scores, metric)
    except FileNotFoundError:
        return _unreadable(path, "missing")
    except (OSError, ValueError, KeyError, TypeError) as err:
        return _unreadable(path, f"unreadable or incomplete ({type(err).__name__}: {err})")
    epochs, seconds = [], []
    for done_path in _fold_done_files(exp_dir):
        try:
            done = io.read_json(done_path)
            fold_epochs, fold_seconds = float(done["epochs"]), float(done["seconds"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("%s: unreadable (%s); left out of the mean epochs and fold seconds", done_path, err)
            continue
        epochs.append(fold_epochs)
        seconds.append(fold_seconds)
    out["epochs"] = float(np.mean(epochs)) if epochs else np.nan
    out["fold_seconds"] = float(np.mean(seconds)) if seconds else np.nan
    return out


def _number(value) -> float:
    """A score from a JSON file as a float (None, null -> NaN); ValueError/TypeError for anything else."""
    return np.nan if value is None else float(value)


def _unreadable(path: str, why: str) -> dict:
    log.warning("%s: %s; the summary shows no scores for this experiment", path, why)
    return {"error": f"{path}: {why}"}


def _oof_metric(exp_dir: str, scores: dict, metric: str) -> float:
    """A metric that scores.json lacks (e.g. lwlrap), computed from the experiment's oof.csv; NaN if it does not
    apply or the file cannot be read (with a warning naming it)."""
    from pipeline import metrics

    path = layout.experiment_file(exp_dir, layout.OOF)
    try:
        oof = io.read_csv(path, dtype={"id": str})
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        log.warning("%s: unreadable (%s); no OOF %s in the summary", path, err, metric)
        return float("nan")
    pred = layout.prediction_columns_of(oof.columns)
    try:
        return metrics.metric_value(metric, scores["task"], oof[list(scores["targets"])].to_numpy(),
                                    oof[pred].to_numpy())
    except (ValueError, KeyError, TypeError):
        return float("nan")


def _fold_done_files(exp_dir):
    """The ``done.json`` of every finished fold of the experiment."""
    folds = [layout.fold_index(name) for name in io.listdir(exp_dir)]
    paths = [layout.fold_file(exp_dir, k, layout.DONE) for k in folds if k is not None]
    return [path for path in paths if io.isfile(path)]


def format_summary(summary: pd.DataFrame) -> str:
    """The leaderboard as printed at the end of a run: one line per experiment, then the blend and the failures.

    The blend line is read from ``<output>/blend/scores.json`` (or ``error.json``)
    when ``summary.attrs`` names the output folder (see :func:`write_summary`).
    """
    from pipeline.report.formatting import format_duration

    metric = summary.attrs.get("metric", "auc")
    metric_col = f"oof_{metric}"
    if metric_col not in summary.columns:
        metric, metric_col = "auc", "oof_auc"
    shown = pd.DataFrame({
        "experiment": summary["experiment"],
        "model": summary["model"],
        "features": summary["features"],
        f"OOF {metric}": summary[metric_col].map(_fmt("{:.4f}")),
        "fold AUC mean +- std": [
            "" if pd.isna(m) else f"{m:.4f} +- {0.0 if pd.isna(s) else s:.4f}"
            for m, s in zip(summary["fold_mean"], summary["fold_std"])
        ],
        "epochs": summary["epochs"].map(_fmt("{:.1f}")),
        "fold": summary["fold_seconds"].map(format_duration),
        "wall": summary["wall_seconds"].map(format_duration),
        "status": summary["status"],
    })
    lines = [shown.to_string(index=False)] if len(shown) else ["(no experiments)"]
    output = summary.attrs.get("output")
    if output:
        lines.append(_blend_line(output))
    for _, row in summary.iterrows():
        if row["status"] == FAILED:
            lines.append(f"FAILED {row['experiment']}: {row['error']}")
    return "\n".join(line for line in lines if line)


def _fmt(fmt):
    return lambda v: "" if pd.isna(v) else fmt.format(v)


def _blend_line(output: str) -> str:
    folder = layout.blend_dir(output)
    scores_path, error_path = layout.blend_file(folder, layout.SCORES), layout.blend_file(folder, layout.BLEND_ERROR)
    try:
        if io.isfile(scores_path):
            s = io.read_json(scores_path)
            best = s["best_single"]
            line = (f"blend ({s['method']} of {len(s['experiments'])}): OOF {s['metric']} {s['blend']:.4f} "
                    f"[{s.get('score_kind', 'OOF')}]; best single {best['experiment']} {best['score']:.4f} "
                    f"({s['blend'] - best['score']:+.4f})")
            if "held_out" in s:
                line += f"; weights chosen on other folds: {s['held_out']:.4f}"
            return line
        if io.isfile(error_path):
            return f"blend: refused: {io.read_json(error_path).get('error')}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # an edited file: never a traceback
        return "blend: unreadable blend/scores.json"
    return ""


# ----------------------------------------------------------------------------- the queue


def setup_logging(output_dir: str) -> None:
    io.makedirs(output_dir)
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    for h in list(root.handlers):
        if getattr(h, "_pipeline", False):
            root.removeHandler(h)
            h.close()
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(logging.INFO)
    console.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    file = io.log_handler(layout.queue_file(output_dir, layout.QUEUE_LOG))
    file.setLevel(logging.INFO)
    file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for h in (console, file):
        h._pipeline = True
        root.addHandler(h)
    for noisy in ("tensorflow", "absl", "h5py", "matplotlib", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def plan(queue: Queue, paths: Paths, names: List[str], force: bool) -> str:
    """Human-readable plan for --dry-run (reads only; writes nothing)."""
    from pipeline.folds import table_key
    from pipeline.cache.build import cache_key

    lines = [f"queue {queue.source}: {len(names)} experiment(s), output {paths.output}"]
    current = results.current_data(queue)
    for exp in queue.experiments:
        if exp.name not in names:
            continue
        exp_dir = paths.experiment(exp.name)
        status = read_status(exp_dir)
        same = status.get("config_hash") == exp.config_hash()
        data = current[results.data_key(exp)]
        readable = data is not None and not isinstance(data, str)
        changed = results.data_changes(exp_dir, status, data) if same and readable else ""
        if isinstance(data, str):
            action = f"fail: the data cannot be read ({data})"
        elif status.get("state") == DONE and same and not force and not changed:
            action = "skip (finished, same config and data)"
        elif same and not force and not changed and io.isdir(exp_dir):
            n_done = len(_fold_done_files(exp_dir))
            action = f"resume ({n_done} of {exp.folds.n_splits} folds done)"
        elif same and changed and not force:
            action = f"run (data changed since the last run: {changed}; start afresh)"
        else:
            action = "run" + (f" (config changed{_config_change_words(exp, exp_dir)}; start afresh)"
                              if status and not same else "")
        if data is None:
            cache = folds = "build (synthetic data not generated yet)"
            key = "?"
        elif isinstance(data, str):
            cache = folds = "unknown"
            key = "?"
        else:
            key = cache_key(exp.data, exp.audio, exp.features, exp.predict, data.identity.audio)
            cache = "hit" if io.isfile(os.path.join(paths.cache, key, layout.CACHE_MANIFEST)) else "build"
            table = layout.fold_table(paths.folds, table_key(exp.data, exp.folds, data))
            folds = "exists" if io.isfile(table) else "build"
        lines.append(
            f"  {exp.name}: {action}; data {exp.data.name}, features {exp.features.name} (cache {key}: {cache}), "
            f"model {exp.model.name}, {exp.folds.n_splits} folds (table: {folds}), {exp.train.epochs} epochs max"
        )
    return "\n".join(lines)


def run(queue: Queue, *, only: Optional[List[str]] = None, force: bool = False, dry_run: bool = False,
        blend_only: bool = False) -> int:
    """Run the queue. Returns the process exit status: 0 all finished, 1 any failed, 130 interrupted.

    Before anything is written, an output folder the pipeline may not use
    (:func:`pipeline.ownership.check_output`) returns 2; another runner
    holding the output folder's lock (:mod:`pipeline.lock`) returns 3.
    ``dry_run`` writes nothing and takes no lock.
    """
    from pipeline.distribute import worker_output

    paths = Paths(worker_output(queue.output_dir))  # non-chief workers of a TF_CONFIG cluster write apart
    names = [e.name for e in queue.experiments] if only is None else list(only)  # [] runs none, never all
    from pipeline.data import root_problem

    problems = ownership.check_output(queue, names=names, blend_only=blend_only, root_problem=root_problem)
    if problems:  # also checked by run_queue.py before this; here for callers of run() itself
        print(f"error: {ConfigError(queue.source, problems)}", file=sys.stderr)
        return EXIT_CONFIG
    if dry_run:
        print(plan(queue, paths, names, force))
        return 0
    from pipeline import lock

    try:
        adopted = ownership.adopt_output(paths.output)
        runner = lock.acquire(paths.output)
    except ownership.OwnershipError as err:  # appeared since the check: still nothing of it was touched
        print(f"error: output: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as err:  # e.g. no permission to create it, a name too long for the filesystem
        print(f"error: output: cannot create or lock {paths.output}: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except lock.LockBusy as err:
        print(f"error: {err}", file=sys.stderr)
        return lock.EXIT_BUSY
    with runner:
        setup_logging(paths.output)
        if runner.previous:
            log.warning("%s", lock.takeover_message(runner.previous))
        for folder in adopted:
            log.info("%s: written by an earlier version of the pipeline; marked as the pipeline's (%s)", folder,
                     ownership.MARKER)
        return _run_locked(queue, paths, names, force=force, blend_only=blend_only)


def _config_change_words(exp: Experiment, exp_dir: str) -> str:
    """``: <what changed>`` between the experiment's saved config.yaml and its config now ("" if unknown)."""
    from pipeline.config import config_changes

    try:
        saved = io.read_bytes(layout.experiment_file(exp_dir, layout.CONFIG)).decode("utf-8", "replace")
    except OSError:
        return ""
    changes = config_changes(saved, exp)
    if not changes and exp.teacher is not None:
        return ": its pseudo-label teacher's config"
    return f": {changes}" if changes else ""


def _run_locked(queue: Queue, paths: Paths, names: List[str], *, force: bool, blend_only: bool) -> int:
    """The queue's work, while this process holds the output folder's lock."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    failed: Dict[str, str] = {}
    try:
        if not blend_only:
            log.info("queue %s: %d experiment(s)", queue.source, len(names))
            failed = _run_experiments(queue, paths, names, force=force)
        current = results.current_data(queue)  # after the runs: what they ran on is compared with the data as it is now
        write_queue_oof(queue, paths, current)
        summary = write_summary(queue, paths, current, failed)
        from pipeline.blend.stage import run_blend

        run_blend(queue, paths.output, current)
        print("\n" + format_summary(summary) + "\n", flush=True)
        from pipeline.report.build import write_report_safely

        write_report_safely(paths.output, title=f"Queue report: {os.path.basename(queue.source)}")
    except KeyboardInterrupt:
        # Not --force again: that would start the interrupted experiments afresh instead of resuming them.
        command = " ".join(["python run_queue.py", shlex.quote(os.path.relpath(queue.source)),
                            *(["--only", shlex.quote(",".join(names))]
                              if len(names) < len(queue.experiments) else [])])
        log.warning("interrupted; state is saved. To resume: %s", command)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        for handler in logging.getLogger().handlers:  # a remote queue.log is uploaded now, not at exit
            if hasattr(handler, "upload"):
                handler.upload()
    if failed:
        log.error("%d experiment(s) failed: %s (see output/<name>/run.log)", len(failed), ", ".join(failed))
        return 1
    return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt()


# ----------------------------------------------------------------------------- running the experiments (issue 16)


def _run_experiments(queue: Queue, paths: Paths, names: List[str], *, force: bool) -> Dict[str, str]:
    """Run the experiments ``names`` in queue order (one waits for those it requires); returns failed name -> error.

    With ``execution`` local and one job (the default) every experiment runs in
    this process, its folds one after the other; else its fold jobs join one
    pool shared by the whole queue (:func:`_run_pooled`).
    """
    waiting = run_order([exp for exp in queue.experiments if exp.name in names])
    if [exp.name for exp in waiting] != [exp.name for exp in queue.experiments if exp.name in names]:
        log.info("run order (teachers before their students): %s", ", ".join(exp.name for exp in waiting))
    outcome: Dict[str, dict] = {}  # name -> final status
    if queue.execution.in_process:
        while waiting:
            exp = waiting.pop(_next_ready(waiting, outcome, names) or 0)  # none ready: a cycle, refused below
            problem = _requirement_problem(exp, outcome, paths)
            outcome[exp.name] = _refused(exp, problem) if problem else run_experiment(
                exp, paths, force=force, memory_budget=queue.execution.memory_budget)
    else:
        _run_pooled(queue, paths, waiting, outcome, names, force=force)
    return {name: str(status.get("error") or "failed") for name, status in outcome.items()
            if status.get("state") == FAILED}


def _next_ready(waiting: List[Experiment], outcome: Dict[str, dict], names: List[str]) -> Optional[int]:
    """The index of the first waiting experiment whose required experiments of this run have ended, or None."""
    for i, exp in enumerate(waiting):
        if all(name in outcome or name not in names for name in exp.requires):
            return i
    return None


def _requirement_problem(exp: Experiment, outcome: Dict[str, dict], paths: Paths) -> str:
    """Why ``exp`` cannot start: an experiment it requires failed or has not finished ("" when none)."""
    for name in exp.requires:
        state = (outcome[name] if name in outcome else read_status(paths.experiment(name))).get("state")
        if state != DONE:
            how = "failed" if state == FAILED else "has not finished"
            return f"it requires the experiment {name!r}, which {how}"
    return ""


def _refused(exp: Experiment, problem: str) -> dict:
    log.error("%s: FAILED: %s", exp.name, problem)
    return {"state": FAILED, "error": problem}


def _run_pooled(queue: Queue, paths: Paths, waiting: List[Experiment], outcome: Dict[str, dict], names: List[str],
                *, force: bool) -> None:
    """Prepare the experiments one by one in this process, their fold jobs in a queue-wide pool
    (:class:`pipeline.scheduler.JobPool`); each experiment's outputs are written when its last fold ends.

    Ctrl-C or SIGTERM stops every running job and marks the experiments in flight interrupted.
    """
    from pipeline.scheduler import JobPool

    pool = JobPool(queue.execution)
    active: Dict[str, ExperimentRun] = {}
    teachers = {name for exp in waiting for name in exp.requires}
    try:
        while waiting or pool.busy:
            i = _next_ready(waiting, outcome, names) if waiting else None
            if i is None and pool.busy:  # all prepared, or what the next one requires is still training
                pool.wait()
                continue
            exp = waiting.pop(i or 0)
            problem = _requirement_problem(exp, outcome, paths)
            run = ExperimentRun(exp, paths, force=force, memory_budget=queue.execution.memory_budget)
            if problem:
                outcome[exp.name] = _refused(exp, problem)
            elif not run.start():
                outcome[exp.name] = run.status
            else:
                _pool_experiment(run, pool, outcome, active, teacher=exp.name in teachers)
            pool.wait(timeout=0)  # jobs that ended meanwhile, and more jobs started
    except KeyboardInterrupt:
        pool.close()  # first: no job writes any more
        for run in active.values():
            run.interrupted()
        raise
    finally:
        pool.close()


def _pool_experiment(run: ExperimentRun, pool, outcome: Dict[str, dict], active: Dict[str, ExperimentRun],
                     teacher: bool = False) -> None:
    """Prepare ``run``'s experiment and add its unfinished fold jobs to ``pool``; the last one to end gathers
    the folds and writes the experiment's outputs, a failing one fails the experiment (only). ``teacher``: an
    experiment of this run requires it (its folds' cost counts double in the pool: a student waits for all of them)."""
    from pipeline.fold_loop import gather_folds, pending_folds, plan_folds
    from pipeline.scheduler import job_estimates

    name = run.exp.name
    with run.recording():
        prepared = _prepare(run.exp, run.paths, run.exp_dir, run.timings, run.data)
        plan = plan_folds(run.exp, prepared.dataset, prepared.cache, prepared.folds, run.exp_dir,
                          prepared.teacher_dir, prepared.teacher_cache, run.memory_budget)
        jobs = [plan.job(k) for k in pending_folds(plan)]
        memory, cost = job_estimates(plan) if jobs else (0, 0.0)
    if run.status is not None:
        outcome[name] = run.status
        return
    fresh: Dict[int, tuple] = {}

    def finish():
        active.pop(name, None)
        with run.recording():
            _finish(prepared, *gather_folds(plan, fresh))
            run.done()
        outcome[name] = run.status

    def done(job, result, info):
        fresh[job.fold] = result
        jobs_status = dict(read_status(run.exp_dir).get("jobs") or {})
        jobs_status[f"{layout.FOLD_PREFIX}{job.fold}"] = info
        write_status(run.exp_dir, jobs=jobs_status)
        log.info("%s fold %d/%d: finished in %.0f s, peak memory %s MiB", name, job.fold + 1, job.n_folds,
                 info["seconds"], info["peak_rss_mb"])
        if len(fresh) == len(jobs):
            finish()

    def failed(job, error):
        pool.cancel(name)
        active.pop(name, None)
        with run.recording():
            raise error
        outcome[name] = run.status

    active[name] = run
    if not jobs:
        finish()
    for job in jobs:
        pool.add(job, memory, done, failed, cost=2 * cost if teacher else cost)  # a student waits for every fold
