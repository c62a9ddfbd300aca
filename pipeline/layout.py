"""Names the pipeline writes at the top of the output folder, kept in one place.

Experiment folders live beside these names (``output/<experiment>/``), so an
experiment may not be called like any of them. The queue validation
(:mod:`pipeline.config`) refuses them and the writers (:mod:`pipeline.queue`,
:mod:`pipeline.blend`, :mod:`pipeline.report`) take their file names from
here, so a new queue-level output cannot be forgotten in the reserved list.
Names are compared without case: on a case-insensitive filesystem (macOS,
Windows) an experiment ``OOF.csv`` would be the queue's ``oof.csv``.
"""

from __future__ import annotations

QUEUE_OOF = "oof.csv"  # output/oof.csv: every finished experiment's OOF predictions
SUMMARY = "summary.csv"  # the leaderboard
BLEND = "blend"  # output/blend/
REPORT = "report.html"
SCREENSHOT = "report.png"
QUEUE_PLOTS = "report"  # output/report/*.png, the report's queue-level figures
QUEUE_LOG = "queue.log"
CACHE = "cache"  # output/cache/features/<key>/
FOLDS = "folds"  # output/folds/<key>.csv
WORKERS = "workers"  # output/workers/<task>/ of the non-chief workers of a TF_CONFIG cluster
MARKER = ".pipeline-owned"  # in every folder the pipeline created (pipeline.ownership)
LOCK = ".queue.lock"  # the runner's lock (pipeline.lock)
PREDICT = "predict"  # output/predict/<run>/: predictions of new audio (run_queue.py --predict)
EXPORT = "export"  # output/export/<experiment>/: exported fold models (run_queue.py --export)

# Everything the queue itself writes at the top of output/.
QUEUE_LEVEL_NAMES = frozenset({QUEUE_OOF, SUMMARY, BLEND, REPORT, SCREENSHOT, QUEUE_PLOTS, QUEUE_LOG, CACHE, FOLDS,
                               WORKERS, MARKER, LOCK, PREDICT, EXPORT})

# Experiment names are also column names of output/oof.csv (beside `id` and `fold`) and the stems of the
# files above read like them in listings; both are refused too.
RESERVED_NAMES = frozenset(
    name.lower() for name in QUEUE_LEVEL_NAMES | {"id", "fold", "oof", "summary", "queue"}
    | {"submission", "skipped"}  # stems of the files beside <experiment>.csv in output/predict/<run>/
)

# Longest experiment name: it becomes a folder and a column name; 100 leaves room under the usual 255-byte
# file-name limit for the temporary names of atomic writes (`.<name>.<random>.tmp`).
MAX_NAME_LENGTH = 100


def is_reserved(name: str) -> bool:
    """Whether ``name`` (as an experiment name) would collide with a queue-level output, ignoring case."""
    return name.lower() in RESERVED_NAMES


# ----------------------------------------------------------------------------- output/<experiment>/
# Every file name inside an experiment folder and its fold folders. Nothing outside this
# module spells them; writers and readers ask for the path.

CONFIG = "config.yaml"  # the resolved experiment, as run
STATUS = "status.json"  # state, stage timings, data identity
RUN_LOG = "run.log"
CLIPS = "data_clips.csv"  # per-clip identity of the data the experiment ran on
OOF = "oof.csv"  # id, fold, <targets>, pred columns (experiment and fold level)
TEST = "test.csv"  # id, pred columns (experiment: mean over folds; fold: that fold's model)
SCORES = "scores.json"
SUBMISSION = "submission.csv"
PLOTS = "plots"  # output/<experiment>/plots/*.png

FOLD_PREFIX = "fold"  # output/<experiment>/fold<k>/
DONE = "done.json"  # a fold's commit point: written last, after its predictions and model
MODEL = "model.keras"
HISTORY = "history.csv"
STATE = "state"  # fold<k>/state/: resume checkpoints, removed when the fold is done
TENSORBOARD = "tb"
# --- classical families (kind sklearn): the fitted pipeline.models.classical.ClassicalModel, joblib-pickled
CLASSICAL_MODEL = "model.joblib"

EXPERIMENT_FILES = frozenset({CONFIG, STATUS, RUN_LOG, CLIPS, OOF, TEST, SCORES, SUBMISSION, PLOTS})
# Written only when a fold runs in a worker process (pipeline.executors.base.run_in_worker, issue 16):
PROGRESS = "progress.json"  # the job's last finished epoch, monitored metric and peak memory, for the scheduler
JOB_LOG = "job.log"  # the job's log (in-process jobs log to the experiment's run.log)
FOLD_FILES = frozenset({DONE, OOF, TEST, MODEL, HISTORY, STATE, TENSORBOARD, PROGRESS, JOB_LOG, CLASSICAL_MODEL})

PRED = "pred"  # prediction columns of experiment and fold files: ``pred`` or ``pred:<class>``


def experiment_dir(output: str, name: str) -> str:
    """``output/<name>/``."""
    return _join(output, name)


def experiment_file(exp_dir: str, name: str) -> str:
    """A file of the experiment folder; ``name`` is one of :data:`EXPERIMENT_FILES`."""
    return _join(exp_dir, _one_of(name, EXPERIMENT_FILES, "an experiment output"))


def fold_dir(exp_dir: str, k: int) -> str:
    """``output/<experiment>/fold<k>/``."""
    return _join(exp_dir, f"{FOLD_PREFIX}{int(k)}")


def fold_file(exp_dir: str, k: int, name: str) -> str:
    """A file of fold ``k``; ``name`` is one of :data:`FOLD_FILES`."""
    return _join(fold_dir(exp_dir, k), _one_of(name, FOLD_FILES, "a fold output"))


def fold_index(folder_name: str):
    """``k`` for a folder named ``fold<k>``, else None."""
    rest = folder_name[len(FOLD_PREFIX):]
    return int(rest) if folder_name.startswith(FOLD_PREFIX) and rest.isdigit() else None


def prediction_columns(targets, task: str, prefix: str = PRED) -> list:
    """Prediction column names: ``pred`` for binary tasks, ``pred:<class>`` otherwise.

    With ``prefix`` an experiment's name these are its columns in ``output/oof.csv``
    (``<experiment>`` or ``<experiment>:<class>``). Targets never take the names
    ``pred`` or ``pred:...`` (:func:`pipeline.data.base.reserved_targets`), so an
    experiment's own files cannot mix labels and predictions.
    """
    if task == "binary":
        return [prefix]
    return [f"{prefix}:{t}" for t in targets]


def prediction_columns_of(columns, prefix: str = PRED) -> list:
    """The prediction columns among ``columns`` of an experiment or fold file (``pred``, ``pred:<class>``)."""
    return [c for c in columns if c == prefix or str(c).startswith(prefix + ":")]


# ----------------------------------------------------------------------------- fold<k>/state/ (pipeline.train)
# The resume checkpoints of a fold in training; state.json, written last after every epoch, names the current ones.

STATE_FILE = "state.json"


def checkpoint_name(epoch: int) -> str:
    """The full model (with optimizer state) after ``epoch`` (1-based), inside fold<k>/state/."""
    return f"epoch{int(epoch)}.keras"


def best_weights_name(epoch: int) -> str:
    """The best weights so far, reached in ``epoch`` (1-based), inside fold<k>/state/."""
    return f"best-epoch{int(epoch)}.weights.h5"


def averaged_weights_name(epoch: int) -> str:
    """``train.swa``: the weights after ``epoch`` (1-based) kept for averaging, inside fold<k>/state/ (issue 17)."""
    return f"swa-epoch{int(epoch)}.weights.h5"


def _one_of(name: str, names, what: str) -> str:
    """``name``, when it is one of ``names`` (a writer asking for a name this module does not define is a bug)."""
    if name not in names:
        raise ValueError(f"{name!r} is not {what}; one of {sorted(names)}")
    return name


def _join(folder: str, name: str) -> str:
    # gs:// paths join like local ones; os.path.join would do too, but keep the separator explicit.
    return folder.rstrip("/") + "/" + name if folder else name


# ----------------------------------------------------------------------------- output/: blend, figures, cache, folds
# The rest of output/ by path: what the queue, the blend and the report write and read beside the
# experiment folders. Like the names above, spelled here only.

WEIGHTS = "weights.json"  # blend/: the blend's weights (or stacker coefficients)
BLEND_ERROR = "error.json"  # blend/: why the blend was refused, instead of a blend
BLEND_FILES = (OOF, TEST, WEIGHTS, SCORES, SUBMISSION)  # a blend (scores.json is written last: see pipeline.blend)
BLEND_FOLDER_FILES = frozenset(BLEND_FILES) | {BLEND_ERROR}  # everything the pipeline writes into blend/

# Report figures: output/report/<name> (queue level) and output/<experiment>/plots/<name>.
SCORES_FIGURE = "scores.png"
CORRELATION_FIGURE = "correlation.png"
ROC_FIGURE = "roc.png"
PRECISION_FIGURE = "average_precision.png"
CONFUSION_FIGURE = "confusion.png"
TRAINING_FIGURE = "training.png"
EXAMPLES_FIGURE = "examples.png"
FIGURES = frozenset({SCORES_FIGURE, CORRELATION_FIGURE, ROC_FIGURE, PRECISION_FIGURE, CONFUSION_FIGURE,
                     TRAINING_FIGURE, EXAMPLES_FIGURE})

FEATURES = "features"  # output/cache/features/<key>/
CACHE_MANIFEST = "manifest.json"  # a feature cache's index, written last: a cache without it is incomplete
FOLD_TABLE_SUFFIX = ".csv"  # output/folds/<key>.csv

QUEUE_FILES = frozenset({QUEUE_OOF, SUMMARY, REPORT, SCREENSHOT, QUEUE_LOG})


def queue_file(output: str, name: str) -> str:
    """A file at the top of the output folder; ``name`` is one of :data:`QUEUE_FILES`."""
    return _join(output, _one_of(name, QUEUE_FILES, "a queue-level output file"))


def blend_dir(output: str) -> str:
    """``output/blend/``."""
    return _join(output, BLEND)


def blend_file(blend_folder: str, name: str) -> str:
    """A file of the blend folder (:func:`blend_dir`); ``name`` is one of :data:`BLEND_FOLDER_FILES`."""
    return _join(blend_folder, _one_of(name, BLEND_FOLDER_FILES, "a blend output"))


def queue_figure(output: str, name: str) -> str:
    """``output/report/<name>``: a figure of the whole queue; ``name`` is one of :data:`FIGURES`."""
    return _join(_join(output, QUEUE_PLOTS), _figure(name))


def experiment_figure(exp_dir: str, name: str) -> str:
    """``output/<experiment>/plots/<name>``: a figure of one experiment; ``name`` is one of :data:`FIGURES`."""
    return _join(experiment_file(exp_dir, PLOTS), _figure(name))


def _figure(name: str) -> str:
    return _one_of(name, FIGURES, "a report figure")


def cache_root(output: str) -> str:
    """``output/cache/features/``: one folder per feature cache (``<key>/``)."""
    return _join(_join(output, CACHE), FEATURES)


def folds_dir(output: str) -> str:
    """``output/folds/``: the fold tables shared by the experiments."""
    return _join(output, FOLDS)


def fold_table(folds_folder: str, key: str) -> str:
    """``output/folds/<key>.csv``."""
    return _join(folds_folder, key + FOLD_TABLE_SUFFIX)


def queue_oof_column(column: str, experiment: str) -> str:
    """An experiment's prediction column as named in ``output/oof.csv``: ``pred`` -> ``<experiment>``,
    ``pred:<class>`` -> ``<experiment>:<class>`` (the names :func:`prediction_columns` gives with that prefix)."""
    return experiment + column[len(PRED):]


def queue_column_clash(name: str, targets, task: str) -> list:
    """The columns experiment ``name`` would write into ``output/oof.csv`` that its labels already use.

    ``output/oof.csv`` holds ``id, fold, <targets>`` beside ``<experiment>`` or
    ``<experiment>:<class>``: an experiment named like a target (``label``), or
    whose ``name:class`` spells a class (a class named ``a:b`` and an experiment
    ``a`` with a class ``b``), would overwrite the labels with its predictions.
    A multiclass experiment named like a class (``dog``) is refused too: readers
    of that table (the report) take ``dog`` and ``dog:<class>`` for one
    experiment's columns.
    """
    columns = set(prediction_columns(targets, task, prefix=name)) | {name}
    return sorted(columns & ({"id", "fold"} | set(map(str, targets))))


# ----------------------------------------------------------------------------- output/predict/<run>/ (pipeline.predict_new)
# Predictions of new audio by the finished experiments: <experiment>.csv and blend.csv (``id, <pred columns>``),
# the submission and the files that could not be used. Experiment names never spell the other stems (reserved).

PREDICT_SUBMISSION = "submission.csv"
PREDICT_SKIPPED = "skipped.csv"  # id, path, reason: the files that could not be decoded
PREDICT_LOG = "predict.log"
PREDICT_FILES = frozenset({PREDICT_SUBMISSION, PREDICT_SKIPPED, PREDICT_LOG})


def predict_root(output: str) -> str:
    """``output/predict/``: one folder per ``--predict`` run."""
    return _join(output, PREDICT)


def predict_run_dir(output: str, run: str) -> str:
    """``output/predict/<run>/``."""
    return _join(predict_root(output), run)


def predict_file(run_dir: str, name: str) -> str:
    """A file of a predict run folder; ``name`` is one of :data:`PREDICT_FILES`."""
    return _join(run_dir, _one_of(name, PREDICT_FILES, "a predict output"))


def predict_predictions(run_dir: str, name: str) -> str:
    """``<run>/<name>.csv``: the predictions of experiment ``name``, or of the blend for ``name`` = :data:`BLEND`."""
    return _join(run_dir, name + ".csv")


# ----------------------------------------------------------------------------- output/export/ (pipeline.export)
# Exported fold models, runnable without the queue file or the training code (pipeline.exported):
# export/export.json (the experiments, the blend), export/<experiment>/export.json (feature, window and class
# settings, file list; written last: a folder without it is incomplete), fold<k>.savedmodel/ and fold<k>.tflite
# per fold, folds.savedmodel/ and folds.tflite: every fold in one model, outputs side by side [B, folds * C].

EXPORT_MANIFEST = "export.json"
EXPORT_VERSION = 2  # of export.json; 2: with the sha256 of the files pipeline.exported loads (1: none; both read)
EXPORT_FOLDS = "folds"


def export_root(output: str) -> str:
    """``output/export/``."""
    return _join(output, EXPORT)


def export_file(folder: str, name: str) -> str:
    """``export.json`` of the export root or of an experiment's export folder."""
    return _join(folder, _one_of(name, {EXPORT_MANIFEST}, "an export manifest"))


def export_model(exp_export: str, k, kind: str) -> str:
    """Fold ``k``'s (or, for ``k`` = :data:`EXPORT_FOLDS`, all folds') exported model: ``kind`` ``savedmodel``
    (a folder), ``tflite``, or ``joblib`` (a classical family's fitted fold model, copied as it is)."""
    stem = EXPORT_FOLDS if k == EXPORT_FOLDS else f"{FOLD_PREFIX}{int(k)}"
    return _join(exp_export, f"{stem}.{_one_of(kind, {'savedmodel', 'tflite', 'joblib'}, 'an export format')}")
