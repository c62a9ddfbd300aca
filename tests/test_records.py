"""Tests of the feature cache: TFRecord encoding, shards, manifest, rebuilds, the pool and the readers.

Data are a few generated clips (written with soundfile in each test's tmp
folder); every build uses one worker except the single pool test.
"""

from __future__ import annotations

import concurrent.futures as cf
from concurrent.futures.process import BrokenProcessPool
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipeline import layout, schema
from pipeline.cache import build, encode, featurise, read, workers
from pipeline.config import parse_queue
from pipeline.data.audio import load_clip
from pipeline.data.base import Dataset
from pipeline.features import compute_features

SR = 2000
N = 4000  # 2 s
FEATURES = {"name": "complexity", "n_fft": 256, "hop_length": 32, "n_mels": 64}
SHARD = re.compile(r"^(train|test)-(\d{5})-of-(\d{5})\.tfrecord$")


def slow_crc32c(data: bytes) -> int:
    """Bit-by-bit CRC-32C, the definition."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def write_clips(folder, rng, n, *, prefix="clip"):
    """``n`` chirps in noise as 16-bit AIFF files; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    t = np.arange(N) / SR
    paths = []
    for i in range(n):
        f0, f1 = rng.uniform(50, 300, 2)
        y = 0.3 * np.sin(2 * np.pi * (f0 + (f1 - f0) * t / 4) * t) + 0.05 * rng.standard_normal(N)
        path = os.path.join(folder, f"{prefix}{i}.aiff")
        sf.write(path, y.astype(np.float32), SR, format="AIFF", subtype="PCM_16")
        paths.append(path)
    return paths


def make_dataset(paths, test_paths=()):
    rows = [{"id": os.path.basename(p), "path": p, "split": "train", "label": float(i % 2)} for i, p in enumerate(paths)]
    rows += [{"id": os.path.basename(p), "path": p, "split": "test", "label": np.nan} for p in test_paths]
    return Dataset(manifest=pd.DataFrame(rows), task="binary", targets=("label",), submission="table")


def make_exp(tmp_path, *, workers=1, chunk_size=4, shard_mb=100.0, features=FEATURES, max_bad_fraction=0.2,
             predict=None):
    raw = {
        "experiments": [{
            "name": "t",
            "data": {"name": "synthetic_whale", "root": str(tmp_path / "unused")},
            "audio": {"sample_rate": SR, "duration": N / SR, "max_bad_fraction": max_bad_fraction},
            "features": features,
            "model": "inceptiontime",
            "cache": {"workers": workers, "chunk_size": chunk_size, "shard_mb": shard_mb},
            "predict": predict or {},
        }]
    }
    return parse_queue(raw, source="test", base_dir=str(tmp_path)).experiments[0]


@pytest.fixture
def clips(tmp_path, rng):
    train = write_clips(tmp_path / "audio", rng, 11)
    test = write_clips(tmp_path / "audio", rng, 3, prefix="test")
    return train, test


def build_cache(dataset, exp, root):
    """The feature cache of ``dataset`` under ``root`` with ``exp``'s specs (no progress bar)."""
    return build.ensure_features(dataset, root, data=exp.data, audio=exp.audio, features=exp.features, cache=exp.cache,
                                 predict=exp.predict, label=exp.name, progress=False)


def expected_features(paths, exp):
    y = np.stack([load_clip(p, sample_rate=SR, duration=N / SR).samples for p in paths])
    return compute_features(exp.features.name, exp.features.params, y, sample_rate=SR)


# ----------------------------------------------------------------------------- encoding


def test_crc32c_matches_the_definition(rng):
    assert encode.crc32c(b"123456789") == 0xE3069283  # the standard check value
    for n in (4, 5, 255, 256, 257, 1000, 4097):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert encode.crc32c(data) == slow_crc32c(data), n


def test_frames_are_what_tensorflow_writes_and_reads(tmp_path, rng):
    import tensorflow as tf

    ids = ["a", "clip_with_a_longer_name.aiff", "é"]
    x = rng.standard_normal((3, 126, 4)).astype(np.float32)
    framed, sizes = encode.frame_examples(ids, x)
    assert sum(sizes) == len(framed)

    path = str(tmp_path / "tf.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for i, clip_id in enumerate(ids):
            writer.write(encode.example_bytes(clip_id, x[i]))
    with open(path, "rb") as f:
        assert f.read() == framed

    ours = tmp_path / "ours.tfrecord"
    ours.write_bytes(framed)
    for i, raw in enumerate(tf.data.TFRecordDataset(str(ours))):  # checks both CRCs of every record
        example = tf.train.Example.FromString(raw.numpy())
        assert example.features.feature["id"].bytes_list.value[0].decode() == ids[i]
        got = np.frombuffer(example.features.feature["x"].bytes_list.value[0], np.float32).reshape(126, 4)
        np.testing.assert_array_equal(got, x[i])

    # The reader does check the data checksum: one flipped payload byte is an error.
    damaged = bytearray(framed)
    damaged[sizes[0] // 2] ^= 1
    ours.write_bytes(bytes(damaged))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(str(ours)))


def test_long_records_are_what_tensorflow_reads(tmp_path, rng):
    import tensorflow as tf

    x = rng.standard_normal((2, 300_000)).astype(np.float32)  # 1.2 MB a record: several pieces of blocks
    framed, _ = encode.frame_examples(["long0", "long1"], x)
    path = tmp_path / "long.tfrecord"
    path.write_bytes(framed)
    got = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]  # verifies CRCs
    for i, example in enumerate(got):
        np.testing.assert_array_equal(np.frombuffer(example.features.feature["x"].bytes_list.value[0], np.float32), x[i])


def test_chunks_of_long_clips_hold_few_clips():
    assert build.chunk_clips(64, N) == 64
    assert build.chunk_clips(64, 60 * 48000) == 5  # 60 s at 48 kHz: 11.5 MB a clip
    assert build.chunk_clips(64, 10**9) == 1


# ----------------------------------------------------------------------------- building


def test_round_trip_ids_shapes_and_values(tmp_path, clips):
    train, test = clips
    exp = make_exp(tmp_path)
    cache = build_cache(make_dataset(train, test), exp, str(tmp_path / "cache"))

    assert cache.shape == (126, 4)
    for split, paths in (("train", train), ("test", test)):
        ids, x = cache.load(split)
        assert ids == [os.path.basename(p) for p in paths] == cache.ids(split)
        assert cache.count(split) == len(paths)
        np.testing.assert_allclose(x, expected_features(paths, exp), rtol=0, atol=1e-6)
    assert cache.manifest["complete"] and cache.manifest["total_files"] == len(train) + len(test)


def test_main_shards_hold_exactly_the_records_of_the_features_and_no_windows(tmp_path, clips):
    # Clips of exactly audio.duration: the shards are the framed records of their features, byte for
    # byte, as before extra windows existed, and the cache has no windows.
    train, test = clips
    exp = make_exp(tmp_path, chunk_size=3)
    cache = build_cache(make_dataset(train, test), exp, str(tmp_path / "cache"))
    for split, paths in (("train", train), ("test", test)):
        (shard,) = cache.files(split)
        with open(shard, "rb") as f:
            assert f.read() == encode.frame_examples([os.path.basename(p) for p in paths],
                                                     expected_features(paths, exp))[0]
        assert cache.window_count(split) == 0 and cache.extra_windows(split) is None
    assert sorted(os.listdir(cache.folder)) == ["manifest.json", "test-00000-of-00001.tfrecord",
                                                "train-00000-of-00001.tfrecord"]
    assert cache.manifest["window_notes"] == []


def test_shards_are_named_split_index_of_count(tmp_path, clips):
    train, test = clips
    # ~2 KB per record and 5 KB shards: a few records per shard.
    exp = make_exp(tmp_path, shard_mb=0.005)
    cache = build_cache(make_dataset(train, test), exp, str(tmp_path / "cache"))
    names = sorted(os.listdir(cache.folder))
    assert "manifest.json" in names
    shards = [n for n in names if n != "manifest.json"]
    for split in ("train", "test"):
        mine = sorted(n for n in shards if n.startswith(split + "-"))
        assert mine == cache.manifest["splits"][split]["shards"]
        total = len(mine)
        assert [SHARD.match(n).groups() for n in mine] == [(split, f"{i:05d}", f"{total:05d}") for i in range(total)]
    assert len(cache.files("train")) == 4  # 11 records of ~2 KB, 3 per shard
    assert all(SHARD.match(n) for n in shards)
    assert not [d for d in os.listdir(tmp_path / "cache") if d.endswith(".building")]
    # Shards are read interleaved (parallel reads), so the reader's order mixes shards.
    assert sorted(cache.load("train")[0]) == sorted(os.path.basename(p) for p in train)


def test_interrupted_build_without_manifest_is_rebuilt(tmp_path, clips):
    train, test = clips
    exp = make_exp(tmp_path)
    root = str(tmp_path / "cache")
    cache = build_cache(make_dataset(train, test), exp, root)
    ids, x = cache.load("train")
    # A kill before the manifest is written leaves shards without it (and maybe a .building folder).
    os.remove(os.path.join(cache.folder, layout.CACHE_MANIFEST))
    with open(os.path.join(cache.folder, "train-00000.partial"), "wb") as f:
        f.write(b"half a record")
    os.makedirs(cache.folder + ".building")
    again = build_cache(make_dataset(train, test), exp, root)
    assert os.path.isfile(os.path.join(again.folder, layout.CACHE_MANIFEST))
    assert sorted(os.listdir(again.folder)) == ["manifest.json", "test-00000-of-00001.tfrecord",
                                                "train-00000-of-00001.tfrecord"]
    ids2, x2 = again.load("train")
    assert ids2 == ids
    np.testing.assert_array_equal(x2, x)


def test_complete_cache_is_reused(tmp_path, clips):
    train, _ = clips
    exp = make_exp(tmp_path)
    root = str(tmp_path / "cache")
    first = build_cache(make_dataset(train), exp, root)
    stamp = os.path.getmtime(first.files("train")[0])
    second = build_cache(make_dataset(train), exp, root)
    assert second.folder == first.folder and os.path.getmtime(second.files("train")[0]) == stamp


def test_pool_gives_the_same_records_as_one_worker(tmp_path, clips):
    train, test = clips
    dataset = make_dataset(train, test)
    one = build_cache(dataset, make_exp(tmp_path, workers=1, chunk_size=3), str(tmp_path / "one"))
    two = build_cache(dataset, make_exp(tmp_path, workers=2, chunk_size=2), str(tmp_path / "two"))
    assert one.manifest["splits"] == two.manifest["splits"]
    for split in ("train", "test"):
        for a, b in zip(one.files(split), two.files(split), strict=True):
            with open(a, "rb") as fa, open(b, "rb") as fb:
                assert fa.read() == fb.read()


def test_bad_files_are_skipped_and_listed_with_reasons(tmp_path, clips):
    train, _ = clips
    missing = str(tmp_path / "audio" / "missing.aiff")
    text = tmp_path / "audio" / "text.aiff"
    text.write_text("not audio")
    silent = str(tmp_path / "audio" / "silent.aiff")
    sf.write(silent, np.zeros(N, np.float32), SR, format="AIFF", subtype="PCM_16")
    paths = train[:3] + [missing, str(text), silent] + train[3:5]
    exp = make_exp(tmp_path, chunk_size=2, max_bad_fraction=0.5)
    cache = build_cache(make_dataset(paths), exp, str(tmp_path / "c"))
    skipped = {s["id"]: s for s in cache.skipped}
    assert set(skipped) == {"missing.aiff", "text.aiff", "silent.aiff"}
    assert skipped["missing.aiff"]["reason"] == "missing file"
    assert skipped["text.aiff"]["reason"].startswith("unreadable")
    assert skipped["silent.aiff"]["reason"].startswith("silent")
    assert all(s["split"] == "train" and s["path"] for s in skipped.values())
    good = [os.path.basename(p) for p in train[:5]]
    assert cache.ids("train") == good and cache.load("train")[0] == good
    with open(os.path.join(cache.folder, layout.CACHE_MANIFEST)) as f:
        assert len(json.load(f)["skipped"]) == 3


def test_too_many_bad_files_stop_the_build(tmp_path, clips):
    train, _ = clips
    paths = train[:2] + [str(tmp_path / f"missing{i}.aiff") for i in range(3)]
    with pytest.raises(build.CacheError, match="max_bad_fraction"):
        build_cache(make_dataset(paths), make_exp(tmp_path), str(tmp_path / "c"))


class _RecordingPool:
    """Runs each job at submit time; records the most jobs submitted whose result was not yet collected."""

    def __init__(self):
        self.submitted = 0
        self.collected = 0
        self.most_in_flight = 0

    def submit(self, fn, job):
        self.submitted += 1
        self.most_in_flight = max(self.most_in_flight, self.submitted - self.collected)
        pool = self

        class Collected(cf.Future):
            def result(self, timeout=None):
                pool.collected += 1
                return super().result(timeout)

        future = Collected()
        future.set_result(job * 10)
        return future


def test_at_most_window_jobs_are_in_flight():
    pool = _RecordingPool()
    out = []
    for result in workers.run_jobs(list(range(20)), pool, window=3):
        assert pool.submitted - len(out) <= 3 + 1  # plus the result being handed over
        out.append(result)
    assert out == [10 * j for j in range(20)]  # in order
    assert pool.most_in_flight == 3


# ----------------------------------------------------------------------------- readers


def test_labelled_keeps_listed_ids_in_order_with_their_labels(tmp_path, clips):
    train, _ = clips
    cache = build_cache(make_dataset(train), make_exp(tmp_path), str(tmp_path / "c"))
    all_ids, x = cache.load("train")
    wanted = [all_ids[i] for i in (7, 1, 4)]
    labels = np.array([[0.25], [0.5], [0.75]], np.float32)
    got = list(read.labelled(cache.dataset("train"), wanted, labels).as_numpy_iterator())
    assert [g[0].decode() for g in got] == [all_ids[1], all_ids[4], all_ids[7]]  # the cache's order
    by_id = dict(zip(wanted, labels))
    for clip_id, xi, yi in got:
        clip_id = clip_id.decode()
        np.testing.assert_array_equal(yi, by_id[clip_id])
        np.testing.assert_array_equal(xi, x[all_ids.index(clip_id)])


def test_mel_cache_round_trip(tmp_path, clips):
    train, _ = clips
    exp = make_exp(tmp_path, features={"name": "mel", "n_fft": 256, "hop_length": 64, "n_mels": 32},
                   max_bad_fraction=0.5)
    cache = build_cache(make_dataset(train), exp, str(tmp_path / "c"))
    assert cache.shape == (63, 32)
    ids, x = cache.load("train")
    np.testing.assert_allclose(x, expected_features(train, exp), rtol=0, atol=1e-4)
    assert isinstance(exp.features.params, schema.MelParams)


_FAULTS_PER_CHUNK = """
import resource, sys
import numpy as np
from pipeline import schema
from pipeline.features import compute_features
from pipeline.cache.workers import tune_allocator
if sys.argv[1] == "tuned" and not tune_allocator():
    print("no glibc")
    sys.exit()
params = schema.ComplexityParams(n_fft=256, hop_length=32, n_mels=64)
y = np.random.default_rng(0).standard_normal((64, 4000)).astype(np.float32)  # one worker chunk of whale clips
for _ in range(3):
    compute_features("complexity", params, y, sample_rate=2000)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    compute_features("complexity", params, y, sample_rate=2000)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_tuned_allocator_reuses_memory_between_chunks():
    # Each run in a fresh interpreter: the allocator settings are process-wide.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    faults = {}
    for mode in ("tuned", "default"):
        out = subprocess.run([sys.executable, "-c", _FAULTS_PER_CHUNK, mode], cwd=root, env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
        if out == "no glibc":
            pytest.skip("tune_allocator needs glibc's mallopt")
        faults[mode] = int(out)
    # Measured: 3 page faults over 10 chunks when tuned, ~17,000 with glibc's defaults.
    assert faults["tuned"] < 200, faults
    assert faults["default"] > 10 * faults["tuned"], faults


@pytest.mark.parametrize("n,largest,workers", [(5000, 256, 2), (10, 4, 2), (1, 256, 4), (0, 8, 2), (777, 5, 1), (100000, 256, 8)])
def test_task_bounds_cover_every_clip_once_and_shrink_at_the_end(n, largest, workers):
    bounds = build.task_bounds(n, largest, workers)
    assert [i for a, b in bounds for i in range(a, b)] == list(range(n))  # in order, no gaps, no overlap
    sizes = [b - a for a, b in bounds]
    assert all(0 < s <= largest for s in sizes)
    assert sizes == sorted(sizes, reverse=True)  # large tasks first
    if workers > 1 and n >= 4 * workers * largest:
        assert sizes[0] == largest and sizes[-1] <= 16  # the workers finish together on small tasks


_THREADS_IN_A_WORKER = """
import os
import numpy as np
from pipeline import schema
from pipeline.cache import workers
from pipeline.features import compute_features


def probe(_):
    before = len(os.listdir("/proc/self/task"))
    y = np.random.default_rng(0).standard_normal((32, 4000)).astype(np.float32)
    for name, params in [("mel", schema.MelParams(n_fft=256, hop_length=32, n_mels=64)),
                         ("complexity", schema.ComplexityParams(n_fft=256, hop_length=32, n_mels=64)),
                         ("complexity", schema.ComplexityParams(n_fft=256, hop_length=32, spectrum="linear")),
                         ("waveform", schema.WaveformParams())]:
        compute_features(name, params, y, sample_rate=2000)
    return before, len(os.listdir("/proc/self/task"))


a = np.random.default_rng(0).standard_normal((300, 300))
a @ a  # this process has started OpenBLAS' threads, as a queue's earlier steps may have
pool = workers._pool(2)
print(workers.start_method(), *pool.map(probe, range(4)))
pool.shutdown()
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_feature_workers_start_no_threads():
    # The arithmetic calls no BLAS / OpenMP, so a forked worker stays single-threaded without any
    # thread limits (a limit set with threadpoolctl made OpenBLAS start two threads in each worker).
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", _THREADS_IN_A_WORKER], cwd=root, env={**os.environ, "PYTHONPATH": root},
                         capture_output=True, text=True, check=True).stdout.split(maxsplit=1)
    assert out[0] == "fork"
    assert out[1].split() == ["(1,", "1)"] * 4


# ----------------------------------------------------------------------------- bad files in a build (issue 14)


_CRASHING_DECODER = """
import json, os, signal, sys, pathlib
import numpy as np
from test_records import build_cache, make_dataset, make_exp, write_clips
from pipeline.cache import build
from pipeline.cache.workers import WorkerLimits
from pipeline.data import audio

folder = pathlib.Path(sys.argv[1])
rng = np.random.default_rng(0)
train = write_clips(folder / "audio", rng, 9)
test = write_clips(folder / "audio", rng, 3, prefix="test")
real_decoder, real_limits = audio._load_clip, build.worker_limits
how = None


def hostile(path, **kwargs):
    # Runs in the worker processes: forked from this process, they inherit the patch.
    if os.path.basename(path) == "clip4.aiff":
        if how == "segfault":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif how == "exit":
            os._exit(3)
        elif how == "endless":
            while True:
                pass
        elif how == "memory":
            np.empty(8 << 30, np.uint8)  # address space only: fails under the worker's limit
    return real_decoder(path, **kwargs)


audio._load_clip = hostile
for scenario in sys.argv[2:]:
    workers, how = scenario.split(":")
    build.worker_limits = real_limits
    if how == "endless":
        build.worker_limits = lambda audio, n, read_seconds: WorkerLimits(clip_cpu_seconds=0.5, memory_bytes=2 << 30)
    exp = make_exp(folder, workers=int(workers), chunk_size=3, max_bad_fraction=0.5)
    culprit = build_cache(make_dataset(train, test), exp, str(folder / scenario / "with"))
    clean = build_cache(make_dataset([p for p in train if "clip4" not in p], test), exp,
                        str(folder / scenario / "without"))
    shards = {name: [open(p, "rb").read().hex() for p in cache.files("train") + cache.files("test")]
              for name, cache in (("with", culprit), ("without", clean))}
    print(json.dumps({"scenario": scenario, "skipped": culprit.manifest["skipped"],
                      "splits": [culprit.manifest["splits"], clean.manifest["splits"]],
                      "shards_equal": shards["with"] == shards["without"]}))
"""

_CRASHES = {
    "1:segfault": "decoder crashed (signal 11, SIGSEGV)",
    "2:segfault": "decoder crashed (signal 11, SIGSEGV)",
    "2:exit": "decoder process exited unexpectedly (exit status 3)",
    "1:endless": "decoding took more than 0.5 s of CPU time; stopped (signal 27, SIGPROF)",
    "2:memory": "too large: decoding ran out of memory",
}


@pytest.fixture(scope="module")
def crashed_builds(tmp_path_factory):
    """Builds with a hostile decoder for clip4 (``workers:how``), run once in a fresh interpreter.

    Without TensorFlow loaded, the workers are forked, so they run the patched decoder.
    """
    folder = tmp_path_factory.mktemp("crashes")
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(tests), tests])}
    run = subprocess.run([sys.executable, "-c", _CRASHING_DECODER, str(folder), *_CRASHES], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    results = {r["scenario"]: r for r in map(json.loads, run.stdout.strip().splitlines()[-len(_CRASHES):])}
    return folder, results, run.stderr


@pytest.mark.parametrize("scenario", list(_CRASHES))
def test_a_decoder_that_crashes_costs_only_its_clip(crashed_builds, scenario):
    # With one worker the decoder ran in the queue's own process (a segfault killed the queue,
    # exit 139); with two the build failed with BrokenProcessPool, naming no file. Now the clips
    # of the broken tasks are retried one by one in fresh processes: the culprit is skipped with
    # its reason and the cache equals a build without it.
    folder, results, log = crashed_builds
    out, reason = results[scenario], _CRASHES[scenario]
    assert out["skipped"] == [{"id": "clip4.aiff", "split": "train", "path": str(folder / "audio" / "clip4.aiff"),
                               "reason": reason}]
    with_culprit, without = out["splits"]
    assert with_culprit == without and len(with_culprit["train"]["ids"]) == 8
    assert out["shards_equal"]
    assert f"skipped clip4.aiff (train): {reason}" in log  # what run.log shows


def test_a_named_pipe_among_the_clips_is_skipped_without_blocking(tmp_path, clips):
    # The feature stage blocked forever opening a FIFO in the audio folder.
    import signal

    train, _ = clips
    os.mkfifo(tmp_path / "audio" / "pipe.aiff")
    paths = train[:4] + [str(tmp_path / "audio" / "pipe.aiff")] + train[4:6]

    def expire(signum, frame):
        raise TimeoutError("the build blocked on the named pipe")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, 60)
    try:
        cache = build_cache(make_dataset(paths), make_exp(tmp_path), str(tmp_path / "c"))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert [(s["id"], s["reason"]) for s in cache.skipped] == [
        ("pipe.aiff", "unreadable: is a named pipe (FIFO), not a regular file")]
    assert cache.ids("train") == [os.path.basename(p) for p in train[:6]]


def test_float_audio_of_absurd_magnitude_never_reaches_the_cache(tmp_path, clips):
    # Values near 1e30 are finite in float32 but overflowed the power spectrum: NaN features were cached.
    train, _ = clips
    huge = tmp_path / "audio" / "huge.wav"
    y = (0.3 * np.sin(np.arange(N) / 5.0)).astype(np.float32)
    y[1000:1100] = 1e30
    sf.write(huge, y, SR, format="WAV", subtype="FLOAT")
    exp = make_exp(tmp_path, features={"name": "mel", "n_fft": 256, "hop_length": 64, "n_mels": 32},
                   max_bad_fraction=0.5)
    cache = build_cache(make_dataset(train[:3] + [str(huge)]), exp, str(tmp_path / "c"))
    assert [s["id"] for s in cache.skipped] == ["huge.wav"]
    assert cache.skipped[0]["reason"].startswith("absurd sample values: up to 1.0e+30")
    ids, x = cache.load("train")
    assert ids == [os.path.basename(p) for p in train[:3]] and np.isfinite(x).all()


def test_clips_with_non_finite_features_are_skipped_not_cached(tmp_path, clips, monkeypatch):
    # Whatever lets a non-finite value through (a decoder, the arithmetic), it is caught after
    # compute_features; a batch that raises is featurised clip by clip so only the culprit is lost.
    import pipeline.features

    train, _ = clips
    exp = make_exp(tmp_path)
    job = ([(os.path.basename(p), p) for p in train[:5]], exp.features.name, exp.features.params, exp.audio, 256,
           build.window_spec(exp.data, exp.audio, exp.predict))
    expected = featurise.featurise_chunk(job)
    real = pipeline.features.compute_features

    def nan_in_row_2(name, params, y, *, sample_rate):
        out = real(name, params, y, sample_rate=sample_rate)
        out[2, 7] = np.nan
        return out

    monkeypatch.setattr(pipeline.features, "compute_features", nan_in_row_2)
    got = featurise.featurise_chunk(job)
    assert got["ids"] == [expected["ids"][i] for i in (0, 1, 3, 4)]
    assert got["skipped"] == [("clip2.aiff", train[2], "non-finite features: the complexity features hold NaN or infinity")]
    sizes = expected["sizes"]
    kept = b"".join(expected["records"][sum(sizes[:i]):sum(sizes[: i + 1])] for i in (0, 1, 3, 4))
    assert got["records"] == kept

    def raises_for_clip_3(name, params, y, *, sample_rate):
        if any(np.array_equal(row, batch[3]) for row in y):
            raise ValueError("y must be finite")
        return real(name, params, y, sample_rate=sample_rate)

    batch = np.stack([load_clip(p, sample_rate=SR, duration=N / SR).samples for p in train[:5]])
    monkeypatch.setattr(pipeline.features, "compute_features", raises_for_clip_3)
    got = featurise.featurise_chunk(job)
    assert got["ids"] == [expected["ids"][i] for i in (0, 1, 2, 4)]
    assert got["skipped"] == [("clip3.aiff", train[3], "features failed: ValueError: y must be finite")]


class _BreakingPool:
    """A fake pool whose workers die at the ``break_at``-th submission, failing what was in flight as a real one does.

    A future's result is "done <job>" unless the break caught it uncollected; with ``at_submit`` the
    break is noticed at that submission (``submit`` raises), else that job's future fails too.
    """

    def __init__(self, break_at: int, *, at_submit: bool):
        self.break_at, self.at_submit = break_at, at_submit
        self.generation = self.submitted = self.renewals = 0
        self.in_flight = set()

    def submit(self, fn, job):
        self.submitted += 1
        future = _LazyFuture(self, job)
        if self.submitted == self.break_at:
            for lost in self.in_flight | {future}:
                lost.broken = True
            if self.at_submit:
                raise BrokenProcessPool("a worker died")
        self.in_flight.add(future)
        return future

    def renew(self):
        self.renewals += 1
        self.generation += 1

    def one_by_one(self, job):
        return f"alone {job}"


class _LazyFuture:
    def __init__(self, pool, job):
        self.pool, self.job, self.broken = pool, job, False

    def result(self):
        self.pool.in_flight.discard(self)
        if self.broken:
            raise BrokenProcessPool("a worker died")
        return f"done {self.job}"


@pytest.mark.parametrize("at_submit", [False, True])
def test_a_broken_pool_is_replaced_once_and_its_lost_jobs_rerun_alone(at_submit):
    # The pool can break while a result is awaited (the future fails) or between two results
    # (the next submit raises): either way it is replaced once, every job's result comes back
    # in order, and the jobs lost with the broken pool are rerun clip by clip.
    pool = _BreakingPool(break_at=4, at_submit=at_submit)
    # Window 2: job 3 is submitted after job 1's result, with job 2 in flight.
    lost = {2} if at_submit else {2, 3}
    out = []
    for result in workers.run_jobs(list(range(8)), pool, window=2):
        out.append(result)
        if len(out) > 8:
            break
    assert pool.renewals == 1
    assert out == [f"{'alone' if i in lost else 'done'} {i}" for i in range(8)]


# ----------------------------------------------------------------------------- clips retried alone (_Solo)


def _solo_job(path):
    audio = schema.AudioSettings(sample_rate=SR, duration=N / SR)
    return (((os.path.basename(path), path),), "mel", schema.MelParams(n_fft=256, hop_length=32, n_mels=64), audio, 1,
            featurise.Windows(hop=N // 2, max_samples=600 * SR))


_SOLO_UNDER_A_FORK_SERVER = """
import json, os, sys, time, types
sys.modules["tensorflow"] = types.ModuleType("tensorflow")  # TensorFlow "loaded": workers come from a fork server
import numpy as np
from test_records import _solo_job, write_clips
from pipeline.cache import workers

path = write_clips(sys.argv[1], np.random.default_rng(0), 1)[0]
solo = workers._Solo(workers.WorkerLimits(clip_cpu_seconds=30, memory_bytes=2 << 30))
first = solo.run(_solo_job(path))
time.sleep(2.5)  # idle longer than the solo process's 1 s poll
second = solo.run(_solo_job(path))
print(json.dumps({"method": workers.start_method(), "pid": solo.process.pid,
                  "results": [r if isinstance(r, str) else r["ids"] for r in (first, second)]}), flush=True)
os._exit(0)  # the queue dies without closing its solo process
"""


def test_a_solo_process_under_a_fork_server_waits_for_clips_and_ends_with_its_parent(tmp_path):
    # Under a fork server the solo process is the server's child: its check "my parent is not the
    # queue" was always true, so it quit after 1 s idle and the next good clip was skipped as
    # "decoder process exited unexpectedly (exit status 0)".
    import time

    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(tests), tests])}
    run = subprocess.run([sys.executable, "-c", _SOLO_UNDER_A_FORK_SERVER, str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["method"] == "forkserver"
    assert out["results"] == [["clip0.aiff"], ["clip0.aiff"]]
    deadline = time.monotonic() + 20  # orphaned: it must notice and end, not wait forever
    while os.path.exists(f"/proc/{out['pid']}") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not os.path.exists(f"/proc/{out['pid']}")


def test_a_solo_process_that_died_idle_is_restarted_and_its_next_clip_kept(tmp_path, rng):
    import signal
    import time

    path = write_clips(tmp_path, rng, 1)[0]
    solo = workers._Solo(None)
    try:
        assert solo.run(_solo_job(path))["ids"] == ["clip0.aiff"]
        os.kill(solo.process.pid, signal.SIGKILL)  # dies while idle: not a culprit
        solo.process.join()
        assert solo.run(_solo_job(path))["ids"] == ["clip0.aiff"]
        os.kill(solo.process.pid, signal.SIGKILL)
        time.sleep(0.2)  # dead, but not yet joined: the send may still succeed into the pipe
        assert solo.run(_solo_job(path))["ids"] == ["clip0.aiff"]
    finally:
        solo.close()


def test_a_clip_blocked_in_io_is_stopped_after_the_wall_time_limit(tmp_path, rng, monkeypatch):
    # A decoder blocked on a hung network mount uses no CPU: only a wall-clock limit stops it.
    import time
    from pipeline.data import audio

    assert workers.solo_wall_seconds(workers.WorkerLimits(clip_cpu_seconds=30, memory_bytes=1)) == 180
    path = write_clips(tmp_path, rng, 1)[0]
    monkeypatch.setattr(workers, "start_method", lambda: "fork")  # even if TensorFlow was loaded by earlier tests
    monkeypatch.setattr(audio, "_load_clip", lambda *a, **k: time.sleep(60))  # the forked child inherits it
    monkeypatch.setattr(workers, "solo_wall_seconds", lambda limits: 1.0)
    solo = workers._Solo(None)
    try:
        start = time.monotonic()
        reason = solo.run(_solo_job(path))
        assert reason == "decoding took more than 1 s of wall time (blocked I/O?); stopped"
        assert time.monotonic() - start < 10
    finally:
        solo.close()


def test_a_pool_task_blocked_in_io_is_stopped_and_only_its_blocked_clip_lost(tmp_path, rng, monkeypatch):
    # future.result() had no timeout: one worker blocked on a hung mount stalled the run forever.
    import time
    from pipeline.data import audio

    paths = write_clips(tmp_path, rng, 3)
    real = audio._load_clip

    def blocks_on_clip1(path, **kwargs):
        if path.endswith("clip1.aiff"):
            time.sleep(60)
        return real(path, **kwargs)

    monkeypatch.setattr(workers, "start_method", lambda: "fork")  # the forked workers inherit the patch
    monkeypatch.setattr(audio, "_load_clip", blocks_on_clip1)
    monkeypatch.setattr(workers, "solo_wall_seconds", lambda limits: 2.0)
    job = _solo_job(paths[0])
    featurise.featurise_chunk(job)  # imports librosa's mel filters here, so forked workers start warm
    job = (tuple((os.path.basename(p), p) for p in paths), *job[1:])
    pool = workers.Workers(1, None)
    try:
        start = time.monotonic()
        (result,) = list(workers.run_jobs([job], pool, window=2))
        assert time.monotonic() - start < 30
    finally:
        pool.shutdown(wait=False)
    assert result["ids"] == ["clip0.aiff", "clip2.aiff"]
    assert result["skipped"] == [("clip1.aiff", paths[1],
                                  "decoding took more than 2 s of wall time (blocked I/O?); stopped")]


# A runner stand-in: starts a feature pool, makes sure its workers run, says their pids, then waits to be killed.
POOL_HOLDER = textwrap.dedent("""
    import time
    from pipeline.cache import workers
    pool = workers._pool(2)
    assert pool.submit(sum, [1, 2]).result() == 3
    print(" ".join(str(pid) for pid in pool._processes), flush=True)
    time.sleep(60)
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return "\tZ" not in next(line for line in fh if line.startswith("State:"))
    except (FileNotFoundError, StopIteration):
        return False


def test_feature_workers_end_with_a_killed_runner():
    """A SIGKILLed runner's pool workers (blocked reading a pipe they also hold) must not live on."""
    runner = subprocess.Popen([sys.executable, "-c", POOL_HOLDER], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    workers = [int(pid) for pid in runner.stdout.readline().split()]
    assert workers and all(_alive(pid) for pid in workers)
    runner.kill()
    runner.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.05)
    left = [pid for pid in workers if _alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"workers {left} outlived their runner"


# ----------------------------------------------------------------------------- extra windows of long clips


@pytest.mark.parametrize("length,hop,starts", [(4000, 2000, []), (3000, 2000, []), (6000, 2000, [2000]),
                                               (7000, 2000, [2000, 3000]), (8000, 2000, [2000, 4000]),
                                               (4001, 2000, [1]), (10000, 3000, [3000, 6000])])
def test_window_starts_step_by_hop_and_end_at_the_clip_end(length, hop, starts):
    assert featurise.window_starts(length, N, hop) == starts


def test_a_clip_barely_longer_than_a_window_gets_no_near_duplicate_window():
    # A file a few samples too long (an off-by-one export, a resampler's rounding) is the clip itself.
    assert featurise.window_starts(N + 1, N, N // 2, min_overhang=N // 20) == []
    assert featurise.window_starts(N + N // 20, N, N // 2, min_overhang=N // 20) == [N // 20]


def test_window_spec_overhang_and_no_windows_for_recordings_with_boxes():
    from pipeline.config import Component
    from pipeline.schema import AudioSettings, PredictSettings

    audio = AudioSettings(sample_rate=2000, duration=2.0)
    clips = build.window_spec(Component("synthetic_whale", None), audio, PredictSettings())
    assert (clips.hop, clips.max_samples, clips.min_overhang) == (2000, 1_200_000, 200)
    # rfcx recordings are predicted by the crops strategy's own windows over the whole cached recording.
    assert build.window_spec(Component("synthetic_rfcx", None), audio, PredictSettings()) is None


def write_long_clips(folder, rng):
    """A 3 s and a 3.5 s clip, the 2 s clip cut from samples [1 s, 3 s] of the 3 s one, and two 2 s clips."""
    os.makedirs(folder, exist_ok=True)
    t = np.arange(7000) / SR
    y = (0.3 * np.sin(2 * np.pi * (60 + 40 * t) * t) + 0.05 * rng.standard_normal(7000)).astype(np.float32)
    parts = {"long3.aiff": y[:6000], "long3_5.aiff": y, "cut.aiff": y[2000:6000]}
    paths = {}
    for name, samples in parts.items():
        paths[name] = str(folder / name)
        sf.write(paths[name], samples, SR, format="AIFF", subtype="PCM_16")
    normal = write_clips(folder, rng, 2)
    return paths, normal


def test_a_long_clip_has_extra_windows_featurised_like_clips_of_their_audio(tmp_path, rng):
    paths, normal = write_long_clips(tmp_path / "audio", rng)
    # Tiny shards: the windows span several, and must still come back in order.
    exp = make_exp(tmp_path, shard_mb=0.003, chunk_size=2, predict={"hop_seconds": 1.0})
    test = [paths["long3.aiff"], normal[0], paths["long3_5.aiff"], normal[1]]
    cache = build_cache(make_dataset([paths["cut.aiff"]], test), exp, str(tmp_path / "c"))

    # The main shards are as ever: each clip's first 2 s (read interleaved from the tiny shards).
    assert cache.ids("test") == ["long3.aiff", "clip0.aiff", "long3_5.aiff", "clip1.aiff"]
    main = dict(zip(*cache.load("test")))
    np.testing.assert_array_equal(main["long3.aiff"], expected_features([paths["long3.aiff"]], exp)[0])
    # long3 (3 s): one window, [1 s, 3 s], whose features are those of the 2 s clip of that audio.
    # long3_5 (3.5 s): windows at 1 s and 1.5 s (the last ends at the clip's end); 2 s clips: none.
    windows = [(i.decode(), w) for i, w in cache.extra_windows("test").as_numpy_iterator()]
    assert [i for i, _ in windows] == ["long3.aiff", "long3_5.aiff", "long3_5.aiff"]
    assert cache.window_count("test") == 3 and cache.ids("test.windows") == ["long3.aiff"] + ["long3_5.aiff"] * 2
    assert len(cache.files("test.windows")) > 1
    (cut,) = cache.load("train")[1]
    np.testing.assert_array_equal(windows[0][1], cut)
    np.testing.assert_array_equal(windows[1][1], cut)  # long3_5's samples [1 s, 3 s] are the same audio
    y, _ = sf.read(paths["long3_5.aiff"], dtype="float32")
    last = compute_features(exp.features.name, exp.features.params, y[None, 3000:7000], sample_rate=SR)[0]
    np.testing.assert_array_equal(windows[2][1], last)
    assert cache.window_count("train") == 0 and cache.extra_windows("train") is None
    assert cache.manifest["window_notes"] == []


def test_a_clip_longer_than_max_seconds_is_windowed_up_to_it_with_a_note(tmp_path, rng):
    paths, _ = write_long_clips(tmp_path / "audio", rng)
    exp = make_exp(tmp_path, predict={"hop_seconds": 1.0, "max_seconds": 2.5})
    cache = build_cache(make_dataset([paths["long3.aiff"]]), exp, str(tmp_path / "c"))
    (window,) = [w for _, w in cache.extra_windows("train").as_numpy_iterator()]
    y, _ = sf.read(paths["long3.aiff"], dtype="float32")
    expected = compute_features(exp.features.name, exp.features.params, y[None, 1000:5000], sample_rate=SR)[0]
    np.testing.assert_array_equal(window, expected)  # the window ends at 2.5 s, not at 3 s
    assert cache.manifest["window_notes"] == [
        {"id": "long3.aiff", "split": "train",
         "note": "read the first 2.5 s (predict.max_seconds): the extra windows stop there"}]


def test_only_files_longer_than_the_clip_are_read_twice(tmp_path, rng, monkeypatch):
    # Normal clips must cost no more than before: one decode each; a long one is read on.
    from pipeline.data import audio

    paths, normal = write_long_clips(tmp_path / "audio", rng)
    calls = []
    real = audio.load_clip
    monkeypatch.setattr(audio, "load_clip", lambda path, **kw: calls.append(os.path.basename(path)) or real(path, **kw))
    exp = make_exp(tmp_path)
    rows = [(os.path.basename(p), p) for p in [*normal, paths["long3.aiff"]]]
    result = featurise.featurise_chunk((rows, exp.features.name, exp.features.params, exp.audio, 256,
                                        build.window_spec(exp.data, exp.audio, exp.predict)))
    assert calls == ["clip0.aiff", "clip1.aiff", "long3.aiff", "long3.aiff"]
    assert result["window_ids"] == ["long3.aiff"]  # default hop: half of audio.duration, so the window at 1 s


def test_an_extra_window_with_non_finite_features_is_left_out_alone(tmp_path, rng, monkeypatch):
    import pipeline.features

    paths, normal = write_long_clips(tmp_path / "audio", rng)
    exp = make_exp(tmp_path, predict={"hop_seconds": 1.0})
    y, _ = sf.read(paths["long3_5.aiff"], dtype="float32")
    real = pipeline.features.compute_features

    def nan_for_the_window_at_1_5_s(name, params, batch, *, sample_rate):
        out = real(name, params, batch, sample_rate=sample_rate)
        for i, row in enumerate(batch):
            if np.array_equal(row, y[3000:7000]):
                out[i, 0, 0] = np.nan
        return out

    monkeypatch.setattr(pipeline.features, "compute_features", nan_for_the_window_at_1_5_s)
    rows = [(os.path.basename(p), p) for p in [paths["long3_5.aiff"], normal[0]]]
    result = featurise.featurise_chunk((rows, exp.features.name, exp.features.params, exp.audio, 256,
                                        build.window_spec(exp.data, exp.audio, exp.predict)))
    assert result["ids"] == ["long3_5.aiff", "clip0.aiff"] and result["skipped"] == []
    assert result["window_ids"] == ["long3_5.aiff"]  # the window at 1 s stays
    assert result["window_notes"] == [("long3_5.aiff", "extra window at 1.5 s left out: non-finite features: the "
                                                       "complexity features hold NaN or infinity")]


def test_window_settings_are_part_of_the_cache_key(tmp_path):
    exp = make_exp(tmp_path)
    key = build.cache_key(exp.data, exp.audio, exp.features, exp.predict, "files")
    same_hop = schema.PredictSettings(hop_seconds=1.0, aggregate="mean")  # half of audio.duration, as the default
    assert build.cache_key(exp.data, exp.audio, exp.features, same_hop, "files") == key
    for other in (schema.PredictSettings(hop_seconds=0.5), schema.PredictSettings(max_seconds=60.0)):
        assert build.cache_key(exp.data, exp.audio, exp.features, other, "files") != key


def test_worker_memory_covers_the_longest_read_within_the_machine(monkeypatch):
    from pipeline.data.audio import MAX_FILE_RATE, MAX_WINDOW_BYTES, window_frames

    audio = schema.AudioSettings(sample_rate=SR, duration=2.0)
    page = 4096
    for ram, expected_long in ((64 << 30, (2 << 30) + 6 * MAX_WINDOW_BYTES), (4 << 30, (4 << 30) // 3)):
        monkeypatch.setattr(workers.os, "sysconf", lambda name: page if name == "SC_PAGE_SIZE" else ram // page)
        short, long = workers.worker_limits(audio, 2, 2.0), workers.worker_limits(audio, 2, 600.0)
        # 600 s at 2 MHz would be 4.8 GB a window: capped, and never beyond a third of the RAM (2 workers + queue).
        assert long.memory_bytes == expected_long
        assert short.memory_bytes == min(ram // 3, (2 << 30) + 6 * 4 * window_frames(MAX_FILE_RATE, sample_rate=SR,
                                                                                    duration=2.0))
        assert short.clip_cpu_seconds == long.clip_cpu_seconds == 34.0  # per clip of audio.duration
