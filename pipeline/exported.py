"""Predict new audio with an export (``output/export/``, :mod:`pipeline.export`): no queue file, no training code.

    python -m pipeline.exported EXPORT_DIR PATH --out FOLDER [--only NAME[,NAME]]

PATH is a folder of audio or a YAML data block, as for ``run_queue.py
--predict``. Per exported experiment the files are decoded and featurised by
the feature cache's code (:func:`pipeline.cache.build.ensure_features`: numpy
features in worker processes, the same extra windows of long clips, bad files
skipped and listed) into ``FOLDER/cache/``, and its all-folds TFLite model
predicts them through the one prediction stage
(:func:`pipeline.predict.predict_examples`): windows combined per fold, then
the mean over folds. The blend saved in the export is re-applied. FOLDER
receives what a ``--predict`` run folder holds: ``<experiment>.csv``,
``blend.csv``, ``submission.csv``, ``skipped.csv``, ``predict.log``.

This module and what it imports never load Keras, the queue, the fold jobs or
the training loop (a test checks ``sys.modules`` in a fresh process); TensorFlow
is used for tf.data over the cache and the TFLite interpreter.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import List, Optional

import numpy as np
import pandas as pd

from pipeline import io, layout, ownership, schema
from pipeline.config import Component
from pipeline.errors import PipelineError

log = logging.getLogger("pipeline")


class TFLiteModel:
    """A TFLite model with the surface :func:`pipeline.predict.predict_examples` uses from a Keras model:
    ``inputs[0].shape``, ``outputs[0].shape`` and ``predict_on_batch(x [B, ...]) -> [B, ...]`` (float32)."""

    @dataclasses.dataclass(frozen=True)
    class _Port:
        shape: tuple

    def __init__(self, path: str, *, threads: Optional[int] = None):
        import tensorflow as tf

        self.interpreter = tf.lite.Interpreter(model_path=path, num_threads=threads or os.cpu_count() or 1)
        self._in = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]
        self.inputs = [self._Port(tuple(None if d < 0 else int(d) for d in self._in["shape_signature"]))]
        self.outputs = [self._Port(tuple(None if d < 0 else int(d) for d in self._out["shape_signature"]))]
        self._batch_shape = None

    def predict_on_batch(self, x) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if x.shape != self._batch_shape:  # the interpreter's tensors are sized for one batch shape at a time
            self.interpreter.resize_tensor_input(self._in["index"], x.shape)
            self.interpreter.allocate_tensors()
            self._batch_shape = x.shape
        self.interpreter.set_tensor(self._in["index"], x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._out["index"]).copy()


class ClassicalFolds:
    """A classical family's exported fold models side by side, with the surface of the all-folds TFLite model:
    ``predict_on_batch(x [B, ...]) -> [B, K * C]`` (fold 0's C columns first)."""

    def __init__(self, paths: List[str]):
        import joblib

        self.models = []
        for path in paths:  # written by run_queue.py --export from the pipeline's own fold files
            with io.local_copy(path) as local:
                self.models.append(joblib.load(local))
        first = self.models[0]
        self.inputs = first.inputs
        self.outputs = [TFLiteModel._Port((None, len(self.models) * int(first.outputs[0].shape[-1])))]

    def predict_on_batch(self, x) -> np.ndarray:
        return np.concatenate([m.predict_on_batch(x) for m in self.models], axis=1)


def _component(kind: dict, entry: dict) -> Component:
    """A component back from its ``to_dict()`` (lists back to the tuples the parameter classes hold)."""
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.items() if k != "name"}
    return Component(entry["name"], kind[entry["name"]].params(**params))


def _predict_settings(values: dict) -> schema.PredictSettings:
    """``predict`` back from the manifest: its ``tta`` views back to :class:`pipeline.schema.TtaView`."""
    tta = tuple(schema.TtaView(**v) for v in values.get("tta", ()))
    return _settings(schema.PredictSettings, {**values, "tta": tta})


def _settings(cls, values: dict):
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _damaged(path: str, what: str) -> PipelineError:
    return PipelineError(f"{path}: {what}; copy the export again, or export again with run_queue.py QUEUE --export")


def read_manifest(path: str, checksum: Optional[str] = None) -> dict:
    """An export.json: its sha256 checked against ``checksum`` (None: not checked), then parsed; PipelineError
    naming the file when it is missing, damaged, changed or of an unknown version."""
    try:
        if checksum is not None and io.sha256(path) != checksum:
            raise _damaged(path, "damaged or changed since it was exported (its sha256 is not the one the "
                                 f"export's {layout.EXPORT_MANIFEST} recorded)")
        manifest = io.read_json(path)
    except FileNotFoundError:
        raise _damaged(path, "missing") from None
    except (OSError, ValueError) as err:  # unreadable, not UTF-8, not JSON
        raise _damaged(path, f"not readable as JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise _damaged(path, "not an export manifest (expected a JSON object)")
    if manifest.get("version") not in range(1, layout.EXPORT_VERSION + 1):
        raise _damaged(path, f"export version {manifest.get('version')!r}; this pipeline reads versions 1 to "
                             f"{layout.EXPORT_VERSION}")
    if manifest["version"] > 1 and not isinstance(manifest.get("checksums"), dict):
        raise _damaged(path, "no checksums (expected an object of file names and their sha256)")
    return manifest


def listed_checksum(manifest: dict, name: str, path: str) -> Optional[str]:
    """The sha256 ``manifest`` records for its file ``name`` (at ``path``); None for a version-1 export, which
    recorded none (its files are used unchecked)."""
    if manifest["version"] == 1:
        return None
    if not isinstance(manifest["checksums"].get(name), str):
        raise _damaged(path, f"not listed in {layout.EXPORT_MANIFEST}'s checksums")
    return manifest["checksums"][name]


def verified(folder: str, manifest: dict, name: str) -> str:
    """The path of the export file ``name`` in ``folder``, after its sha256 matched the manifest's
    (PipelineError when it does not)."""
    path = os.path.join(folder, name)
    expected = listed_checksum(manifest, name, path)
    if expected is None:
        return path
    try:
        got = io.sha256(path)
    except FileNotFoundError:
        raise _damaged(path, "missing") from None
    if got != expected:
        raise _damaged(path, "damaged or changed since it was exported (sha256 "
                             f"{got[:12]}..., {layout.EXPORT_MANIFEST} says {expected[:12]}...)")
    return path


def predict_exported(exp_folder: str, dataset, out: str) -> tuple:
    """One exported experiment's predictions of ``dataset``'s test clips: (``id, <pred columns>`` averaged over
    folds, the skipped files ``[{id, path, reason}]``), as :func:`pipeline.predict_new.predict_experiment`."""
    from pipeline.cache.build import ensure_features
    from pipeline.predict import View, predict_examples

    m = read_manifest(layout.export_file(exp_folder, layout.EXPORT_MANIFEST))
    files = m["files"]  # checked before the audio is featurised
    model_files = ([verified(exp_folder, m, name) for name in files["joblib"]] if "joblib" in files
                   else verified(exp_folder, m, files["all_folds"]["tflite"]))
    audio = dataclasses.replace(_settings(schema.AudioSettings, m["audio"]), max_bad_fraction=1.0)
    cache = ensure_features(dataset, layout.cache_root(out), data=_component(schema.DATA_SOURCES, m["data"]),
                            audio=audio, features=_component(schema.FEATURES, m["features"]),
                            cache=_settings(schema.CacheSettings, m["cache"]),
                            predict=_predict_settings(m["predict"]), label=f"{m['experiment']}")
    skipped = [{"id": s["id"], "path": s["path"], "reason": s["reason"]} for s in cache.skipped]
    pred_cols = layout.prediction_columns(m["targets"], m["task"])
    if cache.count("test") == 0:
        return pd.DataFrame(columns=["id", *pred_cols]), skipped
    model = ClassicalFolds(model_files) if "joblib" in files else TFLiteModel(model_files)
    extra = cache.extra_windows("test") if m["strategy"] == "clips" else None
    ids, preds = predict_examples(model, cache.dataset("test"), batch_size=m["batch_size"], extra_windows=extra,
                                  views=tuple(View(**v) for v in m.get("views", ())), **m["windows"])
    # [n, K * C] -> [n, K, C]: each fold's windows were combined on their own; now the mean over folds.
    per_fold = preds.astype(np.float64).reshape(len(ids), m["n_folds"], len(pred_cols))
    frame = pd.DataFrame({"id": ids})
    frame[pred_cols] = per_fold.mean(axis=1)
    return frame, skipped


def run(export_dir: str, path: str, out: str, *, only: Optional[List[str]] = None) -> int:
    """Predict ``path`` with the export at ``export_dir`` into ``out``. Returns the exit status (0 done,
    1 an experiment could not predict, 2 a user's mistake found before anything was written)."""
    from pipeline.predict_new import log_to, dataset_for, new_audio, write_blend_and_submission

    root_manifest = layout.export_file(export_dir, layout.EXPORT_MANIFEST)
    try:
        if not io.isfile(root_manifest):
            raise PipelineError(f"{export_dir}: not an export (no {layout.EXPORT_MANIFEST}; made by run_queue.py "
                                f"QUEUE --export in output/{layout.EXPORT}/)")
        root = read_manifest(root_manifest)
        if (not isinstance(root.get("experiments"), list) or not all(isinstance(n, str) for n in root["experiments"])
                or not isinstance(root.get("blend"), (dict, type(None)))):
            raise _damaged(root_manifest, "not an export's root manifest (expected experiments: a list of names, "
                                          "blend: an object or null)")
        names = [n for n in root["experiments"] if only is None or n in only]
        if not names:
            raise PipelineError(f"{export_dir}: no exported experiment{' among --only' if only else ''}; exported: "
                                f"{', '.join(root['experiments']) or 'none'}")
        audio = new_audio(path)
        inside = ownership.inside_owned_problem("--out", out)
        if inside:
            raise PipelineError(inside)
        ownership.make_owned_dir(out)
    except (PipelineError, ownership.OwnershipError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    handler = log_to(layout.predict_file(out, layout.PREDICT_LOG))
    try:
        predicted, datasets, skipped, failed = {}, {}, {}, []
        for name in names:
            folder = layout.experiment_dir(export_dir, name)
            try:
                path = layout.export_file(folder, layout.EXPORT_MANIFEST)
                m = read_manifest(path, listed_checksum(root, name, path))
                datasets[name] = dataset_for(m["data"]["name"], audio, m)
                preds, bad = predict_exported(folder, datasets[name], out)
            except (PipelineError, OSError, ValueError, KeyError) as err:  # a damaged or incomplete export
                log.error("%s: not predicted: %s: %s", name, type(err).__name__, err)
                failed.append(name)
                continue
            skipped.update({(b["id"], b["reason"]): b for b in bad})
            if preds.empty:
                log.error("%s: none of the %d files could be used", name, len(audio.files))
                failed.append(name)
                continue
            io.write_csv(layout.predict_predictions(out, name), preds)
            predicted[name] = preds
            log.info("%s: %d files predicted (TFLite)", name, len(preds))
        io.write_csv(layout.predict_file(out, layout.PREDICT_SKIPPED),
                     pd.DataFrame(list(skipped.values()), columns=["id", "path", "reason"]))
        blend = root.get("blend")
        if blend is not None and not set(blend["experiments"]) <= set(predicted):
            blend = None
        if predicted:
            write_blend_and_submission(out, predicted, datasets, blend)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    return 1 if failed else 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.exported",
                                     description="Predict audio with exported fold models (run_queue.py --export).")
    parser.add_argument("export_dir", help="the export folder (output/export/ of a queue, or a copy of it)")
    parser.add_argument("path", help="a folder of audio, or a YAML file with a data block")
    parser.add_argument("--out", required=True, help="a new (or empty) folder for the predictions")
    parser.add_argument("--only", metavar="NAME[,NAME]", help="only these exported experiments")
    args = parser.parse_args(argv)
    only = None if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    return run(args.export_dir, args.path, args.out, only=only)


if __name__ == "__main__":
    raise SystemExit(main())
