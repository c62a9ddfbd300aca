"""``run_queue.py QUEUE --export``: the finished experiments' fold models as SavedModels and TFLite models.

Per finished experiment, ``output/export/<experiment>/`` holds per fold a
SavedModel and a TFLite model of its clipwise output [B, C]; ``folds.*``, every
fold in one model whose outputs sit side by side [B, folds * C], which is what
:mod:`pipeline.exported` runs (one interpreter call per batch of windows for all
folds); and ``export.json`` (written last) with everything needed to predict
new audio as ``--predict`` does: data source, audio, feature and prediction
settings, input shape, windows, class names, batch size, the file list and
the sha256 of each model file :mod:`pipeline.exported` loads (``checksums``).
The fold average is taken in :mod:`pipeline.exported` after each fold's
windows are combined (max or mean over windows, then the mean over folds), as
the training-time test predictions are; averaging inside the graph would put
the mean before the max. ``output/export/export.json`` names the experiments
and holds the queue's blend (its ``weights.json``) when all of its
experiments are exported, and the sha256 of each experiment's
``export.json``: a copy of the export (a Kaggle dataset upload) that lost or
changed a byte is refused with a message naming the file.

A classical family (scikit-learn, no TensorFlow graph) is exported as its
fitted fold models (``fold<k>.joblib``), which :mod:`pipeline.exported` runs
side by side in the same way.

Every Keras model of this pipeline converts with TFLite's builtin ops; a model that
needs TensorFlow ops is converted with ``SELECT_TF_OPS`` as well and its
``export.json`` says so (``select_tf_ops``), since its interpreter then needs
the Flex delegate (the full ``tensorflow`` package, not ``tflite-runtime``).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
from typing import List, Optional

from pipeline import io, layout, ownership, schema
from pipeline.config import Experiment, Queue
from pipeline.errors import PipelineError

log = logging.getLogger("pipeline")

def clipwise_model(model, name: str):
    """``model`` (a fold model) as a Keras model of its clipwise output [B, C] (a packed SED output [B, 1 + T, C]
    gives its first row, as :func:`pipeline.predict.predict_examples` reads it).

    The fold model is called in inference mode explicitly: the export traces the wrapper without a
    ``training`` value, and Keras 3.6 then lets a layer's own default decide for every layer after it
    (``Resizing`` defaults to ``training=True``, so Xception's backbone normalised each batch by its own
    statistics in the export)."""
    import keras

    x = keras.Input(shape=model.inputs[0].shape[1:], name="x")
    y = model(x, training=False)
    if len(y.shape) == 3:
        y = keras.ops.take(y, 0, axis=1)
    return keras.Model(x, y, name=name)


def all_folds_model(models: list):
    """The fold models in one Keras model: input [B, T, ...] -> their clipwise outputs side by side [B, K * C]."""
    import keras

    x = keras.Input(shape=models[0].inputs[0].shape[1:], name="x")
    outs = []
    for k, m in enumerate(models):
        m.name = f"fold{k}"  # nested models need distinct names
        y = m(x, training=False)  # inference mode, as in clipwise_model
        outs.append(keras.ops.take(y, 0, axis=1) if len(y.shape) == 3 else y)
    return keras.Model(x, keras.layers.Concatenate(axis=-1, name="folds")(outs) if len(outs) > 1 else outs[0],
                       name="all_folds")


def save_exported(model, saved_model: str, tflite: str) -> bool:
    """Write ``model`` as a SavedModel folder and a TFLite file, both checked against ``model``
    (:func:`check_exported`); returns whether TFLite needed SELECT_TF_OPS."""
    import tensorflow as tf

    model.export(saved_model, format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    select = False
    try:
        flat = converter.convert()
    except Exception as err:  # noqa: BLE001 - the converter raises its own ConverterError family
        log.info("%s: TFLite builtin ops do not cover the model (%s); converting with SELECT_TF_OPS", tflite,
                 str(err).splitlines()[0])
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
        flat, select = converter.convert(), True
    with io.atomic_path(tflite) as tmp:
        with open(tmp, "wb") as f:
            f.write(flat)
        check_exported(model, saved_model, tmp, name=tflite)  # a TFLite file that fails is never renamed in
    return select


# Largest difference allowed between an exported model's outputs (probabilities) and its Keras model's on the
# same inputs; float32 kernels of TFLite and TensorFlow differ by about 1e-6 on the pipeline's models.
EXPORT_TOLERANCE = 1e-4
CHECK_EXAMPLES = 3


class ExportMismatch(RuntimeError):
    """An exported model does not compute what its Keras model computes: a bug in the export, not a user's."""


def check_exported(model, saved_model: str, tflite: str, *, name: str) -> float:
    """The largest difference between ``model``'s inference-mode outputs and the SavedModel's and the TFLite
    model's on the same inputs (a fixed batch of standard-normal inputs); raises :class:`ExportMismatch` above
    :data:`EXPORT_TOLERANCE`. Inference differences in the graph (batch statistics instead of the moving ones,
    dropout left on) show on any inputs."""
    import numpy as np
    import tensorflow as tf

    from pipeline.exported import TFLiteModel

    x = np.random.default_rng(0).standard_normal((CHECK_EXAMPLES, *model.inputs[0].shape[1:])).astype("float32")
    expected = np.asarray(model.predict_on_batch(x), np.float32)
    loaded = tf.saved_model.load(saved_model)  # held while its function runs (it references the variables)
    outputs = {"SavedModel": np.asarray(loaded.serve(tf.constant(x))),
               "TFLite": TFLiteModel(tflite, threads=1).predict_on_batch(x)}
    worst = 0.0
    for kind, got in outputs.items():
        diff = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("inf")
        if not diff <= EXPORT_TOLERANCE:  # NaN fails too
            shown = f"differ by up to {diff:.3g}" if got.shape == expected.shape else f"have shape {got.shape}"
            raise ExportMismatch(
                f"{saved_model if kind == 'SavedModel' else name}: the {kind} export does not reproduce the Keras "
                f"model: on {CHECK_EXAMPLES} test inputs its outputs {shown} (expected {expected.shape} within "
                f"{EXPORT_TOLERANCE:g}); nothing of this experiment is exported. This is a bug in the pipeline's "
                f"export of this model; run_queue.py --predict reproduces the experiment's predictions")
        worst = max(worst, diff)
    log.info("%s: the SavedModel and TFLite exports reproduce the Keras model (max difference %.2g)", name, worst)
    return worst


def export_experiment(exp: Experiment, output: str, root: str) -> dict:
    """Export ``exp``'s fold models into ``root/<experiment>/``; returns its export.json."""
    import keras

    from pipeline.features import feature_shape
    from pipeline.predict_new import fold_strategy_name, load_fold_model

    exp_dir = layout.experiment_dir(output, exp.name)
    meta = io.read_json(layout.experiment_file(exp_dir, layout.SCORES))
    folder = layout.experiment_dir(root, exp.name)
    ownership.remove_owned(folder)  # an earlier export of the experiment
    ownership.make_owned_dir(folder)
    n_samples = int(round(exp.audio.duration * exp.audio.sample_rate))
    shape = feature_shape(exp.features.name, exp.features.params, n_samples=n_samples,
                          sample_rate=exp.audio.sample_rate)
    strategy = fold_strategy_name(exp.data.name)
    windows = dict(schema.FOLD_STRATEGIES[strategy].load()().windows(exp, shape))
    views = [dataclasses.asdict(v) for v in windows.pop("views", ())]  # predict.tta in the feature's time steps
    models = [load_fold_model(exp_dir, k, exp.model.name) for k in range(exp.folds.n_splits)]
    select = []
    if schema.MODELS[exp.model.name].kind == "sklearn":
        # A classical family has no TensorFlow graph: its fitted fold models are exported as they are.
        for k in range(len(models)):
            with io.atomic_path(layout.export_model(folder, k, "joblib")) as tmp:
                with io.local_copy(layout.fold_file(exp_dir, k, layout.CLASSICAL_MODEL)) as src:
                    shutil.copyfile(src, tmp)
        files = {"joblib": [_name(folder, k, "joblib") for k in range(len(models))]}
    else:
        try:
            for k, model in enumerate(models):
                if save_exported(clipwise_model(model, f"fold{k}"), layout.export_model(folder, k, "savedmodel"),
                                 layout.export_model(folder, k, "tflite")):
                    select.append(f"fold{k}")
            if save_exported(all_folds_model(models),
                             layout.export_model(folder, layout.EXPORT_FOLDS, "savedmodel"),
                             layout.export_model(folder, layout.EXPORT_FOLDS, "tflite")):
                select.append(layout.EXPORT_FOLDS)
        except ExportMismatch:
            ownership.remove_owned(folder)  # no half of an export that would predict something else
            raise
        files = {
            "saved_models": [_name(folder, k, "savedmodel") for k in range(len(models))],
            "tflite": [_name(folder, k, "tflite") for k in range(len(models))],
            "all_folds": {"saved_model": _name(folder, layout.EXPORT_FOLDS, "savedmodel"),
                          "tflite": _name(folder, layout.EXPORT_FOLDS, "tflite")},
        }
    # The files pipeline.exported loads, by sha256: a damaged copy (a truncated upload) is refused with a message;
    # TFLite's interpreter would crash the process on it.
    loaded = files["joblib"] if "joblib" in files else [*files["tflite"], files["all_folds"]["tflite"]]
    checksums = {name: io.sha256(io.join(folder, name)) for name in loaded}
    manifest = {
        "version": layout.EXPORT_VERSION,
        "experiment": exp.name,
        "task": meta["task"],
        "targets": list(meta["targets"]),
        "submission": meta["submission"],
        "n_folds": exp.folds.n_splits,
        "data": exp.data.to_dict(),
        "audio": dataclasses.asdict(exp.audio),
        "features": exp.features.to_dict(),
        "cache": dataclasses.asdict(exp.cache),
        "predict": dataclasses.asdict(exp.predict),
        "strategy": strategy,
        "feature_shape": list(shape),
        "input_shape": [int(d) for d in models[0].inputs[0].shape[1:]],
        "windows": windows,  # frames; none for clips: the model's input, later windows from the feature cache
        "views": views,  # test-time views (pipeline.predict.View fields); [] = none
        "batch_size": exp.train.batch_size,
        "select_tf_ops": select,
        "files": files,  # TFLite / SavedModel per fold and all folds, or a classical family's joblib per fold
        "checksums": checksums,
    }
    io.write_json(layout.export_file(folder, layout.EXPORT_MANIFEST), manifest)
    keras.backend.clear_session(free_memory=True)
    log.info("%s: exported %d folds -> %s%s", exp.name, len(models), folder,
             f" (SELECT_TF_OPS: {', '.join(select)})" if select else "")
    return manifest


def _name(folder: str, k, kind: str) -> str:
    """An exported model's name inside the experiment's export folder (the manifest lists names, not paths)."""
    return layout.export_model(folder, k, kind).rsplit("/", 1)[-1]


def run_export(queue: Queue, *, only: Optional[List[str]] = None) -> int:
    """Export every finished experiment (of ``only``) and the blend to ``output/export/``. Returns the exit
    status: 0 done, 1 an experiment failed, 2 nothing finished, 3 another runner holds the output folder."""
    from pipeline import lock
    from pipeline.predict_new import finished_experiments, saved_blend

    try:
        experiments = finished_experiments(queue, only, flag="--export")
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
        root = layout.export_root(output)
        try:
            ownership.make_owned_dir(root)
        except ownership.OwnershipError as err:
            print(f"error: output: {err}", file=sys.stderr)
            return 2
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
        exported, failed = [], []
        for exp in experiments:
            try:
                export_experiment(exp, output, root)
                exported.append(exp.name)
            except (PipelineError, OSError, ValueError, ExportMismatch) as err:
                log.error("%s: not exported: %s: %s", exp.name, type(err).__name__, err)
                failed.append(exp.name)
        manifests = {name: io.sha256(layout.export_file(layout.experiment_dir(root, name), layout.EXPORT_MANIFEST))
                     for name in exported}
        io.write_json(layout.export_file(root, layout.EXPORT_MANIFEST),
                      {"version": layout.EXPORT_VERSION, "queue": queue.source, "experiments": exported,
                       "blend": saved_blend(output, exported, queue.blend.settings_hash()), "checksums": manifests})
        log.info("export: %d experiment(s) -> %s", len(exported), root)
    return 1 if failed else 0
