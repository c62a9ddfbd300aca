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

import dataclasses
import json
import logging
import os
import signal
import sys
import time
import traceback
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from pipeline import io
from pipeline.config import Experiment, Queue, dump_experiment, stable_hash

log = logging.getLogger("pipeline")

DONE, FAILED, RUNNING, INTERRUPTED = "done", "failed", "running", "interrupted"
# Per-clip identity of the data an experiment ran on (pipeline.data.identity), beside its status.json.
DATA_CLIPS = "data_clips.csv"


class StageError(RuntimeError):
    """An experiment failed in a known way; the message is enough (no traceback needed)."""


# ----------------------------------------------------------------------------- paths


@dataclasses.dataclass(frozen=True)
class Paths:
    output: str

    @property
    def cache(self):
        return os.path.join(self.output, "cache", "features")

    @property
    def folds(self):
        return os.path.join(self.output, "folds")

    def experiment(self, name):
        return os.path.join(self.output, name)


def prediction_columns(targets, task, prefix="pred") -> List[str]:
    """Prediction column names: ``pred`` for binary tasks, ``pred:<class>`` otherwise."""
    if task == "binary":
        return [prefix]
    return [f"{prefix}:{t}" for t in targets]


# ----------------------------------------------------------------------------- status


def read_status(exp_dir: str) -> dict:
    path = os.path.join(exp_dir, "status.json")
    try:
        return io.read_json(path)
    except (OSError, ValueError):
        return {}


def write_status(exp_dir: str, **fields) -> dict:
    status = read_status(exp_dir)
    status.update(fields, updated=_now())
    io.write_json(os.path.join(exp_dir, "status.json"), status)
    return status


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ----------------------------------------------------------------------------- one experiment


def run_experiment(exp: Experiment, paths: Paths, *, force: bool = False) -> dict:
    """Run (or resume, or skip) one experiment. Returns its final status dict.

    The data is loaded first (a CSV read and one ``stat`` per file; nothing is
    written unless a synthetic dataset must be generated), because whether
    earlier work counts depends on it: a finished experiment is skipped only
    when its config and its data (:meth:`Dataset.identity`: ids, files' size
    and mtime, labels, groups) are unchanged, and an unfinished one resumes
    only on the same data; otherwise it starts afresh and the log says what
    changed. A synthetic dataset that is not on disk is a function of the
    config, so a finished experiment on it is skipped without generating it.
    """
    from pipeline.data import needs_generation
    from pipeline.data.identity import write_clips

    exp_dir = paths.experiment(exp.name)
    status = read_status(exp_dir)
    config_hash = exp.config_hash()
    same_config = status.get("config_hash") == config_hash
    if status.get("state") == DONE and same_config and not force and needs_generation(exp.data.name, exp.data.params):
        log.info("%s: finished earlier with the same config; skipped (its synthetic data is not on disk: it would be "
                 "regenerated from the same parameters)", exp.name)
        return status
    dataset, load_error, load_seconds = _load_data(exp)
    changed = data_changes(exp_dir, status, dataset) if same_config and dataset is not None else ""
    if status.get("state") == DONE and same_config and not force and dataset is not None and not changed:
        log.info("%s: finished earlier with the same config; skipped (data unchanged)", exp.name)
        return status
    if io.isdir(exp_dir) and (force or not same_config or changed):
        reason = ("--force" if force else "its config changed" if not same_config
                  else f"data changed since the last run: {changed}")
        log.info("%s: starting afresh (%s)", exp.name, reason)
        io.rmtree(exp_dir)
    io.makedirs(exp_dir)
    io.write_text(os.path.join(exp_dir, "config.yaml"), dump_experiment(exp))
    data_fields = {}
    if dataset is not None:  # the per-clip table first: a status naming data always has its table beside it
        write_clips(os.path.join(exp_dir, DATA_CLIPS), dataset.identity)
        data_fields["data"] = dataset.identity.checked()

    handler = io.log_handler(os.path.join(exp_dir, "run.log"))
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    started = time.time()
    timings: Dict[str, float] = dict(status.get("timings", {})) if same_config and not changed else {}
    write_status(exp_dir, state=RUNNING, stage="start", config_hash=config_hash, started=_now(), error=None,
                 timings=timings, **data_fields)
    try:
        _stages(exp, paths, exp_dir, timings, (dataset, load_error, load_seconds))
        wall = time.time() - started + sum(v for k, v in timings.items() if k == "previous_runs")
        status = write_status(exp_dir, state=DONE, stage="done", finished=_now(), timings=timings,
                              wall_seconds=round(wall, 2))
        log.info("%s: done in %.0f s", exp.name, time.time() - started)
    except KeyboardInterrupt:
        write_status(exp_dir, state=INTERRUPTED, error="interrupted by the user or SIGTERM", timings=timings)
        raise
    except Exception as err:  # a failing experiment never stops the queue
        message = f"{type(err).__name__}: {err}"
        log.error("%s: FAILED: %s", exp.name, message)
        log.debug("%s", traceback.format_exc())
        status = write_status(exp_dir, state=FAILED, error=message, traceback=traceback.format_exc(),
                              finished=_now(), timings=timings)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    return status


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


def data_changes(exp_dir: str, status: dict, dataset) -> str:
    """What changed in the data since the run recorded in ``exp_dir`` (its status and per-clip table); '' if nothing."""
    from pipeline.data.identity import describe_changes, read_clips

    return describe_changes(status.get("data"), dataset.identity, read_clips(os.path.join(exp_dir, DATA_CLIPS)))


def _stages(exp: Experiment, paths: Paths, exp_dir: str, timings: dict, data) -> None:
    from pipeline.data import submission_frame
    from pipeline.features import check_settings
    from pipeline.folds import ensure_folds
    from pipeline.records import ensure_features

    done = _stage(exp_dir, timings, "data")
    dataset, load_error, load_seconds = data
    timings["data"] = round(timings.get("data", 0.0) + load_seconds, 2)
    if load_error is not None:
        raise load_error
    train = dataset.train
    log.info("%s: %s data: %d train, %d test clips, task %s, targets %s", exp.name, exp.data.name, len(train),
             len(dataset.test), dataset.task, ",".join(dataset.targets))
    for warning in check_settings(exp.features.name, exp.features.params, sample_rate=exp.audio.sample_rate):
        log.warning("%s: features: %s", exp.name, warning)
    done()

    done = _stage(exp_dir, timings, "features")
    cache = ensure_features(dataset, exp, paths.cache)
    done()

    done = _stage(exp_dir, timings, "folds")
    folds = ensure_folds(dataset, exp, paths.folds)
    done()

    done = _stage(exp_dir, timings, "train")
    from pipeline.train import run_folds

    oof, test = run_folds(exp, dataset, cache, folds, exp_dir)
    done()

    done = _stage(exp_dir, timings, "outputs")
    _write_experiment_outputs(exp, dataset, oof, test, exp_dir, submission_frame)
    done()


def _write_experiment_outputs(exp, dataset, oof: pd.DataFrame, test: Optional[pd.DataFrame], exp_dir, submission_frame):
    from pipeline.metrics import score

    targets = list(dataset.targets)
    pred_cols = prediction_columns(targets, dataset.task)
    io.write_csv(os.path.join(exp_dir, "oof.csv"), oof)
    per_fold = {}
    for k, part in oof.groupby("fold"):
        per_fold[int(k)] = score(dataset.task, part[targets].to_numpy(), part[pred_cols].to_numpy())
    overall = score(dataset.task, oof[targets].to_numpy(), oof[pred_cols].to_numpy())
    fold_auc = np.array([s["auc"] for s in per_fold.values()], dtype=float)
    scores = {
        "metric": "auc",
        "oof": overall,
        "folds": {str(k): v for k, v in sorted(per_fold.items())},
        "fold_mean": float(np.nanmean(fold_auc)) if len(fold_auc) else None,
        "fold_std": float(np.nanstd(fold_auc)) if len(fold_auc) else None,
        "n_oof": int(len(oof)),
        # What the blend needs to read the prediction files without the dataset.
        "task": dataset.task,
        "targets": targets,
        "submission": dataset.submission,
        # Every test id, also those whose audio was skipped: a submission must list them all.
        "all_test_ids": [str(i) for i in dataset.test["id"]],
    }
    io.write_json(os.path.join(exp_dir, "scores.json"), scores)
    log.info("%s: OOF AUC %.4f (folds %.4f +- %.4f)", exp.name, overall["auc"], scores["fold_mean"], scores["fold_std"])
    if "lwlrap" in overall:
        log.info("%s: OOF LWLRAP %.4f (random ranking %.4f)", exp.name, overall["lwlrap"], overall["lwlrap_random"])
    if test is not None and len(test):
        io.write_csv(os.path.join(exp_dir, "test.csv"), test)
        sub = submission_frame(dataset, list(test["id"]), test[pred_cols].to_numpy())
        io.write_csv(os.path.join(exp_dir, "submission.csv"), sub)


# ----------------------------------------------------------------------------- queue-level outputs


def current_data(queue: Queue) -> Dict[str, object]:
    """The data each experiment of ``queue`` would use now, loaded once per distinct data block, writing nothing.

    Returns ``{data key: value}`` (key: :func:`_data_key`) where value is a
    :class:`~pipeline.data.base.Dataset`, ``None`` for synthetic data not on
    disk (a function of the config, so unchanged by definition), or the error
    message (str) when the data cannot be read.
    """
    from pipeline.data import load_dataset, needs_generation

    out: Dict[str, object] = {}
    # The sources' own messages (clip counts, missing files) were logged when the experiments loaded the data.
    sources = logging.getLogger("pipeline.data")
    level = sources.level
    sources.setLevel(logging.ERROR)
    try:
        for exp in queue.experiments:
            key = _data_key(exp)
            if key in out:
                continue
            if needs_generation(exp.data.name, exp.data.params):
                out[key] = None
                continue
            try:
                dataset = load_dataset(exp.data.name, exp.data.params)
                _ = dataset.identity
                out[key] = dataset
            except Exception as err:  # noqa: BLE001 - unreadable data is reported per experiment, never a crash
                out[key] = f"{type(err).__name__}: {err}"
    finally:
        sources.setLevel(level)
    return out


def _data_key(exp: Experiment) -> str:
    return stable_hash(exp.data.to_dict())


def stale_reason(exp: Experiment, paths: Paths, current: Dict[str, object]) -> str:
    """Why a finished experiment's results are not results on the current data; '' when they are.

    ``current`` comes from :func:`current_data`.
    """
    data = current.get(_data_key(exp))
    if data is None:
        return ""
    if isinstance(data, str):
        return f"its data cannot be read now, so its results cannot be checked: {data}"
    exp_dir = paths.experiment(exp.name)
    changed = data_changes(exp_dir, read_status(exp_dir), data)
    return f"data changed since this run: {changed}" if changed else ""


def finished(queue: Queue, paths: Paths, current: Optional[Dict[str, object]] = None) -> List[Experiment]:
    """Experiments finished with their current config on the current data (:func:`stale_reason` empty).

    Only these reach ``output/oof.csv``, the summary's scores and the blend.
    ``current``: :func:`current_data` of the queue, computed here when None.
    """
    if current is None:
        current = current_data(queue)
    out = []
    for exp in queue.experiments:
        status = read_status(paths.experiment(exp.name))
        if status.get("state") == DONE and status.get("config_hash") == exp.config_hash():
            reason = stale_reason(exp, paths, current)
            if reason:
                log.warning("%s: %s; its results are stale and left out (rerun the queue to update them)",
                            exp.name, reason)
                continue
            out.append(exp)
    return out


def write_queue_oof(queue: Queue, paths: Paths,
                    current: Optional[Dict[str, object]] = None) -> Optional[pd.DataFrame]:
    """``output/oof.csv``: one row per training clip, one prediction column (set) per finished experiment.

    Only experiments on the same data and folds as the queue's first finished
    experiment can share this table; others are left out with a warning, as
    are experiments whose data changed since they ran (:func:`finished`).
    """
    from pipeline.folds import fold_key

    done = finished(queue, paths, current)
    if not done:
        return None
    key = fold_key(done[0])
    table = None
    for exp in done:
        if fold_key(exp) != key:
            log.warning("%s uses other data or folds than %s; left out of output/oof.csv", exp.name, done[0].name)
            continue
        oof = io.read_csv(os.path.join(paths.experiment(exp.name), "oof.csv"), dtype={"id": str})
        pred = [c for c in oof.columns if c == "pred" or c.startswith("pred:")]
        renamed = {c: exp.name if c == "pred" else f"{exp.name}:{c[5:]}" for c in pred}
        part = oof.rename(columns=renamed)
        if table is None:
            table = part
        else:
            table = table.merge(part[["id", *renamed.values()]], on="id", how="outer")
    io.write_csv(os.path.join(paths.output, "oof.csv"), table)
    return table


def write_summary(queue: Queue, paths: Paths, current: Optional[Dict[str, object]] = None) -> pd.DataFrame:
    """``output/summary.csv``: the leaderboard, one row per experiment of the queue, best first.

    An experiment finished with another config, or on data that changed since
    (``current``: :func:`current_data`, computed when None), is ``stale``
    without scores; the error column says what changed.

    Columns: experiment, model, features, status, oof_auc, ``oof_<blend.metric>``
    (when the blend metric is not auc), fold_mean / fold_std (AUC over the
    folds), epochs (mean over folds), wall_seconds, error. Rows are sorted by
    the blend metric (best first; unfinished experiments last). The output
    folder and metric are kept in ``summary.attrs`` for :func:`format_summary`.
    """
    from pipeline import metrics

    metric = queue.blend.metric
    metric_col = f"oof_{metric}"
    if current is None:
        current = current_data(queue)
    rows = []
    for exp in queue.experiments:
        exp_dir = paths.experiment(exp.name)
        status = read_status(exp_dir)
        row = {
            "experiment": exp.name,
            "status": status.get("state", "not run"),
            "model": exp.model.name + ("_residual" if getattr(exp.model.params, "residual", False) else ""),
            "features": exp.features.name,
            "oof_auc": np.nan,
            metric_col: np.nan,
            "fold_mean": np.nan,
            "fold_std": np.nan,
            "epochs": np.nan,
            "wall_seconds": status.get("wall_seconds", np.nan),
            "error": status.get("error") or "",
        }
        if status.get("config_hash") not in (None, exp.config_hash()):
            row["status"] = "stale"
        elif row["status"] == DONE:
            reason = stale_reason(exp, paths, current)
            if reason:
                row.update(status="stale", error=reason)
        scores_path = os.path.join(exp_dir, "scores.json")
        if row["status"] == DONE and io.isfile(scores_path):
            scores = io.read_json(scores_path)
            row.update(oof_auc=scores["oof"]["auc"], fold_mean=scores["fold_mean"], fold_std=scores["fold_std"])
            row[metric_col] = scores["oof"].get(metric, np.nan)
            if metric not in scores["oof"]:
                row[metric_col] = _oof_metric(exp_dir, scores, metric)
            epochs = [io.read_json(p).get("epochs") for p in _fold_done_files(exp_dir)]
            row["epochs"] = float(np.mean(epochs)) if epochs else np.nan
        rows.append(row)
    summary = pd.DataFrame(rows)
    summary = summary.sort_values(metric_col, ascending=not metrics.GREATER_IS_BETTER[metric], na_position="last",
                                  kind="stable").reset_index(drop=True)
    io.write_csv(os.path.join(paths.output, "summary.csv"), summary)
    summary.attrs.update(output=paths.output, metric=metric)
    return summary


def _oof_metric(exp_dir: str, scores: dict, metric: str) -> float:
    """A metric that scores.json lacks (e.g. lwlrap), computed from the experiment's oof.csv; NaN if it does not apply."""
    from pipeline import metrics
    from pipeline import blend

    oof = io.read_csv(os.path.join(exp_dir, "oof.csv"), dtype={"id": str})
    pred = blend.prediction_columns(oof)
    try:
        return metrics.metric_value(metric, scores["task"], oof[list(scores["targets"])].to_numpy(),
                                    oof[pred].to_numpy())
    except (ValueError, KeyError):
        return float("nan")


def _fold_done_files(exp_dir):
    out = []
    for name in io.listdir(exp_dir):
        path = os.path.join(exp_dir, name, "done.json")
        if name.startswith("fold") and io.isfile(path):
            out.append(path)
    return out


def format_summary(summary: pd.DataFrame) -> str:
    """The leaderboard as printed at the end of a run: one line per experiment, then the blend and the failures.

    The blend line is read from ``<output>/blend/scores.json`` (or ``error.json``)
    when ``summary.attrs`` names the output folder (see :func:`write_summary`).
    """
    from pipeline.report import format_duration

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
        "wall": summary["wall_seconds"].map(format_duration),
        "status": summary["status"],
    })
    lines = [shown.to_string(index=False)] if len(shown) else ["(no experiments)"]
    output = summary.attrs.get("output")
    if output:
        lines.append(_blend_line(os.path.join(output, "blend")))
    for _, row in summary.iterrows():
        if row["status"] == FAILED:
            lines.append(f"FAILED {row['experiment']}: {row['error']}")
    return "\n".join(line for line in lines if line)


def _fmt(fmt):
    return lambda v: "" if pd.isna(v) else fmt.format(v)


def _blend_line(folder: str) -> str:
    scores_path, error_path = os.path.join(folder, "scores.json"), os.path.join(folder, "error.json")
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
    except (OSError, ValueError, KeyError, TypeError):
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
    file = io.log_handler(os.path.join(output_dir, "queue.log"))
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
    from pipeline.records import MANIFEST, cache_key

    lines = [f"queue {queue.source}: {len(names)} experiment(s), output {paths.output}"]
    current = current_data(queue)
    for exp in queue.experiments:
        if exp.name not in names:
            continue
        exp_dir = paths.experiment(exp.name)
        status = read_status(exp_dir)
        same = status.get("config_hash") == exp.config_hash()
        data = current[_data_key(exp)]
        readable = data is not None and not isinstance(data, str)
        changed = data_changes(exp_dir, status, data) if same and readable else ""
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
            action = "run" + (" (config changed: start afresh)" if status and not same else "")
        if data is None:
            cache = folds = "build (synthetic data not generated yet)"
            key = "?"
        elif isinstance(data, str):
            cache = folds = "unknown"
            key = "?"
        else:
            key = cache_key(exp, data.identity.audio)
            cache = "hit" if io.isfile(os.path.join(paths.cache, key, MANIFEST)) else "build"
            folds = "exists" if io.isfile(os.path.join(paths.folds, table_key(exp, data) + ".csv")) else "build"
        lines.append(
            f"  {exp.name}: {action}; data {exp.data.name}, features {exp.features.name} (cache {key}: {cache}), "
            f"model {exp.model.name}, {exp.folds.n_splits} folds (table: {folds}), {exp.train.epochs} epochs max"
        )
    return "\n".join(lines)


def run(queue: Queue, *, only: Optional[List[str]] = None, force: bool = False, dry_run: bool = False,
        blend_only: bool = False) -> int:
    """Run the queue. Returns the process exit status: 0 all finished, 1 any failed, 130 interrupted."""
    from pipeline.distribute import worker_output

    paths = Paths(worker_output(queue.output_dir))  # non-chief workers of a TF_CONFIG cluster write apart
    names = [e.name for e in queue.experiments] if not only else list(only)
    if dry_run:
        print(plan(queue, paths, names, force))
        return 0
    setup_logging(paths.output)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    failed = []
    try:
        if not blend_only:
            log.info("queue %s: %d experiment(s)", queue.source, len(names))
            for exp in queue.experiments:
                if exp.name not in names:
                    continue
                status = run_experiment(exp, paths, force=force)
                if status.get("state") == FAILED:
                    failed.append(exp.name)
        current = current_data(queue)  # after the runs: what they ran on is compared with the data as it is now
        write_queue_oof(queue, paths, current)
        summary = write_summary(queue, paths, current)
        from pipeline.blend import run_blend

        run_blend(queue, paths)
        print("\n" + format_summary(summary) + "\n", flush=True)
        from pipeline.report import write_report_safely

        write_report_safely(paths.output, title=f"Queue report: {os.path.basename(queue.source)}")
    except KeyboardInterrupt:
        log.warning("interrupted; state is saved. Run the same command again to resume: python run_queue.py %s",
                    os.path.relpath(queue.source))
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
