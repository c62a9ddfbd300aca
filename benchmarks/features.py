"""Feature-stage benchmark: the pipeline's feature cache build against a naive reference and an in-memory floor.

Usage, from the repository root (``-m`` so that ``pipeline`` is importable)::

    python -m benchmarks.features [--n 5000] [--workers K] [--scale] [--naive-n 300] [--repeat 5]

Benchmarked setting (the default whale complexity features): synthetic
whale clips of 2 s at 2 kHz (16-bit AIFF), ``features: {name: complexity,
spectrum: mel, n_fft: 256, hop_length: 32, n_mels: 64}``, i.e. a 64-band mel
power spectrum per frame followed by (H, C_SQ, C_JSD, C_TV) per frame,
output [126, 4] float32 per clip.

Measured in one run, on the same clips:

- **pipeline**: ``pipeline.cache.build.ensure_features`` into a fresh cache folder
  (decode -> mel + complexity -> TFRecord shards + manifest), run in a child
  process with the pipeline modules already imported; the time covers the
  whole call, including starting the worker pool. Its peak memory is sampled
  every 10 ms from ``/proc`` over the child and all its descendants (the
  workers): the sum of PSS (shared pages counted once), and the sum of RSS.
- **naive**: per clip, the same decoding (``load_clip``), then
  ``librosa.feature.melspectrogram`` and the complexity measures with a
  Python loop over frames and bins (``pipeline.features.reference``), on the
  first ``--naive-n`` clips, single process; extrapolated as clips/s.
- **floor**: every clip already decoded into one numpy array, then
  ``compute_features`` (the batched arithmetic the workers run) in this one
  process; no decoding, no serialisation, no pool.

Each of the three is run ``--repeat`` times (default 5), interleaved, and
the fastest run of each is used (as ``timeit`` does): on a shared virtual
machine the CPU speed drifts by up to ~40 % within minutes, which moves
single-run ratios more than the code does; all runs are printed. The ratio
of the pipeline and the naive reference of each repetition (measured a few
seconds apart, so they see about the same machine speed) is printed too,
with its median: a second estimate of pipeline / naive that a fast spell
during only one of the two best runs does not move. The floor
and the naive reference run with the allocator settings of the feature
workers (:func:`pipeline.cache.workers.tune_allocator`), so the floor is the same
arithmetic under the same conditions, minus decoding, serialisation and
the pool.

Then it checks that the cached features equal the naive reference on the
naive subset. ``--scale`` also builds the cache for ``10 x N`` clips and
prints the peak-memory ratio. Clips are generated once per N under
``<tmp>/pipeline-bench/`` (``--data-dir`` to change) and reused.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time

FEATURES = {"name": "complexity", "spectrum": "mel", "n_fft": 256, "hop_length": 32, "n_mels": 64}
AUDIO = {"sample_rate": 2000, "duration": 2.0}


def experiment(root: str, n: int, workers: int):
    """The resolved Experiment the benchmark builds a cache for (the queue parser fills every default)."""
    from pipeline.config import parse_queue

    raw = {
        "experiments": [
            {
                "name": "bench",
                "data": {"name": "synthetic_whale", "root": root, "n_train": n, "n_test": 0, "seed": 0},
                "audio": AUDIO,
                "features": FEATURES,
                "model": "inceptiontime",
                "cache": {"workers": workers},
            }
        ]
    }
    return parse_queue(raw, source="benchmarks/features.py", base_dir=root).experiments[0]


def ensure_data(data_dir: str, n: int) -> str:
    from pipeline.data.synthetic import ensure_synthetic_whale

    root = os.path.join(data_dir, f"whale-{n}")
    t0 = time.perf_counter()
    ensure_synthetic_whale(root, n_train=n, n_test=0, positive_fraction=0.3, seed=0)
    took = time.perf_counter() - t0
    if took > 1:
        print(f"generated {n} clips in {root} ({took:.0f} s)", flush=True)
    return root


# ----------------------------------------------------------------------------- memory sampling


def _tree(pid: int) -> list:
    """``pid`` and all its descendants (via /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for path in glob.glob(f"/proc/{p}/task/*/children"):
            try:
                with open(path) as f:
                    todo.extend(int(c) for c in f.read().split())
            except OSError:
                pass
    return out


def _memory(pids) -> tuple:
    """(sum of PSS, sum of RSS, largest RSS) in bytes over ``pids``; processes that vanished count 0."""
    pss = rss = largest = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        one = int(line.split()[1]) * 1024
                        rss += one
                        largest = max(largest, one)
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return pss, rss, largest


# ----------------------------------------------------------------------------- (a) the pipeline's stage


def _stage_child(root: str, n: int, workers: int, cache_root: str, conn, with_tensorflow: bool) -> None:
    """Runs in a fresh process: import the pipeline, then time ensure_features and report."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    if with_tensorflow:  # as in a queue's later experiments: the pool is then spawned, not forked
        import tensorflow  # noqa: F401
    from pipeline.data import load_dataset
    from pipeline.features import check_settings
    from pipeline.cache.build import ensure_features
    from pipeline.cache.workers import start_method

    exp = experiment(root, n, workers)
    # What the queue's data stage does before the feature stage.
    dataset = load_dataset(exp.data.name, exp.data.params)
    _ = dataset.identity  # the data's identity (one stat per file) is taken when the queue loads the data
    check_settings(exp.features.name, exp.features.params, sample_rate=exp.audio.sample_rate)
    method = start_method()
    conn.send({"ready": time.time()})
    cpu0, parent0 = _cpu_seconds(), _cpu_seconds(resource.RUSAGE_SELF)
    t0 = time.time()
    cache = ensure_features(dataset, cache_root, data=exp.data, audio=exp.audio, features=exp.features,
                            cache=exp.cache, predict=exp.predict, label=exp.name, progress=False)
    t1 = time.time()
    cpu = _cpu_seconds() - cpu0  # the pool's workers have exited: their time is in RUSAGE_CHILDREN
    parent_cpu = _cpu_seconds(resource.RUSAGE_SELF) - parent0
    conn.send({
        "start": t0,
        "end": t1,
        "clips": cache.count("train"),
        "cpu_seconds": cpu,
        "parent_cpu_seconds": parent_cpu,
        "skipped": len(cache.skipped),
        "shards": len(cache.files("train")),
        "workers": exp.cache.workers or os.cpu_count(),
        "start_method": method if (exp.cache.workers or os.cpu_count()) > 1 else "none (in process)",
        "folder": cache.folder,
    })
    conn.close()


def _cpu_seconds(who=None) -> float:
    """User + system CPU time of this process and of its waited-for descendants (or of ``who`` alone)."""
    out = 0.0
    for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) if who is None else (who,):
        usage = resource.getrusage(w)
        out += usage.ru_utime + usage.ru_stime
    return out


def run_stage(root: str, n: int, workers: int, cache_root: str, *, with_tensorflow: bool = False,
              memory: bool = True) -> dict:
    """ensure_features in a child process; with ``memory``, while sampling the memory of its process tree.

    A sample reads /proc/<pid>/smaps_rollup of every process in the tree
    (~0.7 ms of CPU each): every 10 ms that is ~20 % of a core taken from
    the stage on a 2-core machine, so timed runs (``memory=False``) do not
    sample and the memory figures come from a separate run.
    """
    ctx = multiprocessing.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe()
    proc = ctx.Process(target=_stage_child, args=(root, n, workers, cache_root, child_conn, with_tensorflow))
    proc.start()
    samples = []
    result = {}
    while True:
        if memory:
            samples.append((time.time(), *_memory(_tree(proc.pid))))
        if parent_conn.poll(0.01 if memory else 0.1):
            msg = parent_conn.recv()
            result.update(msg)
            if "end" in msg:
                break
        if not proc.is_alive() and not parent_conn.poll():
            raise RuntimeError(f"the feature-stage process died (exit code {proc.exitcode})")
    proc.join()
    result["seconds"] = result["end"] - result["start"]
    result["clips_per_s"] = result["clips"] / result["seconds"]
    if memory:
        window = [s for s in samples if result["start"] <= s[0] <= result["end"]] or samples
        before = [s for s in samples if s[0] <= result["start"]]
        result["peak_pss"] = max(s[1] for s in window)
        result["peak_rss_sum"] = max(s[2] for s in window)
        # (Not getrusage's ru_maxrss: on Linux it survives exec, so a spawned child reports its parent's size.)
        result["peak_rss_one_process"] = max(s[3] for s in window)
        result["pss_before"] = before[-1][1] if before else float("nan")
        result["memory_samples"] = len(window)
    return result


# ----------------------------------------------------------------------------- (b) naive, (c) floor


def decode_all(paths, exp):
    import numpy as np

    from pipeline.data.audio import load_clip
    from pipeline.features import min_samples

    need = min_samples(exp.features.name, exp.features.params)
    clips = [load_clip(p, sample_rate=exp.audio.sample_rate, duration=exp.audio.duration, min_samples=need).samples
             for p in paths]
    return np.stack(clips)


def run_floor(y, exp) -> dict:
    from pipeline.features import compute_features

    compute_features(exp.features.name, exp.features.params, y[:64], sample_rate=exp.audio.sample_rate)  # warm-up
    c0, t0 = time.process_time(), time.perf_counter()
    out = compute_features(exp.features.name, exp.features.params, y, sample_rate=exp.audio.sample_rate)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"clips": len(y), "seconds": seconds, "clips_per_s": len(y) / seconds, "cpu_seconds": cpu, "out": out}


def run_naive(paths, exp) -> dict:
    import numpy as np

    from pipeline.data.audio import load_clip
    from pipeline.features import min_samples
    from pipeline.features.reference import naive_features

    need = min_samples(exp.features.name, exp.features.params)
    name, params, sr = exp.features.name, exp.features.params, exp.audio.sample_rate
    for p in paths[:3]:  # warm-up: librosa's lazy imports and caches
        naive_features(name, params, load_clip(p, sample_rate=sr, duration=exp.audio.duration).samples, sample_rate=sr)
    decode_s = feature_s = 0.0
    out = []
    # CPU time of this thread: librosa's small matrix products run on OpenBLAS, whose
    # helper threads spin between calls and would double the process's CPU time (the
    # wall time is the same with OPENBLAS_NUM_THREADS=1; measured).
    c0, p0 = time.thread_time(), time.process_time()
    for p in paths:
        t0 = time.perf_counter()
        y = load_clip(p, sample_rate=sr, duration=exp.audio.duration, min_samples=need).samples
        t1 = time.perf_counter()
        out.append(naive_features(name, params, y, sample_rate=sr))
        t2 = time.perf_counter()
        decode_s += t1 - t0
        feature_s += t2 - t1
    seconds = decode_s + feature_s
    cpu, process_cpu = time.thread_time() - c0, time.process_time() - p0
    return {"clips": len(paths), "seconds": seconds, "clips_per_s": len(paths) / seconds, "cpu_seconds": cpu,
            "process_cpu_seconds": process_cpu,
            "features_only_clips_per_s": len(paths) / feature_s, "decode_clips_per_s": len(paths) / decode_s,
            "out": np.stack(out)}


def cached_features(folder: str, ids):
    """The cached features of ``ids`` (reads the shards with TensorFlow)."""
    import numpy as np

    from pipeline.cache.read import FeatureCache

    got_ids, x = FeatureCache(folder).load("train")
    index = {i: k for k, i in enumerate(got_ids)}
    return np.stack([x[index[i]] for i in ids])


# ----------------------------------------------------------------------------- main


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.0f} MB"


def _load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="clips (default 5000)")
    parser.add_argument("--workers", type=int, default=0, help="feature workers (default 0: all cores)")
    parser.add_argument("--naive-n", type=int, default=300, help="clips for the naive reference (default 300)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="runs of each measurement; the fastest is used (default 5)")
    parser.add_argument("--scale", action="store_true", help="also build the cache for 10 x N clips; memory ratio")
    parser.add_argument("--with-tensorflow", action="store_true",
                        help="import TensorFlow in the stage's process first (as in a queue's later experiments), "
                             "so the worker pool is spawned instead of forked")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "pipeline-bench"))
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1. Received: --repeat {args.repeat}")
    if importlib.util.find_spec("pipeline") is None:
        parser.error("cannot import the pipeline package: run from the repository root as "
                     "`python -m benchmarks.features ...`")

    import numpy as np
    import pandas as pd

    print(f"feature setting: {FEATURES}, audio {AUDIO}; cores: {os.cpu_count()}; load average: {_load()}", flush=True)
    root = ensure_data(args.data_dir, args.n)
    exp = experiment(root, args.n, args.workers)
    train = pd.read_csv(os.path.join(root, "train.csv"))
    paths = [os.path.join(root, "train", c) for c in train["clip_name"]]
    ids = list(train["clip_name"])
    report = {"n": args.n, "features": FEATURES, "audio": AUDIO, "load_before": _load()}

    from pipeline.cache.workers import tune_allocator

    tune_allocator()  # as in the feature workers (see the module doc)
    y = decode_all(paths, exp)
    subset = min(args.naive_n, args.n)
    stages, floors, naives = [], [], []
    cache_roots = []
    try:
        for rep in range(args.repeat):
            cache_root = tempfile.mkdtemp(prefix="bench-cache-", dir=args.data_dir)
            cache_roots.append(cache_root)
            stage = run_stage(root, args.n, args.workers, cache_root, with_tensorflow=args.with_tensorflow,
                              memory=False)
            stages.append(stage)
            print(f"[{rep + 1}/{args.repeat}] (a) pipeline stage: {stage['clips']} clips in {stage['seconds']:.2f} s = "
                  f"{stage['clips_per_s']:.0f} clips/s ({stage['workers']} workers, {stage['start_method']}, "
                  f"{stage['shards']} shard(s), {stage['skipped']} skipped)", flush=True)
            floors.append(run_floor(y, exp))
            print(f"[{rep + 1}/{args.repeat}] (c) in-memory floor: {floors[-1]['clips']} decoded clips in "
                  f"{floors[-1]['seconds']:.2f} s = {floors[-1]['clips_per_s']:.0f} clips/s (single process)", flush=True)
            naives.append(run_naive(paths[:subset], exp))
            print(f"[{rep + 1}/{args.repeat}] (b) naive reference: {subset} clips in {naives[-1]['seconds']:.2f} s = "
                  f"{naives[-1]['clips_per_s']:.1f} clips/s", flush=True)
        del y
        cache_root = tempfile.mkdtemp(prefix="bench-cache-", dir=args.data_dir)
        cache_roots.append(cache_root)
        mem = run_stage(root, args.n, args.workers, cache_root, with_tensorflow=args.with_tensorflow)
        print(f"memory run (sampled every 10 ms, not timed): {mem['clips_per_s']:.0f} clips/s", flush=True)
        stage = max(stages, key=lambda r: r["clips_per_s"])
        floor = max(floors, key=lambda r: r["clips_per_s"])
        naive = max(naives, key=lambda r: r["clips_per_s"])
        print(f"best of {args.repeat}:")
        print(f"(a) pipeline stage: {stage['clips']} clips in {stage['seconds']:.2f} s = {stage['clips_per_s']:.0f} "
              f"clips/s ({stage['workers']} workers, {stage['start_method']}, {stage['shards']} shard(s), "
              f"{stage['skipped']} skipped); peak memory of the process tree (memory run): PSS "
              f"{_mb(mem['peak_pss'])} (RSS sum {_mb(mem['peak_rss_sum'])}; before the stage PSS "
              f"{_mb(mem['pss_before'])}; largest single process RSS {_mb(mem['peak_rss_one_process'])})", flush=True)
        print(f"(c) in-memory floor: {floor['clips']} decoded clips in {floor['seconds']:.2f} s = "
              f"{floor['clips_per_s']:.0f} clips/s (single process)", flush=True)
        print(f"(b) naive reference: {subset} clips in {naive['seconds']:.2f} s = {naive['clips_per_s']:.1f} clips/s "
              f"(features alone {naive['features_only_clips_per_s']:.1f} clips/s, decoding alone "
              f"{naive['decode_clips_per_s']:.0f} clips/s)", flush=True)

        cached = cached_features(stage["folder"], ids[:subset])
        diff_naive = float(np.abs(cached - naive["out"]).max())
        diff_floor = float(np.abs(cached - floor["out"][:subset]).max())
        print(f"cached features vs naive reference: max |diff| = {diff_naive:.2e}; vs floor: {diff_floor:.2e}")

        # CPU time per clip moves less with other load on the machine than wall-clock rates do
        # (it still grows when both hardware threads of a core are busy).
        per = {k: 1e6 * r["cpu_seconds"] / r["clips"] for k, r in (("pipeline", stage), ("naive", naive),
                                                                    ("floor", floor))}
        print(f"CPU time per clip: pipeline {per['pipeline']:.0f} us (all processes; the writing process "
              f"{1e6 * stage['parent_cpu_seconds'] / stage['clips']:.0f} us of it), naive {per['naive']:.0f} us "
              f"(its own thread; with OpenBLAS's spinning helper threads "
              f"{1e6 * naive['process_cpu_seconds'] / naive['clips']:.0f} us), floor {per['floor']:.0f} us")
        report["cpu_us_per_clip"] = per
        vs_naive = stage["clips_per_s"] / naive["clips_per_s"]
        vs_floor = stage["clips_per_s"] / floor["clips_per_s"]
        paired = [p["clips_per_s"] / n["clips_per_s"] for p, n in zip(stages, naives)]
        print(f"pipeline / naive per repetition: {', '.join(f'{r:.1f}' for r in paired)} x; "
              f"median {statistics.median(paired):.1f} x")
        print(f"pipeline / naive = {vs_naive:.1f} x (target >= 40): {'PASS' if vs_naive >= 40 else 'FAIL'}")
        print(f"pipeline / floor = {vs_floor:.2f} x (target >= 0.5): {'PASS' if vs_floor >= 0.5 else 'FAIL'}")
        report.update(
            repeat=args.repeat,
            stage={k: v for k, v in stage.items() if k not in ("folder",)},
            memory={k: v for k, v in mem.items() if k not in ("folder",)},
            naive={k: v for k, v in naive.items() if k != "out"},
            floor={k: v for k, v in floor.items() if k != "out"},
            runs_clips_per_s={"pipeline": [r["clips_per_s"] for r in stages],
                              "floor": [r["clips_per_s"] for r in floors],
                              "naive": [r["clips_per_s"] for r in naives]},
            pipeline_over_naive=vs_naive, pipeline_over_floor=vs_floor,
            pipeline_over_naive_per_repetition=paired,
            max_abs_diff_vs_naive=diff_naive,
        )
        for folder in cache_roots:
            shutil.rmtree(folder, ignore_errors=True)

        if args.scale:
            big = 10 * args.n
            big_root = ensure_data(args.data_dir, big)
            cache_root = tempfile.mkdtemp(prefix="bench-cache-", dir=args.data_dir)
            cache_roots.append(cache_root)
            large = run_stage(big_root, big, args.workers, cache_root, with_tensorflow=args.with_tensorflow)
            ratio = large["peak_pss"] / mem["peak_pss"]
            print(f"scale: {big} clips in {large['seconds']:.2f} s = {large['clips_per_s']:.0f} clips/s; peak PSS "
                  f"{_mb(large['peak_pss'])} vs {_mb(mem['peak_pss'])} at {args.n} clips: ratio {ratio:.2f} "
                  f"(target <= 1.3): {'PASS' if ratio <= 1.3 else 'FAIL'}; RSS-sum ratio "
                  f"{large['peak_rss_sum'] / mem['peak_rss_sum']:.2f}")
            report["scale"] = {"n": big, **{k: v for k, v in large.items() if k != "folder"}, "pss_ratio": ratio}
    finally:
        for folder in cache_roots:
            shutil.rmtree(folder, ignore_errors=True)
    report["load_after"] = _load()
    print(f"load average after: {report['load_after']}")
    print("json: " + json.dumps(report, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
