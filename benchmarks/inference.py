"""Inference benchmark: recording-minutes predicted per CPU-second, three ways, on long recordings and short clips.

Usage, from the repository root, after the queue has run (``-m`` so that ``pipeline`` is importable)::

    python -m benchmarks.inference experiments.yaml [--experiment NAME] [--n-long 10] [--long-seconds 60]
        [--n-clips 300] [--clip-seconds 2] [--rate 32000]

For one finished experiment of the queue (the first, or ``--experiment``) it
writes ``--n-long`` recordings of ``--long-seconds`` and ``--n-clips`` clips
of ``--clip-seconds`` (noise with a chirp, WAV at ``--rate`` Hz) into a
temporary folder, exports the experiment there (SavedModels + TFLite,
:func:`pipeline.export.export_experiment`; not timed) and times each path on
each set, features included (a fresh feature cache each time, built by the
pipeline's numpy feature code in its worker processes):

- **training-time**: what a fold job does after training: the fold models are
  in memory (loaded before timing) and predict the feature cache through
  :func:`pipeline.predict.predict_examples`, then the mean over folds;
- **keras**: ``run_queue.py --predict`` for the experiment
  (:func:`pipeline.predict_new.predict_experiment`: loads the fold models too);
- **tflite**: ``python -m pipeline.exported`` for the experiment
  (:func:`pipeline.exported.predict_exported`: the all-folds TFLite model).

CPU seconds are the user + system time of this process and of every process
below it (:func:`benchmarks.proctree.tree_cpu_seconds`: the feature workers
and the forkserver that starts them included, alive or finished). It prints recording-minutes per CPU-second for
each path and set, and the ratios tflite / keras and keras / training-time
(the issue's target: tflite >= 2x keras).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of all its descendants (:func:`tree_cpu_seconds`: the
    feature workers too, whoever started them), alive or waited for."""
    from benchmarks.proctree import tree_cpu_seconds

    return tree_cpu_seconds(os.getpid())


def write_audio(folder: str, n: int, seconds: float, rate: int, seed: int) -> float:
    """``n`` WAV files of ``seconds`` of noise with an upsweep at a random time; returns their total minutes."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    length = int(round(seconds * rate))
    t = np.arange(int(0.5 * rate)) / rate
    chirp = 0.3 * np.sin(2 * np.pi * (100 * t + 100 * t ** 2))
    for i in range(n):
        x = 0.05 * rng.standard_normal(length)
        start = int(rng.integers(0, max(1, length - len(chirp))))
        x[start:start + len(chirp)] += chirp[: length - start]
        sf.write(os.path.join(folder, f"rec{i:04d}.wav"), x.astype(np.float32), rate, subtype="PCM_16")
    return n * seconds / 60.0


def timed(fn) -> float:
    """CPU seconds of ``fn()``."""
    start = cpu_seconds()
    fn()
    return cpu_seconds() - start


def run(queue_path: str, *, experiment=None, n_long=10, long_seconds=60.0, n_clips=300, clip_seconds=2.0,
        rate=32000, workdir=None) -> dict:
    """Time the three paths on both sets; returns ``{set: {path: recording-minutes per CPU-second}}``."""
    from pipeline import layout, ownership
    from pipeline.config import load_queue
    from pipeline.export import export_experiment
    from pipeline.exported import predict_exported
    from pipeline.predict import mean_over_folds, predict_examples
    from pipeline.predict_new import (NewAudio, dataset_for, finished_experiments, fold_strategy_name,
                                      load_fold_model, predict_experiment)
    from pipeline.cache.build import ensure_features
    from pipeline import io, schema
    import pandas as pd

    queue = load_queue(queue_path)
    done = finished_experiments(queue, None if experiment is None else [experiment])
    exp = done[0]
    output = queue.output_dir
    meta = io.read_json(layout.experiment_file(layout.experiment_dir(output, exp.name), layout.SCORES))
    work = workdir or tempfile.mkdtemp(prefix="inference-bench-")
    export_root = os.path.join(work, "export")
    ownership.make_owned_dir(export_root)
    export_experiment(exp, output, export_root)
    exp_dir = layout.experiment_dir(output, exp.name)
    models = [load_fold_model(exp_dir, k, exp.model.name) for k in range(exp.folds.n_splits)]
    sets = {"long": (n_long, long_seconds), "clips": (n_clips, clip_seconds)}
    out = {}
    for seed, (name, (n, seconds)) in enumerate(sets.items()):
        folder = os.path.join(work, "audio", name)
        minutes = write_audio(folder, n, seconds, rate, seed)
        files = sorted(os.listdir(folder))
        audio = NewAudio(folder, pd.DataFrame({"id": files, "path": [os.path.join(folder, f) for f in files]}))
        dataset = dataset_for(exp.data.name, audio, meta)
        strategy = schema.FOLD_STRATEGIES[fold_strategy_name(exp.data.name)].load()()

        def training_time(root=os.path.join(work, name, "training")):
            cache = ensure_features(dataset, layout.cache_root(root), data=exp.data, audio=exp.audio,
                                    features=exp.features, cache=exp.cache, predict=exp.predict, progress=False)
            windows = strategy.windows(exp, cache.shape)
            mean_over_folds([predict_examples(m, cache.dataset("test"), batch_size=exp.train.batch_size,
                                              extra_windows=strategy.extra_windows(cache, "test"), **windows)[1]
                             for m in models])

        def keras_predict(root=os.path.join(work, name, "keras")):
            predict_experiment(exp, dataset, output, cache_root=layout.cache_root(root))

        def tflite_predict(root=os.path.join(work, name, "tflite")):
            predict_exported(layout.experiment_dir(export_root, exp.name), dataset, root)

        out[name] = {}
        for path, fn in (("training-time", training_time), ("keras", keras_predict), ("tflite", tflite_predict)):
            wall = time.time()
            cpu = timed(fn)
            out[name][path] = minutes / cpu
            print(f"{name:>5} ({n} x {seconds:g} s at {rate} Hz): {path:>13}: {minutes / cpu:8.3f} recording-min per "
                  f"CPU-s ({cpu:.1f} CPU-s, {time.time() - wall:.1f} s wall)", flush=True)
        print(f"{name:>5}: tflite / keras {out[name]['tflite'] / out[name]['keras']:.2f}x, keras / training-time "
              f"{out[name]['keras'] / out[name]['training-time']:.2f}x", flush=True)
    if workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inference", description=__doc__.split("\n")[0])
    parser.add_argument("queue", help="a queue file whose experiments have run")
    parser.add_argument("--experiment", help="the finished experiment to measure (default: the first)")
    parser.add_argument("--n-long", type=int, default=10)
    parser.add_argument("--long-seconds", type=float, default=60.0)
    parser.add_argument("--n-clips", type=int, default=300)
    parser.add_argument("--clip-seconds", type=float, default=2.0)
    parser.add_argument("--rate", type=int, default=32000)
    args = parser.parse_args(argv)
    run(args.queue, experiment=args.experiment, n_long=args.n_long, long_seconds=args.long_seconds,
        n_clips=args.n_clips, clip_seconds=args.clip_seconds, rate=args.rate)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
