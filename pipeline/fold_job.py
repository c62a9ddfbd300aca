"""A fold is a job: everything one fold needs, picklable, run anywhere with :func:`run_fold_job`.

A :class:`FoldJob` holds the experiment's sections the fold uses (frozen
config objects), the fold's training and validation ids with their label
rows, the test ids, the cache folder and the experiment's output folder; no
open file, dataset or model. So it can be pickled and run in this process, a
worker process or on another machine that sees the same folders, with the same
result: training is seeded per epoch and resumes after the last finished
epoch (:func:`pipeline.train.train_fold`); a classical family (registry kind
``sklearn``) is fitted once instead (:func:`pipeline.train_classical.fit_fold`).

A job writes only inside ``output/<experiment>/fold<k>/`` and in this order:
the OOF and test predictions, the model, the training history, ``done.json``
(the fold's commit point), then it removes the resume state.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import pandas as pd

from pipeline import io, layout, schema
from pipeline.config import Component
from pipeline.errors import TrainingError

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class FoldJob:
    """One fold of one experiment (arrays: one row per id, float32; NaN marks an unknown label).

    The section attributes carry the same names as :class:`pipeline.config.Experiment`'s,
    so the fold strategies read either.
    """

    name: str  # the experiment's name (log messages)
    fold: int
    n_folds: int
    strategy: str  # a name in pipeline.schema.FOLD_STRATEGIES
    cache_dir: str  # a complete feature cache folder (pipeline.cache.read.FeatureCache)
    exp_dir: str  # output/<experiment>/
    task: str
    targets: Tuple[str, ...]
    features: Component
    model: Component
    loss: Component
    schedule: Component
    audio: schema.AudioSettings
    train: schema.TrainSettings
    augment: schema.AugmentSettings
    crops: schema.CropSettings
    predict: schema.PredictSettings
    train_ids: Tuple[str, ...]
    train_labels: np.ndarray  # [n_train, L]: what the input pipeline joins to each example (strategy.label_rows)
    train_targets: np.ndarray  # [n_train, C]: the clip-level targets (output bias, class weights)
    valid_ids: Tuple[str, ...]
    valid_labels: np.ndarray  # [n_valid, L]
    valid_targets: np.ndarray  # [n_valid, C]: written beside the OOF predictions, scored
    test_ids: Tuple[str, ...]
    in_memory: bool  # the fold's examples fit in memory: tf.data caches them after the first epoch
    # Pseudo-labels (issue 17, pipeline.pseudo); None without `pseudo:`. Paths, not arrays: the job reads the
    # teacher's fold-k files itself.
    pseudo: Optional[schema.PseudoSettings] = None
    teacher_dir: Optional[str] = None  # output/<teacher>/: only its fold<k>/ files are read
    teacher_cache_dir: Optional[str] = None  # on: unknown: the teacher's feature cache
    teacher_windows: Optional[dict] = None  # on: unknown: the teacher's prediction windows (strategy.windows)
    teacher_frame_seconds: Optional[float] = None  # on: unknown: the teacher's seconds per frame (hop / rate)
    pseudo_centres: Optional[Tuple[float, ...]] = None  # set by pseudo.with_unknown_filled: window centres, s
    progress: bool = False  # write fold<k>/progress.json after every epoch (set by a worker: run_in_worker)


def run_fold_job(job: FoldJob) -> Tuple[pd.DataFrame, Optional[pd.DataFrame]]:
    """Train (or resume) the fold, predict its validation clips and the test set, write its folder.

    Runs under the experiment's strategy, dtype policy, XLA setting and op
    determinism (:func:`pipeline.distribute.experiment_runtime`).

    Returns (OOF DataFrame ``id, fold, <targets>, <pred columns>`` in cache order,
    test DataFrame ``id, <pred columns>`` of this fold's model or None without a test set);
    predictions are float64 so that the written files round-trip exactly.
    """
    from pipeline import distribute

    with distribute.experiment_runtime(job.train, name=job.name) as rt:
        return _run(job, rt)


def _run(job: FoldJob, rt) -> Tuple[pd.DataFrame, Optional[pd.DataFrame]]:
    import keras

    from pipeline.distribute import prediction_model
    from pipeline.schema import FOLD_STRATEGIES, MODELS
    from pipeline.predict import predict_examples
    from pipeline.pseudo import with_unknown_filled
    from pipeline.cache.read import FeatureCache, labelled
    from pipeline.memory import release_freed_memory
    from pipeline.train import save_model

    strategy = FOLD_STRATEGIES[job.strategy].load()()
    cache = FeatureCache(job.cache_dir)
    k, targets = job.fold, list(job.targets)
    fold_dir = layout.fold_dir(job.exp_dir, k)
    io.makedirs(fold_dir)
    batch = rt.global_batch(job.train.batch_size)  # train.batch_size is per replica
    job, n_filled = with_unknown_filled(job)  # on: unknown - the teacher's fold-k model fills training rows
    # The model's registry entry decides how the fold trains: epoch by epoch (Keras) or one fit (scikit-learn).
    if MODELS[job.model.name].kind == "sklearn":
        from pipeline.train_classical import fit_fold, save_classical

        result = fit_fold(job, cache, batch_size=batch)
        predictor, model_file, save = result.model, layout.CLASSICAL_MODEL, save_classical
        pseudo_examples = 0  # config_checks refuses pseudo-labels for a classical student
    else:
        result, pseudo_examples = _train_keras(job, rt, strategy, cache, batch, fold_dir)
        predictor, model_file, save = prediction_model(result.model, rt), layout.MODEL, save_model

    release_freed_memory()  # predictions start from what training still holds, not from its high-water mark
    predict_started = time.time()
    windows = strategy.windows(job, cache.shape)
    pred_cols = layout.prediction_columns(targets, job.task)
    valid = labelled(cache.dataset("train"), job.valid_ids, job.valid_targets).map(lambda i, x, y: (i, x))
    got_ids, preds = predict_examples(predictor, valid, batch_size=batch,
                                      extra_windows=strategy.extra_windows(cache, "train"), **windows)
    row_of = {clip: n for n, clip in enumerate(job.valid_ids)}
    oof = pd.DataFrame({"id": got_ids, "fold": k})
    oof = oof.join(pd.DataFrame(job.valid_targets[[row_of[i] for i in got_ids]], columns=targets))
    # float64 from here on: the fold files then round-trip exactly (io.write_csv), so a resumed run
    # re-reads the very values an uninterrupted run keeps in memory and averages them the same way.
    oof[pred_cols] = preds.astype(np.float64)
    score = strategy.score(oof[targets].to_numpy(), preds)
    if not np.isfinite(score):  # never a fold folder (or done.json) with a NaN score
        raise TrainingError(f"fold {k + 1}/{job.n_folds}: the validation {strategy.metric.upper()} is undefined "
                            f"(NaN): {undefined_because(job.task, targets, oof[targets].to_numpy())}; check "
                            f"folds.n_splits, data.group_column and the audio skipped (run.log)")
    io.write_csv(layout.fold_file(job.exp_dir, k, layout.OOF), oof)
    test = None
    if job.test_ids:
        t_ids, t_preds = predict_examples(predictor, cache.dataset("test"), batch_size=batch,
                                          extra_windows=strategy.extra_windows(cache, "test"), **windows)
        test = pd.DataFrame({"id": t_ids})
        test[pred_cols] = t_preds.astype(np.float64)
        io.write_csv(layout.fold_file(job.exp_dir, k, layout.TEST), test)

    predict_seconds = time.time() - predict_started
    save(result.model, layout.fold_file(job.exp_dir, k, model_file))
    io.write_csv(layout.fold_file(job.exp_dir, k, layout.HISTORY), result.history)
    done = {"fold": k, strategy.metric: score, "metric": strategy.metric, "score": score,
            "epochs": result.epochs, "best_epoch": result.best_epoch, "best": result.best,
            "seconds": round(result.seconds, 2), "predict_seconds": round(predict_seconds, 2),
            "n_train": len(job.train_ids), "n_valid": len(job.valid_ids), "n_test": len(job.test_ids)}
    if job.pseudo is not None:
        done["pseudo"] = {"teacher": job.pseudo.teacher, "test_examples": pseudo_examples,
                          "unknown_filled": n_filled}
    io.write_json(layout.fold_file(job.exp_dir, k, layout.DONE), done)
    io.rmtree(layout.fold_file(job.exp_dir, k, layout.STATE))
    log.info("%s fold %d/%d: %s %.4f, %d epochs (best %d), %.0f s", job.name, k + 1, job.n_folds,
             strategy.metric.upper(), score, result.epochs, result.best_epoch, result.seconds)
    keras.backend.clear_session(free_memory=True)
    release_freed_memory()
    return oof, test


def _train_keras(job: FoldJob, rt, strategy, cache, batch: int, fold_dir: str):
    """Train (or resume) a Keras family's fold model epoch by epoch.

    Returns (:func:`pipeline.train.train_fold`'s result, the number of pseudo-labelled test examples trained on).
    """
    from pipeline.losses import make_loss
    from pipeline.models import sed
    from pipeline.models.build import build_model
    from pipeline.models.heads import prior_bias
    from pipeline.schedules import make_optimizer, make_schedule
    from pipeline.train import train_fold

    targets = list(job.targets)
    data = strategy.fold_data(job, cache, batch, rt, job.in_memory)
    input_shape = strategy.input_shape(job, cache.shape)
    bias = prior_bias(strategy.bias_targets(job.train_targets), job.task)

    def build():
        model = build_model(job.model.name, job.model.params, input_shape=input_shape, n_outputs=len(targets),
                            task=job.task, output_bias=bias)
        if isinstance(model.output, dict):
            # SED: the clipwise output (and with framewise targets the framewise one) is trained and saved.
            model = sed.training_view(model, framewise=strategy.framewise(job))
        return model

    def compile_model(model):
        schedule = make_schedule(job.schedule.name, job.schedule.params, learning_rate=job.train.learning_rate,
                                 steps_per_epoch=data.train_steps, epochs=job.train.epochs)
        model.compile(optimizer=make_optimizer(job.train, schedule),
                      loss=make_loss(job.loss.name, job.loss.params, job.task),
                      metrics=strategy.metrics(job, job.task), jit_compile=rt.jit_compile)
        # Built now, not inside the first traced training step: variables created there make TensorFlow trace
        # the whole step a second time (seconds per fold).
        model.optimizer.build(model.trainable_variables)

    result = train_fold(build=build, compile_model=compile_model, train_data=data.train_data,
                        valid_data=data.valid_batches, train_steps=data.train_steps, valid_steps=data.valid_steps,
                        fold_dir=fold_dir, fold=job.fold, epochs=job.train.epochs, patience=job.train.patience,
                        monitor=job.train.monitor, seed=job.train.seed, strategy=rt.strategy, swa=job.train.swa,
                        progress=layout.fold_file(job.exp_dir, job.fold, layout.PROGRESS) if job.progress else None)
    return result, data.pseudo_examples


def finished_fold(exp_dir: str, k: int, with_test: bool) -> Optional[Tuple[pd.DataFrame, Optional[pd.DataFrame]]]:
    """The saved (OOF, test or None) predictions of fold ``k`` if it finished in an earlier run (``done.json``)."""
    if not io.isfile(layout.fold_file(exp_dir, k, layout.DONE)):
        return None
    oof = io.read_csv(layout.fold_file(exp_dir, k, layout.OOF), dtype={"id": str})
    test = io.read_csv(layout.fold_file(exp_dir, k, layout.TEST), dtype={"id": str}) if with_test else None
    return oof, test


def undefined_because(task: str, targets, y: np.ndarray) -> str:
    """Why a fold's score of targets ``y`` [n, C] (NaN: unknown) is undefined: what its validation clips hold."""
    y = np.nan_to_num(np.asarray(y, dtype=float), nan=0.0) > 0.5
    if task == "binary":
        return f"its {len(y)} validation clips hold {int(y.sum())} positive and {int((~y).sum())} negative"
    if task == "multiclass":
        held = sorted({str(targets[i]) for i in y.argmax(axis=1)})
        return f"its {len(y)} validation clips hold the classes {held} only"
    return f"its {len(y)} validation clips hold {int(y.sum())} positive labels"
