"""Pseudo-labels and distillation with honest CV: a student's fold k learns only from its teacher's fold-k model.

An experiment with ``pseudo: {teacher: T, ...}`` (a student) trains each fold k
on extra targets made by the teacher experiment T's fold-k model - the model
that never saw fold k's validation clips (T and the student share the data and
the fold table; :func:`pipeline.config_checks.check_teachers`). So nothing
derived from a validation clip's label reaches the model that is scored on it:

* ``on: [test]`` (clip data): the teacher's fold-k test predictions
  (``output/T/fold<k>/test.csv``) make the test clips extra training examples of
  the student's fold k (:func:`test_examples`), each with sample weight ``weight``.
  Test clips are never validation examples and never scored.
* ``on: [unknown]`` (rfcx data with ``unknown: mask``): the teacher's fold-k
  model (``output/T/fold<k>/model.keras``) predicts fold k's *training*
  recordings window by window through the prediction stage with the teacher's
  own windows (:func:`predict_training`); each window's prediction fills the
  unknown (NaN) labels of the frames nearest its centre (:func:`fill_unknown`,
  :func:`frame_segments`), so a training crop learns what the teacher saw in
  that part of the recording, not the recording's maximum. Known labels are
  never overwritten; validation recordings never get pseudo-labels.

``soft`` keeps the teacher's probabilities as targets; ``hard`` turns them into
0/1 (:func:`hard_targets`) and keeps only confident ones. A naive scheme - one
teacher trained on every clip labelling what every student fold trains on -
would carry fold k's validation labels into fold k's training and inflate the
CV (``tests/test_pseudo.py`` shows both).

A student runs only after its teacher finished on the current config
(:func:`check_teacher`), and reads only the teacher's finished fold files.
"""

from __future__ import annotations

import logging
from typing import Optional, Tuple

import numpy as np

from pipeline import io, layout
from pipeline.errors import DataError, QueueError
from pipeline.status import DONE, FAILED, read_status

log = logging.getLogger(__name__)


class TeacherError(QueueError):
    """A student cannot run: its teacher has not finished (or failed) on its current config."""


def check_teacher(exp, teacher_dir: str) -> None:
    """Raise :class:`TeacherError` naming the teacher unless it finished on its current config.

    exp : the student (:class:`pipeline.config.Experiment` with ``teacher`` resolved); teacher_dir : the
    teacher's output folder. Every fold's ``done.json`` must be there: the student reads those files.
    """
    teacher = exp.teacher
    status = read_status(teacher_dir)
    if status.get("state") != DONE or status.get("config_hash") != teacher.config_hash():
        why = (f"it failed: {status.get('error')}" if status.get("state") == FAILED
               else "it has not finished on its current config" if status else "it has not run")
        raise TeacherError(f"pseudo.teacher: the teacher {teacher.name!r} of {exp.name!r} is not finished ({why}); "
                           f"run it first (it runs before its students in the same queue)")
    missing = [k for k in range(teacher.folds.n_splits) if not io.isfile(layout.fold_file(teacher_dir, k, layout.DONE))]
    if missing:
        raise TeacherError(f"pseudo.teacher: the teacher {teacher.name!r} of {exp.name!r} lacks finished folds "
                           f"{missing} in {teacher_dir}; rerun it with --force --only {teacher.name}")


def hard_targets(p: np.ndarray, task: str, threshold: float) -> np.ndarray:
    """Teacher probabilities [n, C] -> 0/1 targets [n, C] float32, NaN where the teacher is not confident.

    binary / multilabel: per label 1 if p >= 0.5 else 0, confident when max(p, 1 - p) >= threshold.
    multiclass: one-hot of the most probable class, confident when its probability >= threshold
    (the whole row then, else the whole row is NaN).
    """
    p = np.asarray(p, np.float64)
    if task == "multiclass":
        onehot = np.eye(p.shape[1])[p.argmax(1)]
        confident = np.repeat(p.max(1, keepdims=True) >= threshold, p.shape[1], axis=1)
        return np.where(confident, onehot, np.nan).astype(np.float32)
    return np.where(np.maximum(p, 1.0 - p) >= threshold, (p >= 0.5).astype(np.float64), np.nan).astype(np.float32)


def pseudo_targets(p: np.ndarray, settings, task: str) -> np.ndarray:
    """The student's targets [n, C] float32 from teacher probabilities [n, C] (``settings``: schema.PseudoSettings)."""
    if settings.mode == "hard":
        return hard_targets(p, task, settings.threshold)
    return np.asarray(p, np.float32)


def test_examples(job) -> Tuple[Tuple[str, ...], np.ndarray, np.ndarray]:
    """The pseudo-labelled test clips of the student's fold ``job.fold``: (ids, targets [n, C], weights [n]).

    Read from the teacher's fold-k test predictions only. ``hard``: a clip with any label below
    ``threshold`` confidence is dropped (a clip-level example has no unknown labels to mask).
    """
    path = layout.fold_file(job.teacher_dir, job.fold, layout.TEST)
    try:
        table = io.read_csv(path, dtype={"id": str})
        cols = layout.prediction_columns(list(job.targets), job.task)
        p = table.set_index("id").loc[[i for i in job.test_ids if i in set(table["id"])], cols]
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{path}: the teacher's fold-{job.fold} test predictions are unreadable ({err}); rerun the "
                        f"teacher") from None
    targets = pseudo_targets(p.to_numpy(np.float64), job.pseudo, job.task)
    keep = ~np.isnan(targets).any(axis=1)
    ids = tuple(str(i) for i, k in zip(p.index, keep) if k)
    return ids, targets[keep], np.full(int(keep.sum()), job.pseudo.weight, np.float32)


def predict_training(job) -> Tuple[np.ndarray, np.ndarray]:
    """The teacher's fold-k model's window predictions of the student's fold-k training recordings.

    Through :func:`pipeline.predict.predict_windows` with the teacher's windows (``job.teacher_windows``,
    test-time views included) on the teacher's feature cache (``job.teacher_cache_dir``): the windows the
    teacher's own fold job predicts, before they are combined. Returns (window centres in seconds [W],
    predictions [n_train, W, C] float32 in the order of ``job.train_ids``).
    """
    import keras

    from pipeline.cache.read import FeatureCache, labelled
    from pipeline.predict import predict_windows

    model = keras.models.load_model(layout.fold_file(job.teacher_dir, job.fold, layout.MODEL), compile=False)
    cache = FeatureCache(job.teacher_cache_dir)
    rows = np.zeros((len(job.train_ids), 1), np.float32)
    examples = labelled(cache.dataset("train"), job.train_ids, rows).map(lambda i, x, y: (i, x))
    w = job.teacher_windows
    ids, starts, preds = predict_windows(model, examples, batch_size=job.train.batch_size, window=w["window"],
                                         hop=w["hop"], views=w["views"])
    policy = keras.config.dtype_policy()  # the student's precision: clear_session resets it to float32
    keras.backend.clear_session(free_memory=True)
    keras.config.set_dtype_policy(policy)
    row_of = {clip: n for n, clip in enumerate(ids)}
    missing = [i for i in job.train_ids if i not in row_of]
    if missing:
        raise DataError(f"the teacher's feature cache {job.teacher_cache_dir} lacks {len(missing)} training "
                        f"examples of fold {job.fold} (e.g. {missing[0]!r}); rerun the teacher")
    centres = (np.asarray(starts, np.float64) + (w["window"] - 1) / 2.0) * job.teacher_frame_seconds
    return centres, preds[[row_of[i] for i in job.train_ids]]


def fill_unknown(labels: np.ndarray, targets: np.ndarray, pseudo: np.ndarray) -> Tuple[np.ndarray, np.ndarray, int]:
    """Window pseudo-labels for the unknown labels of training recordings; known labels stay as they are.

    labels : [n, L] the crops strategy's label rows, whose first C columns are the frame defaults (0 for a
    species known to be absent, NaN for an unknown one and for a tp species outside its boxes);
    targets : [n, C] recording-level targets (an unknown label is 0 there); pseudo : [n, W, C] the
    teacher's per-window targets (NaN: no pseudo-label, e.g. ``hard`` and not confident).
    A label is unknown when its frame default is NaN and it is not a known positive (target 1).
    Returns (labels [n, L + W * C]: the rows with the window values appended, NaN where the label is
    known - :func:`pipeline.crops.crop_examples` puts them on the frames of each window's segment -,
    targets with each filled label's largest window value, number of labels filled).
    """
    c = targets.shape[1]
    n, w = pseudo.shape[:2]
    with np.errstate(invalid="ignore"):
        unknown = np.isnan(labels[:, :c]) & ~(targets >= 0.5)
    values = np.where(unknown[:, None, :], pseudo, np.nan).astype(np.float32)  # [n, W, C]
    filled = unknown & ~np.isnan(values).all(axis=1)
    top = np.where(np.isnan(values), -np.inf, values).max(axis=1) if w else np.zeros_like(targets)
    targets = np.where(filled, top, targets).astype(np.float32)
    labels = np.concatenate([labels, values.reshape(n, w * c)], axis=1).astype(np.float32)
    return labels, targets, int(filled.sum())


def frame_segments(n_frames: int, frame_seconds: float, centres: np.ndarray) -> np.ndarray:
    """For each of ``n_frames`` frames (frame i centred at ``i * frame_seconds``) the index of the nearest window
    centre (seconds, ascending): int32 [n_frames]. Each frame takes its pseudo-labels from that window."""
    times = np.arange(n_frames) * frame_seconds
    return np.abs(times[:, None] - np.asarray(centres)[None, :]).argmin(axis=1).astype(np.int32)


def with_unknown_filled(job):
    """``(job, n)``: ``job`` with its training rows' unknown labels filled window by window from the teacher's
    fold-k model (``on: unknown``; :func:`fill_unknown`) and the number of labels filled; ``(job, 0)`` otherwise.

    The filled job carries the windows' centres (``pseudo_centres``, seconds) for the crops strategy.
    Deterministic (inference only), so a resumed fold trains on the same rows as before it was killed.
    """
    import dataclasses

    if job.pseudo is None or "unknown" not in job.pseudo.on:
        return job, 0
    centres, preds = predict_training(job)
    n, w, c = preds.shape
    pseudo = pseudo_targets(preds.reshape(n * w, c), job.pseudo, job.task).reshape(n, w, c)
    labels, targets, filled = fill_unknown(job.train_labels, job.train_targets, pseudo)
    log.info("%s fold %d: %d unknown labels of %d training recordings filled by %s's fold-%d model, window by "
             "window (%d windows)", job.name, job.fold, filled, len(job.train_ids), job.pseudo.teacher, job.fold, w)
    return dataclasses.replace(job, train_labels=labels, train_targets=targets,
                               pseudo_centres=tuple(float(t) for t in centres)), filled


def teacher_fields(exp, teacher_dir: Optional[str], teacher_cache, strategy) -> dict:
    """The :class:`pipeline.fold_job.FoldJob` fields of a student (none without ``pseudo``: the defaults, off).

    teacher_cache : the teacher's FeatureCache (``on: unknown``) or None; strategy : the fold strategy,
    whose windows for the teacher's settings are the teacher fold job's windows.
    """
    if exp.pseudo is None:
        return {}
    fields = {"pseudo": exp.pseudo, "teacher_dir": teacher_dir}
    if teacher_cache is not None:
        teacher = exp.teacher
        fields.update(teacher_cache_dir=teacher_cache.folder,
                      teacher_windows=strategy.windows(teacher, teacher_cache.shape),
                      teacher_frame_seconds=teacher.features.params.hop_length / teacher.audio.sample_rate)
    return fields
