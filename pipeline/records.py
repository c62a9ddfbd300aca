"""The feature cache: features computed once, stored as sharded TFRecords, read with tf.data.

Layout of ``<cache_root>/<key>/`` (``key`` hashes the data, audio and feature
settings, so experiments that agree on them share one cache)::

    train-00000-of-00002.tfrecord   # tf.train.Example: id (bytes), x (raw float32 bytes)
    test-00000-of-00001.tfrecord
    manifest.json                    # written last: a cache without it is incomplete

Extraction decodes and featurises chunks of clips in a process pool (``spawn``,
so workers never inherit TensorFlow's threads), keeps at most ``2 x workers``
chunks in flight so memory stays bounded whatever the dataset size, and
streams examples into shards of about ``shard_mb`` MB in the parent. Bad clips
are skipped and listed with their reason in the manifest.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import glob
import logging
import multiprocessing
import os
import shutil
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from pipeline import io
from pipeline.config import Experiment, stable_hash
from pipeline.data.base import Dataset

log = logging.getLogger(__name__)

CACHE_VERSION = 1
MANIFEST = "manifest.json"


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


def cache_key(exp: Experiment) -> str:
    return stable_hash(cache_settings(exp))


# ----------------------------------------------------------------------------- worker side


def _featurise_chunk(job) -> dict:
    """Decode and featurise one chunk of clips (runs in a worker process; no TensorFlow)."""
    from pipeline.data.audio import load_clip
    from pipeline.features import compute_features

    rows, feature_name, feature_params, audio, min_samples = job
    ids, arrays, skipped, notes = [], [], [], []
    for clip_id, path in rows:
        decoded = load_clip(
            path,
            sample_rate=audio.sample_rate,
            duration=audio.duration,
            min_samples=min_samples,
            max_nonfinite_fraction=audio.max_nonfinite_fraction,
        )
        if decoded.samples is None:
            skipped.append((clip_id, path, decoded.reason))
            continue
        ids.append(clip_id)
        arrays.append(decoded.samples)
        notes.extend((clip_id, n) for n in decoded.notes)
    features = None
    if arrays:
        batch = np.stack(arrays).astype(np.float32, copy=False)
        features = compute_features(feature_name, feature_params, batch, sample_rate=audio.sample_rate)
        features = np.ascontiguousarray(features, dtype=np.float32)
    return {"ids": ids, "features": features, "skipped": skipped, "notes": notes}


# ----------------------------------------------------------------------------- writing


def _example(clip_id: str, x: np.ndarray) -> bytes:
    import tensorflow as tf

    feature = {
        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[clip_id.encode()])),
        "x": tf.train.Feature(bytes_list=tf.train.BytesList(value=[x.tobytes()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


class _ShardWriter:
    """Streams examples of one split into ``<split>-NNNNN.partial`` files, then names them ``-of-``."""

    def __init__(self, folder: str, split: str, shard_bytes: int):
        self.folder, self.split, self.shard_bytes = folder, split, shard_bytes
        self.partials: List[str] = []
        self.writer = None
        self.size = 0
        self.count = 0

    def write(self, clip_id: str, x: np.ndarray) -> None:
        import tensorflow as tf

        if self.writer is None or self.size >= self.shard_bytes:
            self._close()
            path = os.path.join(self.folder, f"{self.split}-{len(self.partials):05d}.partial")
            self.partials.append(path)
            self.writer = tf.io.TFRecordWriter(path)
            self.size = 0
        record = _example(clip_id, x)
        self.writer.write(record)
        self.size += len(record)
        self.count += 1

    def _close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None

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
    key = cache_key(exp)
    folder = os.path.join(cache_root, key)
    manifest_path = os.path.join(folder, MANIFEST)
    if os.path.isfile(manifest_path):
        cache = FeatureCache(folder)
        log.info("feature cache hit: %s (%d train, %d test clips)", folder, cache.count("train"), cache.count("test"))
    else:
        if os.path.isdir(folder):
            log.warning("feature cache %s has no manifest (an interrupted build); rebuilding it", folder)
            shutil.rmtree(folder)
        cache = _build(dataset, exp, folder)
    _check_bad_fraction(cache, exp)
    return cache


def _check_bad_fraction(cache: "FeatureCache", exp: Experiment) -> None:
    total = cache.manifest["total_files"]
    bad = len(cache.manifest["skipped"])
    if total and bad / total > exp.audio.max_bad_fraction:
        raise CacheError(
            f"{bad} of {total} audio files ({bad / total:.0%}) could not be used, more than "
            f"audio.max_bad_fraction={exp.audio.max_bad_fraction}; refusing to train on the rest. "
            f"Reasons are listed in {os.path.join(cache.folder, MANIFEST)}"
        )


def _build(dataset: Dataset, exp: Experiment, folder: str) -> "FeatureCache":
    from pipeline.features import feature_shape, min_samples

    started = time.time()
    n_samples = int(round(exp.audio.duration * exp.audio.sample_rate))
    shape = feature_shape(exp.features.name, exp.features.params, n_samples=n_samples, sample_rate=exp.audio.sample_rate)
    clip_bytes = int(np.prod(shape)) * 4
    n_clips = len(dataset.manifest)
    _check_disk(os.path.dirname(folder), n_clips * (clip_bytes + 64))
    tmp_folder = folder + ".building"
    if os.path.isdir(tmp_folder):
        shutil.rmtree(tmp_folder)
    os.makedirs(tmp_folder)

    workers = exp.cache.workers or os.cpu_count() or 1
    need = min_samples(exp.features.name, exp.features.params)
    splits: Dict[str, dict] = {}
    skipped, repaired = [], []
    shard_bytes = int(exp.cache.shard_mb * 1e6)
    bar = _progress_bar(n_clips, exp.name)
    pool = _pool(workers) if workers > 1 else None
    try:
        for split in ("train", "test"):
            rows = dataset.manifest.loc[dataset.manifest["split"] == split, ["id", "path"]]
            rows = list(rows.itertuples(index=False, name=None))
            jobs = [
                (rows[i : i + exp.cache.chunk_size], exp.features.name, exp.features.params, exp.audio, need)
                for i in range(0, len(rows), exp.cache.chunk_size)
            ]
            writer = _ShardWriter(tmp_folder, split, shard_bytes)
            ids: List[str] = []
            for result in _run_jobs(jobs, pool, window=2 * workers):
                if result["features"] is not None:
                    for clip_id, x in zip(result["ids"], result["features"]):
                        writer.write(clip_id, x)
                ids.extend(result["ids"])
                skipped.extend({"id": i, "split": split, "path": p, "reason": r} for i, p, r in result["skipped"])
                repaired.extend({"id": i, "note": n} for i, n in result["notes"])
                bar.update(len(result["ids"]) + len(result["skipped"]))
            splits[split] = {"count": writer.count, "shards": writer.finish(), "ids": ids}
    finally:
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
        shutil.rmtree(tmp_folder)
    else:
        os.replace(tmp_folder, folder)
    log.info(
        "features written: %d clips in %.1f s (%.0f clips/s), %d skipped -> %s",
        n_clips, seconds, n_clips / max(seconds, 1e-9), len(skipped), folder,
    )
    return FeatureCache(folder)


def _pool(workers: int) -> cf.ProcessPoolExecutor:
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _run_jobs(jobs: Sequence, pool: Optional[cf.ProcessPoolExecutor], window: int):
    """Yield job results in order with at most ``window`` jobs in flight (bounded memory)."""
    if pool is None:
        for job in jobs:
            yield _featurise_chunk(job)
        return
    pending: collections.deque = collections.deque()
    it = iter(jobs)
    for job in it:
        pending.append(pool.submit(_featurise_chunk, job))
        if len(pending) >= window:
            break
    while pending:
        result = pending.popleft().result()
        nxt = next(it, None)
        if nxt is not None:
            pending.append(pool.submit(_featurise_chunk, nxt))
        yield result


def _progress_bar(total: int, name: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"{name}: features", unit="clip", dynamic_ncols=True, file=sys.stderr, mininterval=0.5)


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
    import librosa
    import soundfile

    out = {"python": sys.version.split()[0], "numpy": np.__version__, "librosa": librosa.__version__,
           "soundfile": soundfile.__version__}
    try:
        import tensorflow as tf

        out["tensorflow"] = tf.__version__
    except ImportError:  # pragma: no cover - tensorflow is a hard requirement
        pass
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
        """tf.data.Dataset of ``(id: string, x: float32 [shape])`` in a deterministic order."""
        import tensorflow as tf

        files = self.files(split)
        if not files:
            return None
        shape = self.shape

        def parse(record):
            parsed = tf.io.parse_single_example(
                record, {"id": tf.io.FixedLenFeature([], tf.string), "x": tf.io.FixedLenFeature([], tf.string)}
            )
            x = tf.reshape(tf.io.decode_raw(parsed["x"], tf.float32), shape)
            return parsed["id"], x

        ds = tf.data.Dataset.from_tensor_slices(files)
        ds = ds.interleave(
            tf.data.TFRecordDataset,
            cycle_length=max(1, min(len(files), 4)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

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
    return sorted(glob.glob(os.path.join(folder, "*.tfrecord")))


# ----------------------------------------------------------------------------- input pipelines


def labelled(ds, ids: Sequence[str], labels: np.ndarray):
    """Keep only examples whose id is in ``ids`` and pair each with its label row.

    ds : tf.data.Dataset of (id, x); labels : [len(ids), C] float32 aligned with ``ids``.
    Returns a dataset of (id, x, y). Labels come from the manifest, never from the cache,
    so the cache holds no label information at all.
    """
    import tensorflow as tf

    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(list(ids), tf.string), tf.range(len(ids), dtype=tf.int64)),
        default_value=-1,
    )
    label_table = tf.constant(np.asarray(labels, np.float32))
    ds = ds.map(lambda i, x: (i, x, table.lookup(i)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.filter(lambda i, x, row: row >= 0)
    return ds.map(lambda i, x, row: (i, x, tf.gather(label_table, row)), num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True)


def fits_in_memory(n_examples: int, shape: Sequence[int], fraction: float = 0.25) -> bool:
    """Whether ``n_examples`` float32 arrays of ``shape`` take under ``fraction`` of available RAM."""
    need = n_examples * int(np.prod(shape)) * 4
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return False
    return need < fraction * avail
