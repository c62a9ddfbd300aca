"""New audio -> predictions of the finished experiments' fold models (``run_queue.py QUEUE --predict PATH``).

The new audio takes the path of a test set: it becomes a dataset whose clips
are all ``test`` (:func:`new_audio`), gets a feature cache under
``output/cache/features/`` like any data (:func:`pipeline.cache.build.ensure_features`:
the same decoding, features, extra windows of long clips, bad-file checks), and
every fold model of every finished experiment predicts it through the one
prediction stage (:func:`pipeline.predict.predict_examples`, windows from the
experiment's fold strategy), averaged over folds as training-time test
predictions are. The queue's blend is re-applied with its saved weights
(:func:`pipeline.blend.methods.apply_saved`). Nothing trains and nothing under
``output/<experiment>/`` or ``output/blend/`` changes; the results go to
``output/predict/<run>/`` (names in :mod:`pipeline.layout`).

PATH is a folder of audio (every file with an audio suffix below it; its id is
the path relative to PATH, or the file's stem for rfcx-style experiments, as
their sources name test recordings) or a YAML file ``data: {...}`` with the
schema of an experiment's ``data`` block, whose test split is predicted.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from pipeline import io, layout, ownership, results, schema
from pipeline.config import ConfigError, Experiment, Queue
from pipeline.errors import DataError, PipelineError

log = logging.getLogger("pipeline")

# What the data sources decode (pipeline.data.audio reads these through soundfile or its own PCM reader).
AUDIO_SUFFIXES = (".aiff", ".aif", ".wav", ".flac", ".ogg")


@dataclasses.dataclass(frozen=True)
class NewAudio:
    """The files to predict: ``files`` (``id, path``, ids unique) and where they came from (for messages)."""

    source: str
    files: pd.DataFrame


def new_audio(path: str) -> NewAudio:
    """The audio to predict at ``path``: a folder of audio files, one audio file (its id: its name) or a YAML
    data block.

    Raises :class:`ConfigError` (the user's mistake: exit 2 before anything is
    written) when ``path`` is missing, holds no audio, or is a YAML file whose
    ``data`` block is invalid; :class:`DataError` when that data cannot be read.
    """
    if not os.path.exists(path):
        raise ConfigError("--predict", [f"{path}: not found; expected a folder of audio or a YAML file with a "
                                        f"data block"])
    if os.path.isfile(path) and path.lower().endswith(AUDIO_SUFFIXES):
        full = os.path.abspath(path)
        return NewAudio(source=full, files=pd.DataFrame({"id": [os.path.basename(full)], "path": [full]}))
    if os.path.isdir(path):
        root = os.path.abspath(path)
        found = []
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [os.path.join(folder, n) for n in sorted(names)
                      if n.lower().endswith(AUDIO_SUFFIXES) and not n.startswith(".")]
        if not found:
            raise ConfigError("--predict", [f"{path}: no audio files in the folder (looked for "
                                            f"{', '.join(AUDIO_SUFFIXES)}, also in subfolders)"])
        ids = [os.path.relpath(p, root).replace(os.sep, "/") for p in found]
        return NewAudio(source=root, files=pd.DataFrame({"id": ids, "path": found}))
    from pipeline.config import parse_data_block
    from pipeline.data import load_dataset

    data = parse_data_block(path)
    from pipeline.data import needs_generation

    root = getattr(data.params, "root", None)
    if needs_generation(data.name, data.params) and root is not None and io.exists(root) and io.listdir(root):
        # Predicting trains nothing and replaces nothing: another synthetic dataset there (the queue's own
        # training data, with the default root) is never regenerated for it.
        raise ConfigError(path, [f"data.root: {root} holds a {data.name} dataset generated with other parameters "
                                 f"(or other files); predicting would replace it. Give the data block a root of "
                                 f"its own"])
    test = load_dataset(data.name, data.params).test
    if test.empty:
        raise ConfigError(path, [f"data: {data.name} has no test clips to predict"])
    return NewAudio(source=os.path.abspath(path), files=test[["id", "path"]].reset_index(drop=True))


def run_name(name: Optional[str]) -> str:
    """The predict run's folder name: ``name`` (checked like an experiment name) or a UTC timestamp."""
    from pipeline.config import NAME_RE

    if name is None:
        return time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    if not NAME_RE.fullmatch(name) or len(name) > layout.MAX_NAME_LENGTH:
        raise ConfigError("--predict-name", [f"{name!r} is not a safe folder name; use only letters, digits, '.', "
                                             f"'_' and '-', starting with a letter, digit or '_'"])
    return name


def finished_experiments(queue: Queue, only: Optional[List[str]] = None, flag: str = "--predict") -> List[Experiment]:
    """The experiments whose fold models can predict: finished with their current config on the current data.

    Raises :class:`ConfigError` naming ``flag`` when there is none (nothing could be predicted or exported).
    """
    done = [e for e in results.finished(queue, queue.output_dir) if only is None or e.name in only]
    if not done:
        raise ConfigError(queue.source, [f"{flag}: no finished experiment{' among --only' if only else ''} in "
                                         f"{queue.output_dir}; run the queue first"])
    return done


def fold_strategy_name(data_name: str) -> str:
    """The fold strategy of experiments on data source ``data_name``: ``crops`` for the long recordings with
    event boxes of :data:`pipeline.schema.RECORDING_SOURCES` (:func:`pipeline.fold_strategies.strategy_name`
    finds their boxes), else ``clips``."""
    return "crops" if data_name in schema.RECORDING_SOURCES else "clips"


def dataset_for(data_name: str, audio: NewAudio, meta: dict):
    """The new audio as a dataset of test clips only, for an experiment trained on data source ``data_name``.

    ``meta``: the experiment's scores.json (task, targets, submission). Long
    recordings of an rfcx-style experiment carry an empty box list, so the
    fold strategy is the one the experiment trained with; their ids are the
    files' stems, as the rfcx sources name recordings.
    """
    from pipeline.data.base import Dataset

    files = audio.files.copy()
    recordings = fold_strategy_name(data_name) == "crops"
    if recordings and os.path.isdir(audio.source):
        files["id"] = [os.path.splitext(i)[0] for i in files["id"]]
    dup = files["id"][files["id"].duplicated()]
    if len(dup):
        raise DataError(f"{audio.source}: files with the same id {sorted(dup)[:3]} (ids are the files' names"
                        f"{' without suffix' if recordings else ''}); rename or move them")
    manifest = files.assign(split="test")
    for t in meta["targets"]:
        manifest[t] = np.nan
    if recordings:
        manifest["boxes"] = "[]"
    return Dataset(manifest=manifest, task=meta["task"], targets=tuple(meta["targets"]),
                   submission=meta["submission"])


def load_fold_model(exp_dir: str, k: int, model_name: str):
    """Fold ``k``'s saved model, for prediction only: ``fold<k>/model.keras`` (not compiled), or the fitted
    classical family's ``model.joblib`` (``model_name``'s registry entry says which)."""
    import importlib

    if schema.MODELS[model_name].kind == "sklearn":
        from pipeline.train_classical import load_classical

        return load_classical(layout.fold_file(exp_dir, k, layout.CLASSICAL_MODEL))
    import keras

    importlib.import_module("pipeline.models.layers")  # registers the custom layers the saved models use
    return keras.models.load_model(layout.fold_file(exp_dir, k, layout.MODEL), compile=False)


def predict_experiment(exp: Experiment, dataset, output: str,
                       cache_root: Optional[str] = None) -> Tuple[pd.DataFrame, List[dict]]:
    """``exp``'s fold models' predictions of ``dataset``'s test clips: (``id, <pred columns>`` averaged over the
    folds, in dataset order; the files skipped as bad, ``id, path, reason``).

    ``output``: the queue's output folder (the models); ``cache_root``: where the features of ``dataset`` are
    cached (default: the queue's cache, ``output/cache/features/``).

    The same cache settings, windows and batch size as the experiment's
    training-time test predictions (:func:`pipeline.fold_job.run_fold_job`),
    so on the experiment's own test clips the result is its ``test.csv``.
    """
    from pipeline import distribute
    from pipeline.cache.build import ensure_features
    from pipeline.predict import mean_over_folds, predict_examples

    import keras

    exp_dir = layout.experiment_dir(output, exp.name)
    # A folder of new audio with bad files is predicted all the same: its bad files are listed, not refused.
    audio = dataclasses.replace(exp.audio, max_bad_fraction=1.0)
    cache = ensure_features(dataset, cache_root or layout.cache_root(output), data=exp.data, audio=audio, features=exp.features, cache=exp.cache,
                            predict=exp.predict, label=f"{exp.name} (predict)")
    skipped = [{"id": s["id"], "path": s["path"], "reason": s["reason"]} for s in cache.skipped]
    pred_cols = layout.prediction_columns(dataset.targets, dataset.task)
    if cache.count("test") == 0:
        return pd.DataFrame(columns=["id", *pred_cols]), skipped
    strategy = schema.FOLD_STRATEGIES[fold_strategy_name(exp.data.name)].load()()
    windows = strategy.windows(exp, cache.shape)
    per_fold, ids = [], None
    with distribute.experiment_runtime(exp.train, name=exp.name) as rt:
        batch = rt.global_batch(exp.train.batch_size)
        for k in range(exp.folds.n_splits):
            model = load_fold_model(exp_dir, k, exp.model.name)
            if schema.MODELS[exp.model.name].kind == "keras":
                model = distribute.prediction_model(model, rt)
            got, preds = predict_examples(model, cache.dataset("test"), batch_size=batch,
                                          extra_windows=strategy.extra_windows(cache, "test"), **windows)
            if ids is not None and got != ids:  # the cache is read in a fixed order: a bug, not a user error
                raise RuntimeError(f"{exp.name} fold {k}: clips in another order than fold 0's")
            ids = got
            per_fold.append(preds.astype(np.float64))  # as the fold files hold them (pipeline.fold_job)
            keras.backend.clear_session(free_memory=True)
    out = pd.DataFrame({"id": ids})
    out[pred_cols] = mean_over_folds(per_fold)
    return out, skipped


def saved_blend(output: str, predicted: List[str], settings_hash: str) -> Optional[dict]:
    """The queue's last blend (``blend/weights.json`` of a complete blend) when it was made by the queue's
    current ``blend:`` section (``settings_hash``: :meth:`pipeline.config.BlendSettings.settings_hash`) and every
    one of its experiments is among ``predicted``; else None, with the reason logged."""
    folder = layout.blend_dir(output)
    weights_path = layout.blend_file(folder, layout.WEIGHTS)
    if not io.isfile(layout.blend_file(folder, layout.SCORES)) or not io.isfile(weights_path):
        log.info("blend: the queue has no finished blend (%s); no blend", folder)
        return None
    try:
        weights = io.read_json(weights_path)
        names = [str(n) for n in weights["experiments"]]
        made_by = io.read_json(layout.blend_file(folder, layout.SCORES)).get("settings_hash")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        log.warning("blend: %s unreadable (%s); no blend", weights_path, err)
        return None
    if made_by is not None and made_by != settings_hash:  # blends made before stop 31 recorded none
        log.warning("blend: the queue's blend: section changed since %s was made; no blend (run the queue with "
                    "--blend-only first to blend as it says now)", folder)
        return None
    missing = [n for n in names if n not in predicted]
    if missing:
        log.warning("blend: it uses %s, which is not finished now or left out by --only; no blend",
                    ", ".join(missing))
        return None
    return weights


def run_predict(queue: Queue, path: str, *, name: Optional[str] = None, only: Optional[List[str]] = None) -> int:
    """Predict the audio at ``path`` with every finished experiment (of ``only``) and the blend; write
    ``output/predict/<run>/``. Returns the exit status: 0 done, 1 an experiment failed, 2 a user's mistake
    found before anything was written, 3 another runner holds the output folder."""
    from pipeline import lock

    try:
        audio = new_audio(path)
        run = run_name(name)
        experiments = finished_experiments(queue, only)
    except PipelineError as err:
        held = lock.busy(queue.output_dir)  # a runner rewriting the experiments now: that is the reason
        print(f"error: {held or err}", file=sys.stderr)
        return lock.EXIT_BUSY if held else 2
    output = queue.output_dir
    try:
        runner = lock.acquire(output)
    except lock.LockBusy as err:
        print(f"error: {err}", file=sys.stderr)
        return lock.EXIT_BUSY
    with runner:
        run_dir = layout.predict_run_dir(output, run)
        try:
            ownership.make_owned_dir(layout.predict_root(output))
            # The same --predict-name again: the earlier run's files go (a file of the user's stops it).
            ownership.remove_owned(run_dir, foreign=ownership.files_foreign(
                lambda n: n.endswith(".csv") or n == layout.PREDICT_LOG))
            ownership.make_owned_dir(run_dir)
        except ownership.OwnershipError as err:
            print(f"error: output: {err}", file=sys.stderr)
            return 2
        handler = log_to(layout.predict_file(run_dir, layout.PREDICT_LOG))
        try:
            return _predict_all(queue, audio, experiments, run_dir)
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()


def log_to(path: str) -> logging.Handler:
    """Log to the console (INFO) and to ``path`` (DEBUG), under the root logger."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    if not any(getattr(h, "_pipeline", False) for h in root.handlers):
        console = logging.StreamHandler(sys.stdout)
        console.setLevel(logging.INFO)
        console.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        console._pipeline = True
        root.addHandler(console)
    handler = io.log_handler(path)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    return handler


def _predict_all(queue: Queue, audio: NewAudio, experiments: List[Experiment], run_dir: str) -> int:
    output = queue.output_dir
    log.info("predict: %d files of %s with %d experiment(s): %s -> %s", len(audio.files), audio.source,
             len(experiments), ", ".join(e.name for e in experiments), run_dir)
    predicted: Dict[str, pd.DataFrame] = {}
    datasets, skipped, failed = {}, {}, []
    for exp in experiments:
        try:
            meta = io.read_json(layout.experiment_file(layout.experiment_dir(output, exp.name), layout.SCORES))
            datasets[exp.name] = dataset_for(exp.data.name, audio, meta)
            preds, bad = predict_experiment(exp, datasets[exp.name], output)
        except (PipelineError, OSError, ValueError) as err:  # e.g. a fold model deleted or damaged since the run
            log.error("%s: not predicted: %s: %s", exp.name, type(err).__name__, err)
            failed.append(exp.name)
            continue
        for item in bad:
            skipped[(item["id"], item["reason"])] = item
        if preds.empty:
            log.error("%s: none of the %d files could be used (reasons in %s)", exp.name, len(audio.files),
                      layout.predict_file(run_dir, layout.PREDICT_SKIPPED))
            failed.append(exp.name)
            continue
        io.write_csv(layout.predict_predictions(run_dir, exp.name), preds)
        predicted[exp.name] = preds
        log.info("%s: %d files predicted", exp.name, len(preds))
    table = pd.DataFrame(list(skipped.values()), columns=["id", "path", "reason"])
    io.write_csv(layout.predict_file(run_dir, layout.PREDICT_SKIPPED), table)
    if predicted:
        blend = saved_blend(output, list(predicted), queue.blend.settings_hash())
        write_blend_and_submission(run_dir, predicted, datasets, blend)
    if failed:
        log.error("predict: %d experiment(s) not predicted: %s", len(failed), ", ".join(failed))
        return 1
    return 0


def write_blend_and_submission(run_dir: str, predicted: Dict[str, pd.DataFrame], datasets,
                               weights: Optional[dict]) -> None:
    """``blend.csv`` (``weights``, a saved blend, re-applied; none without) and ``submission.csv`` (of the blend,
    else of the first experiment predicted), in the data's competition format with a row for every file, skipped
    ones too. ``predicted``, ``datasets``: per experiment its predictions and its :func:`dataset_for`."""
    from pipeline.blend.methods import apply_saved
    from pipeline.data import submission_frame
    from pipeline.errors import BlendError

    first = next(iter(predicted))
    chosen, frame = first, predicted[first]
    if weights is not None:
        names = list(weights["experiments"])
        everywhere = set.intersection(*(set(predicted[n]["id"]) for n in names))  # skipped by none of them
        ids = [i for i in predicted[names[0]]["id"] if i in everywhere]
        cols = layout.prediction_columns_of(predicted[names[0]].columns)
        try:
            blended = apply_saved(weights, [predicted[n].set_index("id").loc[ids, cols].to_numpy(float)
                                            for n in names], datasets[names[0]].task)
        except BlendError as err:
            log.error("predict: blend not applied: %s", err)
        else:
            frame = pd.DataFrame({"id": ids})
            frame[cols] = blended
            io.write_csv(layout.predict_predictions(run_dir, layout.BLEND), frame)
            chosen = f"the blend ({weights['method']} of {', '.join(names)})"
            first = names[0]
    cols = layout.prediction_columns_of(frame.columns)
    try:
        sub = submission_frame(datasets[first], list(frame["id"]), frame[cols].to_numpy(float))
    except ValueError as err:
        log.error("predict: no submission: %s", err)
        return
    io.write_csv(layout.predict_file(run_dir, layout.PREDICT_SUBMISSION), sub)
    log.info("predict: submission of %s -> %s", chosen, layout.predict_file(run_dir, layout.PREDICT_SUBMISSION))
