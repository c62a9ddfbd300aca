"""The feature cache: features computed once, stored as sharded TFRecords, read with tf.data.

Layout of ``<cache_root>/<key>/`` (``key`` hashes the data, audio and feature
settings and the audio files' identity - ids, paths, sizes, modification
times - so experiments that agree on them share one cache and an edited file
gives a new cache)::

    train-00000-of-00002.tfrecord   # tf.train.Example: id (bytes), x (raw float32 bytes)
    test-00000-of-00001.tfrecord
    manifest.json                    # written last: a cache without it is incomplete

Extraction decodes, featurises and serialises chunks of clips in a process
pool (:func:`start_method`: forked while TensorFlow is not loaded, else
forked from a clean fork server, so workers never inherit TensorFlow's
threads), with one worker too: a decoder that crashes on a hostile file
costs that clip, never the queue (:func:`_run_jobs`). Each worker returns
its chunk as finished TFRecord bytes (:func:`frame_examples`, numpy only), so
the parent only appends bytes to shards of about ``shard_mb`` MB; it keeps at
most ``2 x workers`` chunks in flight and a chunk holds at most ~64 MB of
audio (:func:`chunk_clips`), so memory stays bounded whatever the dataset
size and clip length. Bad clips are skipped and listed with their reason in
the manifest. Records are in manifest order whatever the number of workers.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
from concurrent.futures.process import BrokenProcessPool
import ctypes
import dataclasses
import functools
import logging
import multiprocessing
import os
import shutil
import signal
import struct
import sys
import time
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import google_crc32c
import numpy as np

from pipeline import io, ownership
from pipeline.config import Experiment, stable_hash
from pipeline.data.base import Dataset

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: bad-audio checks of issue 14 (absurd float values skipped, decoding windowed)
MANIFEST = "manifest.json"
# Records parsed (and joined with labels) per tf.data batch by the readers.
_PARSE_BATCH = 256
# Read-ahead per open shard, bytes.
_READ_BUFFER = 8 << 20


class CacheError(RuntimeError):
    """The feature cache cannot be built (disk full, too many bad files, ...)."""


def cache_settings(exp: Experiment) -> dict:
    """What the cached content depends on (not the pool size or shard size)."""
    audio = dataclasses.asdict(exp.audio)
    audio.pop("max_bad_fraction")  # a check applied after extraction, not part of the content
    return {
        "version": CACHE_VERSION,
        "data": exp.data.to_dict(),
        "audio": audio,
        "features": exp.features.to_dict(),
    }


def cache_key(exp: Experiment, files: str) -> str:
    """The cache folder's name: the content settings plus ``files``, the audio files' identity.

    ``files`` is :attr:`pipeline.data.identity.DataIdentity.audio` (ids, splits,
    paths, each file's size and modification time), so a replaced, added or
    removed file gives a new cache while experiments on the same files and
    settings share one. Labels are not part of it: they never enter the cache.
    """
    return stable_hash({**cache_settings(exp), "files": files})


# ----------------------------------------------------------------------------- worker side


# Audio bytes (float32 samples) per worker task: with 2 s whale clips a task
# holds cache.chunk_size clips; with 60 s recordings at 48 kHz (11.5 MB each)
# it holds 5, so a worker's memory stays bounded whatever the clip length.
_CHUNK_AUDIO_BYTES = 64 << 20


def _featurise_chunk(job, *, clip_cpu_seconds: Optional[float] = None) -> dict:
    """Decode, featurise and serialise one chunk of clips (runs in a worker process; no TensorFlow).

    Returns the chunk's framed TFRecord records concatenated in ``records``
    (bytes) with each record's length in ``sizes``, so that the parent only
    appends bytes to shard files: building protos and checksums per clip in
    the parent would make it the bottleneck of the whole stage. A clip whose
    features are not all finite is skipped (:func:`_finite_features`).

    ``clip_cpu_seconds`` (feature workers only: it ends the process) bounds
    the CPU time of decoding each clip: a CPU timer (``ITIMER_PROF``, one
    system call per clip) is armed before each clip, and SIGPROF's default
    action ends a worker stuck in a decoder; the parent then isolates the
    clip (:func:`_run_jobs`).
    """
    from pipeline.data.audio import clip_length, load_clip

    rows, feature_name, feature_params, audio, min_samples = job
    ids, skipped, notes = [], [], []  # skipped: (position in the chunk, id, path, reason)
    positions = []  # of each decoded clip in the chunk
    # Each clip goes straight into its row (no list of clips to stack: half the memory).
    batch = np.empty((len(rows), clip_length(sample_rate=audio.sample_rate, duration=audio.duration)), np.float32)
    try:
        for position, row in enumerate(rows):
            # (id, path) for a local file; (id, path, bytes or skip reason) for one fetched by the parent.
            clip_id, path = row[0], row[1]
            payload = row[2] if len(row) > 2 else None
            if isinstance(payload, str):
                skipped.append((position, clip_id, path, payload))
                continue
            if clip_cpu_seconds:
                signal.setitimer(signal.ITIMER_PROF, clip_cpu_seconds)
            decoded = load_clip(
                path,
                sample_rate=audio.sample_rate,
                duration=audio.duration,
                min_samples=min_samples,
                max_nonfinite_fraction=audio.max_nonfinite_fraction,
                data=payload,
            )
            if decoded.samples is None:
                skipped.append((position, clip_id, path, decoded.reason))
                continue
            batch[len(ids)] = decoded.samples
            ids.append(clip_id)
            positions.append(position)
            notes.extend((clip_id, n) for n in decoded.notes)
    finally:
        if clip_cpu_seconds:
            signal.setitimer(signal.ITIMER_PROF, 0)
    records, sizes = b"", []
    if ids:
        features, bad = _finite_features(feature_name, feature_params, batch[: len(ids)], audio.sample_rate)
        if bad:
            for i, reason in bad.items():
                skipped.append((positions[i], ids[i], rows[positions[i]][1], reason))
            dropped = {ids[i] for i in bad}
            ids = [clip_id for clip_id in ids if clip_id not in dropped]
            notes = [(clip_id, n) for clip_id, n in notes if clip_id not in dropped]
            skipped.sort(key=lambda s: s[0])  # chunk order, however the chunk was cut
        if ids:
            records, sizes = frame_examples(ids, features)
    return {"ids": ids, "records": records, "sizes": sizes, "skipped": [s[1:] for s in skipped], "notes": notes}


def _finite_features(name, params, y: np.ndarray, sample_rate: int) -> Tuple[Optional[np.ndarray], Dict[int, str]]:
    """Features of the decoded clips ``y`` [B, samples] that are all finite, and a skip reason for the others.

    Returns ``(features [K, ...] of the K clips kept, in order, or None when K = 0, {row of y: reason})``.
    Nothing non-finite may reach the cache: a NaN feature becomes a NaN loss hours later. The check is
    one ``isfinite`` pass over the batch's features (a few us per clip). Should the batch raise (a clip
    that the decoder let through but the arithmetic rejects), the clips are featurised one at a time so
    that only the culprit is lost; errors other than these (a bug) still stop the build.
    """
    from pipeline.features import compute_features

    try:
        features = compute_features(name, params, y, sample_rate=sample_rate)
    except (ValueError, ArithmeticError, MemoryError) as exc:
        if len(y) == 1:
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            return None, {0: f"features failed: {type(exc).__name__}: {first_line}"}
        kept, bad = [], {}
        for i in range(len(y)):
            one, why = _finite_features(name, params, y[i : i + 1], sample_rate)
            if why:
                bad[i] = why[0]
            else:
                kept.append(one)
        return (np.concatenate(kept) if kept else None), bad
    finite = np.isfinite(features.reshape(len(y), -1)).all(axis=1)
    if finite.all():
        return features, {}
    bad = {int(i): f"non-finite features: the {name} features hold NaN or infinity" for i in np.flatnonzero(~finite)}
    return (features[finite] if len(bad) < len(y) else None), bad


# ----------------------------------------------------------------------------- TFRecord encoding
#
# A record is a tf.train.Example {"id": bytes, "x": raw float32 bytes}, framed
# as TFRecord: uint64 length, masked CRC-32C of the length, data, masked
# CRC-32C of the data. Encoded here without TensorFlow so that workers need
# none (importing it costs seconds and ~0.5 GB per process): the protobuf
# wire format of such an Example is fixed and tiny, and the checksums come
# from google-crc32c (the SSE4.2 / ARM CRC instructions, ~0.4 us for a whale
# clip's 2 KB record; a numpy table-driven version took ~20 us).


@functools.lru_cache(maxsize=4096)
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@functools.lru_cache(maxsize=1024)
def _bytes_entry_head(key: bytes, n: int) -> bytes:
    """Wire bytes of one ``Features.feature`` map entry ``key -> BytesList[<n bytes>]``, up to the value."""
    bytes_list = 1 + len(_varint(n)) + n  # BytesList{value: 1}
    feature = 1 + len(_varint(bytes_list)) + bytes_list  # Feature{bytes_list: 1}
    entry = 1 + len(_varint(len(key))) + len(key) + 1 + len(_varint(feature)) + feature  # {key: 1, value: 2}
    return (b"\x0a" + _varint(entry) + b"\x0a" + _varint(len(key)) + key + b"\x12" + _varint(feature)
            + b"\x0a" + _varint(bytes_list) + b"\x0a" + _varint(n))


def example_bytes(clip_id: str, x: np.ndarray) -> bytes:
    """A serialised ``tf.train.Example`` with features ``id`` (utf-8) and ``x`` (raw little-endian float32)."""
    payload = np.ascontiguousarray(x, dtype="<f4").tobytes()
    key = clip_id.encode()
    features = _bytes_entry_head(b"id", len(key)) + key + _bytes_entry_head(b"x", len(payload)) + payload
    return b"\x0a" + _varint(len(features)) + features


if google_crc32c.implementation != "c":  # pragma: no cover - the wheels ship the C extension
    log.warning("google-crc32c has no C extension here: writing the feature cache will be slow")


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data`` (``crc32c(b"123456789") == 0xE3069283``)."""
    return google_crc32c.value(bytes(data))


def _masked(crc: int) -> bytes:
    """TFRecord's checksum masking of a CRC-32C, as 4 little-endian bytes."""
    return ((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF).to_bytes(4, "little")


def frame_examples(ids: Sequence[str], features: np.ndarray) -> Tuple[bytes, List[int]]:
    """TFRecord-framed Examples ``{"id", "x"}`` of a batch, concatenated, and each framed record's size.

    Parameters
    ----------
    ids : sequence of str [R]
    features : np.ndarray [shape=(R, ...)], float32, one clip per row

    Returns
    -------
    (bytes, list of int)
        The bytes ``tf.io.TFRecordWriter`` writes for :func:`example_bytes`
        of each clip, in order, and the size of each framed record.
    """
    payload = np.ascontiguousarray(features, dtype="<f4").reshape(len(ids), -1)
    n = payload.shape[1] * 4
    x_head = _bytes_entry_head(b"x", n)
    parts, sizes = [], []
    for clip_id, row in zip(ids, payload):
        key = clip_id.encode()
        id_entry = _bytes_entry_head(b"id", len(key)) + key
        head = b"\x0a" + _varint(len(id_entry) + len(x_head) + n) + id_entry + x_head
        x = row.tobytes()
        length = struct.pack("<Q", len(head) + n)
        data_crc = google_crc32c.extend(google_crc32c.value(head), x)
        parts += [length, _masked(google_crc32c.value(length)), head, x, _masked(data_crc)]
        sizes.append(16 + len(head) + n)
    return b"".join(parts), sizes


# ----------------------------------------------------------------------------- writing


class _ShardWriter:
    """Streams framed records of one split into ``<split>-NNNNN.partial`` files, then names them ``-of-``."""

    def __init__(self, folder: str, split: str, shard_bytes: int):
        self.folder, self.split, self.shard_bytes = folder, split, shard_bytes
        self.partials: List[str] = []
        self.file = None
        self.size = 0
        self.count = 0

    def write_chunk(self, records: bytes, sizes: Sequence[int]) -> None:
        """Append a chunk's framed records (as :func:`frame_examples` returns them), starting shards as they fill.

        A shard is closed once it holds ``shard_bytes`` or more, so shard
        boundaries fall between records and do not depend on the chunking.
        """
        view = memoryview(records)
        offset = 0
        i = 0
        while i < len(sizes):
            if self.file is None or self.size >= self.shard_bytes:
                self._next_shard()
            start = offset
            while i < len(sizes) and self.size < self.shard_bytes:
                self.size += sizes[i]
                offset += sizes[i]
                self.count += 1
                i += 1
            self.file.write(view[start:offset])

    def _next_shard(self) -> None:
        self._close()
        path = os.path.join(self.folder, f"{self.split}-{len(self.partials):05d}.partial")
        self.partials.append(path)
        self.file = open(path, "wb", buffering=1 << 20)
        self.size = 0

    def _close(self):
        if self.file is not None:
            self.file.close()
            self.file = None

    def finish(self) -> List[str]:
        self._close()
        names = []
        for i, partial in enumerate(self.partials):
            name = f"{self.split}-{i:05d}-of-{len(self.partials):05d}.tfrecord"
            os.replace(partial, os.path.join(self.folder, name))
            names.append(name)
        return names


def ensure_features(dataset: Dataset, exp: Experiment, cache_root: str, *, progress: bool = True) -> "FeatureCache":
    """Return the experiment's feature cache, building it first when missing or incomplete.

    Raises :class:`CacheError` when the disk cannot hold the cache or when more
    than ``audio.max_bad_fraction`` of the files are bad.
    """
    key = cache_key(exp, dataset.identity.audio)
    folder = os.path.join(cache_root, key)
    manifest_path = os.path.join(folder, MANIFEST)
    if io.isfile(manifest_path):
        cache = FeatureCache(folder)
        log.info("feature cache hit: %s (%d train, %d test clips)", folder, cache.count("train"), cache.count("test"))
    else:
        if io.isdir(folder):
            log.warning("feature cache %s has no manifest (an interrupted build); rebuilding it", folder)
            ownership.remove_owned(folder, recognise=_only_cache_files)
        if io.is_remote(folder):
            cache = _build_remote(dataset, exp, folder, progress=progress)
        else:
            cache = _build(dataset, exp, folder, progress=progress)
    _check_bad_fraction(cache, exp)
    return cache


def _only_cache_files(folder: str) -> bool:
    """A cache folder is recognised as the pipeline's by its content: nothing in it but shards and the manifest.

    (Cache folders carry no marker file, so that a cache's listing stays its
    shards and manifest; a folder with anything else in it is never deleted.)
    """
    return ownership.only_names(folder, lambda name: name == MANIFEST or name.endswith((".tfrecord", ".partial")))


def _check_bad_fraction(cache: "FeatureCache", exp: Experiment) -> None:
    total = cache.manifest["total_files"]
    bad = len(cache.manifest["skipped"])
    if total and bad / total > exp.audio.max_bad_fraction:
        raise CacheError(
            f"{bad} of {total} audio files ({bad / total:.0%}) could not be used, more than "
            f"audio.max_bad_fraction={exp.audio.max_bad_fraction}; refusing to train on the rest. "
            f"Reasons are listed in {os.path.join(cache.folder, MANIFEST)}"
        )


def _build_remote(dataset: Dataset, exp: Experiment, folder: str, *, progress: bool = True) -> "FeatureCache":
    """Build the cache in a local staging folder, then upload it to ``folder`` (gs://, ...), manifest last.

    Shards are written at local-disk speed by the usual writer; the upload is
    one sequential copy per shard. The staging folder needs the cache's size
    on the local disk (checked like a local build).
    """
    import tempfile

    staging = tempfile.mkdtemp(prefix="feature-cache-")
    try:
        local = _build(dataset, exp, os.path.join(staging, os.path.basename(folder)), progress=progress)
        started = time.time()
        io.copy_tree_up(local.folder, folder, last=MANIFEST)
        log.info("feature cache uploaded to %s in %.1f s", folder, time.time() - started)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return FeatureCache(folder)


def _fetched(job):
    """A job whose rows carry each remote file's bytes (or skip reason), read here through tf.io.gfile.

    Worker processes cannot see every filesystem the parent can (``ram://``
    is per process; a gs:// read would make each worker import TensorFlow),
    so the parent reads and the workers decode from memory.
    """
    from pipeline.data.audio import fetch

    rows = tuple((clip_id, path, fetch(path)) for clip_id, path in job[0])
    return (rows, *job[1:])


def _build(dataset: Dataset, exp: Experiment, folder: str, *, progress: bool = True) -> "FeatureCache":
    from pipeline.features import feature_shape, min_samples

    started = time.time()
    n_samples = int(round(exp.audio.duration * exp.audio.sample_rate))
    shape = feature_shape(exp.features.name, exp.features.params, n_samples=n_samples, sample_rate=exp.audio.sample_rate)
    clip_bytes = int(np.prod(shape)) * 4
    n_clips = len(dataset.manifest)
    _check_disk(os.path.dirname(folder), n_clips * (clip_bytes + 64))
    tmp_folder = folder + ".building"
    ownership.remove_owned(tmp_folder, recognise=_only_cache_files)
    os.makedirs(tmp_folder)

    workers = exp.cache.workers or os.cpu_count() or 1
    need = min_samples(exp.features.name, exp.features.params)
    splits: Dict[str, dict] = {}
    skipped, repaired = [], []
    shard_bytes = int(exp.cache.shard_mb * 1e6)
    chunk = chunk_clips(exp.cache.chunk_size, n_samples)
    if start_method() == "fork":
        _warm_up(exp, need)
    # The pool starts before the progress bar's monitor thread, so forked workers inherit no threads.
    pool = _Workers(workers, worker_limits(exp.audio, workers))
    bar = None  # made at the first result: importing tqdm (~25 ms) then overlaps the workers' first tasks
    try:
        for split in ("train", "test"):
            rows = dataset.manifest.loc[dataset.manifest["split"] == split, ["id", "path"]]
            rows = list(rows.itertuples(index=False, name=None))
            jobs = [
                (rows[start:stop], exp.features.name, exp.features.params, exp.audio, need)
                for start, stop in task_bounds(len(rows), chunk, workers)
            ]
            if any(io.is_remote(p) for _, p in rows):
                jobs = map(_fetched, jobs)  # lazily: at most `window` chunks of bytes in memory
            writer = _ShardWriter(tmp_folder, split, shard_bytes)
            ids: List[str] = []
            for result in _run_jobs(jobs, pool, window=2 * workers):
                writer.write_chunk(result["records"], result["sizes"])
                ids.extend(result["ids"])
                skipped.extend({"id": i, "split": split, "path": p, "reason": r} for i, p, r in result["skipped"])
                repaired.extend({"id": i, "note": n} for i, n in result["notes"])
                if bar is None:
                    bar = _progress_bar(n_clips, exp.name, disable=not progress)
                bar.update(len(result["ids"]) + len(result["skipped"]))
            splits[split] = {"count": writer.count, "shards": writer.finish(), "ids": ids}
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    for item in skipped:
        log.warning("skipped %s (%s): %s", item["id"], item["split"], item["reason"])
    for item in repaired:
        log.info("repaired %s: %s", item["id"], item["note"])
    seconds = time.time() - started
    manifest = {
        "complete": True,
        "key": os.path.basename(folder),
        "settings": cache_settings(exp),
        "files": dataset.identity.audio,
        "feature": exp.features.name,
        "shape": list(shape),
        "dtype": "float32",
        "total_files": n_clips,
        "splits": splits,
        "skipped": skipped,
        "repaired": repaired,
        "seconds": round(seconds, 2),
        "clips_per_second": round(n_clips / max(seconds, 1e-9), 1),
        "library_versions": _versions(),
    }
    io.write_json(os.path.join(tmp_folder, MANIFEST), manifest)
    if os.path.isdir(folder):  # a concurrent builder finished first: keep theirs
        ownership.remove_owned(tmp_folder, recognise=_only_cache_files)
    else:
        os.replace(tmp_folder, folder)
    log.info(
        "features written: %d clips in %.1f s (%.0f clips/s, %d worker(s), %d clips per task), %d skipped -> %s",
        n_clips, seconds, n_clips / max(seconds, 1e-9), workers, chunk, len(skipped), folder,
    )
    return FeatureCache(folder)


def _warm_up(exp: Experiment, n_samples: int) -> None:
    """Compute the features of one silent clip here, so that forked workers inherit a warm process.

    The first mel features in a process import librosa.filters and build the
    filter bank (~3 s); done once here, every worker forked for every build
    of this run starts with both (the queue's check_settings usually did it
    already, then this costs microseconds).
    """
    from pipeline.features import compute_features

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. empty mel bands: the queue reported them already
        try:
            compute_features(exp.features.name, exp.features.params, np.zeros((1, n_samples), np.float32),
                             sample_rate=exp.audio.sample_rate)
        except (ValueError, ArithmeticError) as exc:  # only a speed-up: the workers report real problems
            log.debug("feature warm-up failed: %s", exc)


# Smallest task of the guided schedule (task_bounds), in clips.
_MIN_TASK = 16


def task_bounds(n_clips: int, largest: int, workers: int) -> List[Tuple[int, int]]:
    """``(start, stop)`` of each worker task over ``n_clips`` clips: guided scheduling.

    Tasks hold ``largest`` clips while plenty are left, then shrink (each at
    most ``1 / (2 x workers)`` of what is left, down to 16 clips or
    ``largest``) so that the workers finish together. Large tasks matter: a
    task costs ~1-2 ms of pickling, messaging and set-up beyond its clips,
    and with 2 s whale clips 64-clip tasks ran at ~6,100 clips/s, 256-clip
    tasks at ~6,700-7,150 (20,000 clips, 2 workers). Shrinking at the end
    keeps one worker from finishing a large task alone.
    """
    if workers <= 1:
        return [(i, min(n_clips, i + largest)) for i in range(0, n_clips, largest)]
    bounds, start = [], 0
    while start < n_clips:
        left = n_clips - start
        size = min(largest, max(_MIN_TASK, -(-left // (2 * workers))))
        bounds.append((start, min(n_clips, start + size)))
        start += size
    return bounds


def chunk_clips(chunk_size: int, n_samples: int) -> int:
    """Clips per worker task: ``chunk_size``, fewer when that much audio would exceed ~64 MB."""
    return max(1, min(chunk_size, _CHUNK_AUDIO_BYTES // (4 * max(1, n_samples))))


def start_method() -> str:
    """How feature workers are started: ``fork`` while TensorFlow is not loaded here, else ``forkserver``.

    A forked worker starts in milliseconds with numpy, scipy and the pipeline
    already imported; a spawned one re-imports them (1-4 s per worker on a
    busy 2-core machine, as long as featurising thousands of whale clips).
    Forking a process that has loaded TensorFlow is unsafe (its thread pools
    and locks are not fork-aware), so then workers are forked from a fork
    server: a clean process (no TensorFlow, no threads) started once per run
    with the feature modules preloaded, which forks each worker in
    milliseconds. That matters since every cache build, even with one worker,
    decodes in child processes, and a crashed worker is replaced
    (:func:`_run_jobs`). ``spawn`` where neither exists.
    """
    methods = multiprocessing.get_all_start_methods()
    if "tensorflow" not in sys.modules and "fork" in methods:
        return "fork"
    if "forkserver" in methods:
        return "forkserver"
    return "spawn"


def _context(method: str):
    """The multiprocessing context for ``method``; a fork server preloads the feature worker's modules."""
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        # librosa.filters (the mel bank; it imports numba) alone takes ~3 s to import.
        context.set_forkserver_preload(["pipeline.records", "pipeline.data.audio", "pipeline.features",
                                        "librosa.filters"])
    return context


# glibc mallopt parameters (malloc.h) and the values feature workers use.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
_TRIM_THRESHOLD = 256 << 20


def tune_allocator() -> bool:
    """Let this process's C allocator reuse freed memory instead of returning it to the kernel.

    The arithmetic allocates arrays of 0.25-4 MB per block (FFT output,
    power, mel, work arrays: scipy's FFT has no ``out=``). With glibc's
    defaults, arrays above 128 KB are fresh ``mmap``s and a freed heap top is
    trimmed, so nearly every block starts with page faults on memory the
    kernel must zero: measured 27 faults and ~75 us of system time per 2 s
    whale clip, a third of the arithmetic. With allocations up to 32 MB kept
    in the heap and the heap trimmed only above 256 MB, a worker reuses the
    same pages chunk after chunk (1 fault per clip; the whole feature stage
    in one process on 5,000 whale clips: 1,810 -> 3,400 clips/s; tested in
    tests/test_records.py). The cost is that a worker keeps
    up to ~256 MB of freed memory for reuse. Used in feature workers (and the
    benchmark's floor), not in the queue's main process. Returns False where
    the C library is not glibc (nothing changed).
    """
    import ctypes

    try:
        # The C library is already loaded: look mallopt up in the process's own symbols
        # (ctypes.util.find_library would run `ldconfig -p`, ~3 ms per worker).
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def _die_with_parent() -> None:
    """Have the kernel SIGKILL this worker when its parent dies (Linux ``PR_SET_PDEATHSIG``).

    A pool worker waits for tasks on a pipe whose write end it also holds, so
    it never sees EOF: without this, the workers of a SIGKILLed runner (power
    cut of the parent, OOM killer) would wait forever, holding memory.
    Under a fork server the parent is the server, which ends with the runner.
    """
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the pipe's EOF ends the solo processes; pool workers may linger
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(0)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _init_worker(limits: Optional["WorkerLimits"] = None) -> None:
    _die_with_parent()
    # A forked worker inherits the queue's SIGTERM handler (which raises in the
    # main loop); a worker should just end, as a spawned one does.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # SIGPROF ends the process: the per-clip CPU limit of _featurise_chunk.
    signal.signal(signal.SIGPROF, signal.SIG_DFL)
    tune_allocator()
    if limits is not None and limits.memory_bytes:
        limit_address_space(limits.memory_bytes)
    # No BLAS / OpenMP thread limits here: the feature arithmetic calls no BLAS (pocketfft,
    # a sparse mel product, elementwise numpy), so a worker never starts such threads
    # (tests/test_records.py checks it stays at one thread). Setting a limit in a forked
    # worker with threadpoolctl made OpenBLAS start its thread pool there: 2 more threads and
    # ~50 ms more system time in the first task (measured), plus ~30 ms to find the libraries.


@dataclasses.dataclass(frozen=True)
class WorkerLimits:
    """What a feature worker may spend, so that one bad file cannot take the machine or the run down.

    Attributes
    ----------
    clip_cpu_seconds : float
        CPU time for decoding one clip; a worker past it is ended by SIGPROF
        and the clip is skipped (after a retry on its own).
    memory_bytes : int
        Address space a worker may add to what it had when it started
        (``RLIMIT_AS``); beyond it allocations fail (``MemoryError``: the clip
        is skipped as too large) instead of the OOM killer picking a process.
    """

    clip_cpu_seconds: float
    memory_bytes: int


def worker_limits(audio, workers: int) -> WorkerLimits:
    """The limits of :class:`WorkerLimits` for clips of ``audio`` (an ``AudioSpec``) and ``workers`` processes.

    CPU: 30 s + 2 s per second of ``audio.duration`` per clip. Decoding and
    resampling the window of even a 768 kHz file takes well under a second
    per second of audio, so a normal clip never gets near it, while a decoder
    caught in a loop is stopped within a minute for whale-sized clips.

    Memory: 2 GiB (a worker's steady state is a few hundred MB: a task's
    audio is capped at ~64 MB, plus features, records and the allocator's
    reuse pool of up to 256 MB) plus 6 copies of the largest window a
    plausible file can need (:func:`pipeline.data.audio.window_frames` at
    ``MAX_FILE_RATE``, capped by ``MAX_WINDOW_BYTES``: raw samples, the mixed
    window and the resampler's buffers), but at most this machine's RAM
    divided among the workers and the queue's own process, and at least 1 GiB.
    """
    from pipeline.data.audio import MAX_FILE_RATE, MAX_WINDOW_BYTES, window_frames

    window = min(MAX_WINDOW_BYTES, 4 * window_frames(MAX_FILE_RATE, sample_rate=audio.sample_rate,
                                                     duration=audio.duration))
    memory = (2 << 30) + 6 * window
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = max(1 << 30, min(memory, ram // (workers + 1)))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        pass
    return WorkerLimits(clip_cpu_seconds=30.0 + 2.0 * audio.duration, memory_bytes=int(memory))


def limit_address_space(extra_bytes: int) -> bool:
    """Let this process's address space grow by at most ``extra_bytes`` from now on (soft ``RLIMIT_AS``).

    Relative to the current size (``/proc/self/statm``), because a forked
    worker starts with its parent's mappings. Returns False where this
    cannot be set (no ``/proc`` or no ``resource`` module): nothing changed.
    """
    try:
        import resource

        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = size + extra_bytes
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        return True
    except (ImportError, OSError, ValueError):
        return False


def _pool(workers: int, limits: Optional[WorkerLimits] = None) -> cf.ProcessPoolExecutor:
    method = start_method()
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=_context(method),
                                  initializer=_init_worker, initargs=(limits,))
    if method == "fork":
        # Fork every worker now, before this process starts threads (tqdm's monitor, TensorFlow).
        for f in [pool.submit(int) for _ in range(workers)]:
            f.result()
    log.debug("feature pool: %d workers (%s)", workers, method)
    return pool


class _Workers:
    """The feature worker pool; :meth:`renew` replaces it with a fresh one after a worker died.

    Even ``cache.workers: 1`` decodes in a child process: a decoder that
    crashes (a segfault in a C library on a hostile file) must cost one clip,
    never the queue's own process.
    """

    def __init__(self, workers: int, limits: Optional[WorkerLimits]):
        self.workers, self.limits = workers, limits
        self.executor = _pool(workers, limits)
        self.generation = 0  # counts renewals
        self.task = functools.partial(_featurise_chunk, clip_cpu_seconds=limits.clip_cpu_seconds if limits else None)
        self.solo: Optional[_Solo] = None

    def submit(self, fn, job):
        return self.executor.submit(fn, job)

    def job_seconds(self, job) -> Optional[float]:
        """Wall time a pool task of ``job`` may take once awaited (:func:`solo_wall_seconds` per clip), or None."""
        wall = solo_wall_seconds(self.limits)
        return None if wall is None else wall * max(1, len(job[0]))

    def kill(self) -> None:
        """End the pool's worker processes (one is stuck): the pool breaks, its unfinished tasks fail."""
        for process in list((getattr(self.executor, "_processes", None) or {}).values()):
            try:
                process.kill()
            except (OSError, ValueError, AttributeError):  # already gone
                pass

    def renew(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.executor = _pool(self.workers, self.limits)
        self.generation += 1

    def one_by_one(self, job) -> dict:
        """Run ``job``'s clips one at a time, each alone in a child process (:class:`_Solo`).

        A clip whose process dies is skipped with the reason (the signal);
        the results of the others are merged in order into one job result.
        """
        if self.solo is None:
            self.solo = _Solo(self.limits)
        rows, rest = job[0], tuple(job[1:])
        merged = {"ids": [], "records": [], "sizes": [], "skipped": [], "notes": []}
        for row in rows:
            result = self.solo.run(((row,), *rest))
            if isinstance(result, str):
                log.warning("feature worker died on %s (%s): %s", row[0], row[1], result)
                merged["skipped"].append((row[0], row[1], result))
                continue
            merged["records"].append(result["records"])  # bytes, joined below
            for key in ("ids", "sizes", "skipped", "notes"):
                merged[key].extend(result[key])
        merged["records"] = b"".join(merged["records"])
        return merged

    def shutdown(self, **kwargs) -> None:
        self.executor.shutdown(**kwargs)
        if self.solo is not None:
            self.solo.close()


def _solo_main(conn, limits: Optional[WorkerLimits], parent_end=None) -> None:
    """The loop of a :class:`_Solo` process: receive a job, acknowledge it, send its result (or ``("error", text)``).

    Ends on ``None``, or when the parent is gone. That is seen as EOF on
    ``conn``: the copy of the parent's end ``parent_end`` that a forked child
    inherits is closed first. Not from the parent's pid: under a fork server
    this process is the server's child, not the queue's. As a second sign
    (a sibling forked later may also hold the parent's end), this process
    being reparented ends it too: its parent, the queue or the fork server
    (which ends with the queue), died.
    """
    if parent_end is not None:
        parent_end.close()
    _init_worker(limits)
    cpu = limits.clip_cpu_seconds if limits else None
    born_of = os.getppid()
    while True:
        try:
            while not conn.poll(1.0):
                if os.getppid() != born_of:
                    return
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:  # the parent is done
            return
        try:
            conn.send(_SOLO_ACK)  # the job arrived: from now on a death is this job's doing
            conn.send(_featurise_chunk(job, clip_cpu_seconds=cpu))
        except (EOFError, OSError):  # the parent is gone
            return
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


_SOLO_ACK = "received"


def solo_wall_seconds(limits: Optional[WorkerLimits]) -> Optional[float]:
    """Wall time one clip may take alone (:class:`_Solo`): 4 x its CPU limit + 60 s, None without limits.

    Generous: it only stops a decoder blocked on I/O (a hung network mount),
    which the CPU limit never does.
    """
    if limits is None or not limits.clip_cpu_seconds:
        return None
    return 4 * limits.clip_cpu_seconds + 60.0


class _Solo:
    """One child process that runs jobs one at a time and says how it died when it does.

    Used to retry clips one by one after a worker died: a clip whose process
    dies (or takes more than :func:`solo_wall_seconds`) is the culprit. The
    process is restarted for the next clip. A process found dead before it
    acknowledged a job (it died idle, e.g. its parent check misfired) is no
    culprit: it is restarted once and the job sent again.
    """

    def __init__(self, limits: Optional[WorkerLimits]):
        self.limits = limits
        self.wall = solo_wall_seconds(limits)
        self.context = _context(start_method())
        self.process = self.conn = None

    def _start(self) -> None:
        self.conn, child = self.context.Pipe()
        self.process = self.context.Process(target=_solo_main, args=(child, self.limits, self.conn), daemon=True,
                                            name="feature-solo")
        self.process.start()
        child.close()

    def _deliver(self, job) -> bool:
        """Send ``job`` and wait for its acknowledgement; False when the process died without it."""
        if self.process is not None and not self.process.is_alive():
            self.close()
        if self.process is None:
            self._start()
        try:
            self.conn.send(job)
            if not self.conn.poll(self.wall):
                return False
            return self.conn.recv() == _SOLO_ACK
        except (EOFError, OSError):
            return False

    def run(self, job):
        """The job's result dict, or a skip reason (str) when the process died running it (or hung)."""
        if not self._deliver(job):
            self._kill()  # died idle, not running this job: a fresh process gets it
            if not self._deliver(job):
                self._kill()
                return "decoder process could not be started or died before receiving the clip"
        try:
            if not self.conn.poll(self.wall):
                self._kill()
                return (f"decoding took more than {self.wall:g} s of wall time (blocked I/O?); stopped")
            result = self.conn.recv()
        except (EOFError, OSError):
            self.process.join()
            reason = _death_reason(self.process.exitcode, self.limits)
            self.close()
            return reason
        if isinstance(result, tuple):
            raise RuntimeError(f"feature extraction failed: {result[1]}")
        return result

    def _kill(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.kill()
        self.close()

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.send(None)
            except OSError:  # it died
                pass
            self.conn.close()
        if self.process is not None:
            self.process.join(timeout=5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        self.process = self.conn = None


def _death_reason(exitcode: Optional[int], limits: Optional[WorkerLimits]) -> str:
    """Why a clip was skipped when the process decoding it alone died with ``exitcode``."""
    if exitcode is not None and exitcode < 0:
        number = -exitcode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown signal"
        if number == signal.SIGPROF and limits is not None:
            return (f"decoding took more than {limits.clip_cpu_seconds:g} s of CPU time; stopped "
                    f"(signal {number}, {name})")
        if number == signal.SIGKILL:
            return f"decoder process was killed (signal {number}, {name}; out of memory?)"
        return f"decoder crashed (signal {number}, {name})"
    return f"decoder process exited unexpectedly (exit status {exitcode})"


def _run_jobs(jobs: Sequence, pool, window: int, task=_featurise_chunk):
    """Yield job results in order with at most ``window`` jobs in flight (bounded memory).

    ``pool``: a :class:`_Workers` (or anything with ``submit``), None to run
    here. When a worker dies (a segfault in a decoder, the OOM killer,
    ``os._exit``), the pool breaks and every unfinished job fails with
    ``BrokenProcessPool``: each such job is rerun clip by clip, every clip
    alone in a child process (:meth:`_Workers.one_by_one`), so only a clip
    that kills its process again is lost, skipped with the signal named; the
    pool is replaced and the remaining jobs go on. The results, and so the
    shards, are those of a build without the culprit. A task awaited for
    longer than ``pool.job_seconds(job)`` (a worker blocked on I/O) is
    treated the same way: the pool's workers are killed, and a clip alone
    past :func:`solo_wall_seconds` is skipped.
    """
    if pool is None:
        for job in jobs:
            yield task(job)
        return
    task = getattr(pool, "task", task)
    pending: collections.deque = collections.deque()  # (job, future, pool generation), in job order
    it = iter(jobs)
    done = object()

    def renew(generation):
        if generation == pool.generation:  # the first sign that this pool broke: replace it once
            log.warning("a feature worker process died; retrying the clips of its unfinished tasks one by one")
            pool.renew()

    def submit_more():
        while len(pending) < window:
            job = next(it, done)
            if job is done:
                return
            generation = getattr(pool, "generation", 0)
            try:
                future = pool.submit(task, job)
            except BrokenProcessPool:  # a worker died since the last result was collected
                renew(generation)
                generation, future = pool.generation, pool.submit(task, job)
            pending.append((job, future, generation))

    submit_more()
    while pending:
        job, future, generation = pending.popleft()
        seconds = pool.job_seconds(job) if hasattr(pool, "job_seconds") else None
        try:
            result = future.result() if seconds is None else future.result(timeout=seconds)
        except BrokenProcessPool:
            renew(generation)
            result = pool.one_by_one(job)
        except cf.TimeoutError:  # a worker blocked (I/O on a hung mount uses no CPU): stop the pool
            log.warning("a feature task took more than %g s of wall time; stopping the pool and retrying "
                        "its clips one by one", seconds)
            pool.kill()
            renew(generation)
            result = pool.one_by_one(job)
        submit_more()
        yield result


def _progress_bar(total: int, name: str, *, disable: bool = False):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"{name}: features", unit="clip", dynamic_ncols=True, file=sys.stderr,
                mininterval=0.5, disable=disable)


def _check_disk(folder: str, needed: int) -> None:
    os.makedirs(folder, exist_ok=True)
    free = shutil.disk_usage(folder).free
    # 10 % headroom for TFRecord framing and the rest of the run's outputs.
    if needed * 1.1 > free:
        raise CacheError(
            f"the feature cache needs about {needed / 1e9:.2f} GB but only {free / 1e9:.2f} GB are free "
            f"under {folder}; free some space or point `output` at a larger disk"
        )


def _versions() -> dict:
    # The libraries whose code decides the feature values (TensorFlow only reads them):
    # an imported module's own __version__, else the installed metadata (importing
    # importlib.metadata and parsing costs ~10-20 ms).
    out = {"python": sys.version.split()[0]}
    for name in ("numpy", "scipy", "librosa", "soundfile"):
        version = getattr(sys.modules.get(name), "__version__", None)
        if not isinstance(version, str):
            from importlib import metadata

            try:
                version = metadata.version(name)
            except metadata.PackageNotFoundError:  # pragma: no cover - all are requirements
                continue
        out[name] = version
    return out


# ----------------------------------------------------------------------------- reading


class FeatureCache:
    """A complete cache folder: its manifest and tf.data readers over its shards."""

    def __init__(self, folder: str):
        self.folder = folder
        self.manifest = io.read_json(os.path.join(folder, MANIFEST))
        self.shape = tuple(self.manifest["shape"])

    def count(self, split: str) -> int:
        return self.manifest["splits"].get(split, {}).get("count", 0)

    def ids(self, split: str) -> List[str]:
        return list(self.manifest["splits"].get(split, {}).get("ids", []))

    @property
    def skipped(self) -> List[dict]:
        return list(self.manifest["skipped"])

    def files(self, split: str) -> List[str]:
        names = self.manifest["splits"].get(split, {}).get("shards", [])
        return [os.path.join(self.folder, n) for n in names]

    def dataset(self, split: str):
        """tf.data.Dataset of ``(id: string, x: float32 [shape])`` in a deterministic order.

        Shards are read by a parallel interleave with large read buffers;
        records are parsed a batch at a time (``tf.io.parse_example`` and one
        ``decode_raw`` per batch cost about as much as parsing a single record,
        so per-record parsing would dominate), then unbatched.
        """
        import tensorflow as tf

        files = self.files(split)
        if not files:
            return None
        shape = self.shape
        spec = {"id": tf.io.FixedLenFeature([], tf.string), "x": tf.io.FixedLenFeature([], tf.string)}

        # Plain graph code: AutoGraph has nothing to convert (and would re-read this file's source).
        @tf.autograph.experimental.do_not_convert
        def parse(records):
            parsed = tf.io.parse_example(records, spec)
            x = tf.reshape(tf.io.decode_raw(parsed["x"], tf.float32), (-1, *shape))
            return parsed["id"], x

        ds = tf.data.Dataset.from_tensor_slices(files)
        @tf.autograph.experimental.do_not_convert
        def read(path):
            return tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER)

        ds = ds.interleave(
            read,
            cycle_length=max(1, min(len(files), 4)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        ds = ds.batch(_PARSE_BATCH).map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.unbatch()

    def extra_windows(self, split: str):
        """Later windows of clips longer than ``audio.duration``: None, since this cache holds each
        clip's first ``audio.duration`` seconds only (the prediction stage then predicts clips as they are)."""
        return None

    def window_count(self, split: str) -> int:
        """Number of :meth:`extra_windows` of ``split``."""
        return 0

    def load(self, split: str) -> Tuple[List[str], np.ndarray]:
        """All of a split in memory: (ids, x [n, *shape]); for small data, plots and tests."""
        ds = self.dataset(split)
        if ds is None:
            return [], np.zeros((0, *self.shape), np.float32)
        ids, xs = [], []
        for i, x in ds.batch(1024).as_numpy_iterator():
            ids.extend(v.decode() for v in i)
            xs.append(x)
        return ids, np.concatenate(xs)


def list_shards(folder: str) -> List[str]:
    return io.glob(os.path.join(folder, "*.tfrecord"))


# ----------------------------------------------------------------------------- input pipelines


def labelled(ds, ids: Sequence[str], labels: np.ndarray):
    """Keep only examples whose id is in ``ids`` and pair each with its label row.

    ds : tf.data.Dataset of (id, x); labels : [len(ids), C] float32 aligned with ``ids``.
    Returns a dataset of (id, x, y) in the order of ``ds``. Labels come from the manifest,
    never from the cache, so the cache holds no label information at all. The join runs a
    batch at a time (one hash-table lookup and one mask per batch, not per example).
    """
    import tensorflow as tf

    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(list(ids), tf.string), tf.range(len(ids), dtype=tf.int64)),
        default_value=-1,
    )
    label_table = tf.constant(np.asarray(labels, np.float32))

    @tf.autograph.experimental.do_not_convert
    def join(i, x):
        row = table.lookup(i)
        keep = row >= 0
        row = tf.boolean_mask(row, keep)
        return tf.boolean_mask(i, keep), tf.boolean_mask(x, keep), tf.gather(label_table, row)

    ds = ds.batch(_PARSE_BATCH).map(join, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.unbatch()


def fits_in_memory(n_examples: int, shape: Sequence[int], fraction: float = 0.25) -> bool:
    """Whether ``n_examples`` float32 arrays of ``shape`` take under ``fraction`` of available RAM."""
    need = n_examples * int(np.prod(shape)) * 4
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return False
    return need < fraction * avail
