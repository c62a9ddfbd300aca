"""Building the feature cache: features computed once per data and settings, stored as sharded TFRecords.

Layout of ``<cache_root>/<key>/`` (``key`` hashes the data, audio, feature and
prediction-window settings and the audio files' identity - ids, paths, sizes,
modification times - so experiments that agree on them share one cache and an
edited file gives a new cache)::

    train-00000-of-00002.tfrecord   # tf.train.Example: id (bytes), x (raw float32 bytes)
    test-00000-of-00001.tfrecord
    test.windows-00000-of-00001.tfrecord  # extra windows of clips longer than audio.duration, if any
    manifest.json                    # written last: a cache without it is incomplete

Chunks of clips are decoded, featurised and serialised in worker processes
(:mod:`pipeline.cache.workers`, :func:`pipeline.cache.featurise.featurise_chunk`);
each returns its chunk as finished TFRecord bytes, so the parent only appends
bytes to shards of about ``shard_mb`` MB; it keeps at most ``2 x workers``
chunks in flight and a chunk holds at most ~64 MB of audio (:func:`chunk_clips`),
so memory stays bounded whatever the dataset size and clip length. Bad clips
are skipped and listed with their reason in the manifest. Records are in
manifest order whatever the number of workers.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import time
import warnings
from typing import Dict, List, Optional, Tuple

import numpy as np

from pipeline import io, layout, ownership, schema
from pipeline.cache.encode import ShardWriter
from pipeline.cache.featurise import Windows
from pipeline.cache.read import FeatureCache, windows_split
from pipeline.cache.workers import Workers, run_jobs, start_method, worker_limits
from pipeline.data.base import Dataset
from pipeline.errors import DataError
from pipeline.hashing import stable_hash

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: bad-audio checks of issue 14 (absurd float values skipped, decoding windowed)
# Audio bytes (float32 samples) per worker task: with 2 s whale clips a task
# holds cache.chunk_size clips; with 60 s recordings at 48 kHz (11.5 MB each)
# it holds 5, so a worker's memory stays bounded whatever the clip length.
_CHUNK_AUDIO_BYTES = 64 << 20


class CacheError(DataError):
    """The feature cache cannot be built (disk full, too many bad files, ...)."""


def window_spec(data, audio, predict) -> Optional[Windows]:
    """The extra windows of clips longer than ``audio.duration`` (``AudioSettings``), per ``predict`` (``PredictSettings``).

    hop: ``predict.hop_seconds`` or half of ``audio.duration``, in samples
    (rounded, at least 1); at most ``predict.max_seconds`` of a clip are read.
    A clip gets extra windows only when it overhangs the first window by at
    least a twentieth of a window (``min_overhang``): a file a few samples
    longer than the others (an off-by-one export, a resampler's rounding)
    would otherwise be predicted as the max of two near-identical windows.
    None for long recordings with boxes (``data`` from a source in
    :data:`pipeline.schema.RECORDING_SOURCES`): the crops strategy predicts
    them by its own windows over the whole cached recording.
    """
    if data.name in schema.RECORDING_SOURCES:
        return None
    window = int(round(audio.duration * audio.sample_rate))
    hop_seconds = audio.duration / 2 if predict.hop_seconds is None else predict.hop_seconds
    return Windows(hop=max(1, int(round(hop_seconds * audio.sample_rate))),
                   max_samples=max(1, int(round(predict.max_seconds * audio.sample_rate))),
                   min_overhang=max(1, window // 20))


def cache_settings(data, audio, features, predict) -> dict:
    """What the cached content depends on (not the pool size or shard size).

    ``data`` and ``features``: components (name and params); ``audio``:
    ``AudioSettings``; ``predict``: ``PredictSettings``, whose hop and
    ``max_seconds`` decide the extra windows (its ``aggregate`` does not).
    """
    audio_settings = dataclasses.asdict(audio)
    audio_settings.pop("max_bad_fraction")  # a check applied after extraction, not part of the content
    return {
        "version": CACHE_VERSION,
        "data": data.to_dict(),
        "audio": audio_settings,
        "features": features.to_dict(),
        "windows": _as_dict(window_spec(data, audio, predict)),
    }


def _as_dict(windows: Optional[Windows]) -> Optional[dict]:
    return None if windows is None else dataclasses.asdict(windows)


def cache_key(data, audio, features, predict, files: str) -> str:
    """The cache folder's name: the content settings (:func:`cache_settings`) plus ``files``, the audio files' identity.

    ``files`` is :attr:`pipeline.data.identity.DataIdentity.audio` (ids, splits,
    paths, each file's size and modification time), so a replaced, added or
    removed file gives a new cache while experiments on the same files and
    settings share one. Labels are not part of it: they never enter the cache.
    """
    return stable_hash({**cache_settings(data, audio, features, predict), "files": files})


def ensure_features(dataset: Dataset, cache_root: str, *, data, audio, features, cache, predict,
                    label: str = "cache", progress: bool = True) -> FeatureCache:
    """Return the feature cache of ``dataset`` under ``cache_root``, building it first when missing or incomplete.

    ``data``, ``features``: components (name and params); ``audio``, ``cache``,
    ``predict``: ``AudioSettings``, ``CacheSettings``, ``PredictSettings``;
    ``label`` names the progress bar (the experiment's name).

    Raises :class:`CacheError` when the disk cannot hold the cache or when more
    than ``audio.max_bad_fraction`` of the files are bad.
    """
    key = cache_key(data, audio, features, predict, dataset.identity.audio)
    folder = os.path.join(cache_root, key)
    manifest_path = os.path.join(folder, layout.CACHE_MANIFEST)
    if io.isfile(manifest_path):
        found = FeatureCache(folder)
        log.info("feature cache hit: %s (%d train, %d test clips)", folder, found.count("train"), found.count("test"))
    else:
        if io.isdir(folder):
            log.warning("feature cache %s has no manifest (an interrupted build); rebuilding it", folder)
            ownership.remove_owned(folder, recognise=_only_cache_files)
        build = _build_remote if io.is_remote(folder) else _build
        found = build(dataset, folder, _Settings(data, audio, features, cache, predict, label), progress=progress)
    _check_bad_fraction(found, audio)
    return found


@dataclasses.dataclass(frozen=True)
class _Settings:
    """What a build needs, passed along together (see :func:`ensure_features` for each)."""

    data: object
    audio: object
    features: object
    cache: object
    predict: object
    label: str


def _only_cache_files(folder: str) -> bool:
    """A cache folder is recognised as the pipeline's by its content: nothing in it but shards and the manifest.

    (Cache folders carry no marker file, so that a cache's listing stays its
    shards and manifest; a folder with anything else in it is never deleted.)
    """
    return ownership.only_names(
        folder, lambda name: name == layout.CACHE_MANIFEST or name.endswith((".tfrecord", ".partial")))


def _check_bad_fraction(cache: FeatureCache, audio) -> None:
    """Raise :class:`CacheError` when more than ``audio.max_bad_fraction`` of the files could not be used."""
    total = cache.manifest["total_files"]
    bad = len(cache.manifest["skipped"])
    if total and bad / total > audio.max_bad_fraction:
        raise CacheError(
            f"{bad} of {total} audio files ({bad / total:.0%}) could not be used, more than "
            f"audio.max_bad_fraction={audio.max_bad_fraction}; refusing to train on the rest. "
            f"Reasons are listed in {os.path.join(cache.folder, layout.CACHE_MANIFEST)}"
        )


def _build_remote(dataset: Dataset, folder: str, settings: _Settings, *, progress: bool = True) -> FeatureCache:
    """Build the cache in a local staging folder, then upload it to ``folder`` (gs://, ...), manifest last.

    Shards are written at local-disk speed by the usual writer; the upload is
    one sequential copy per shard. The staging folder needs the cache's size
    on the local disk (checked like a local build).
    """
    import tempfile

    staging = tempfile.mkdtemp(prefix="feature-cache-")
    try:
        local = _build(dataset, os.path.join(staging, os.path.basename(folder)), settings, progress=progress)
        started = time.time()
        io.copy_tree_up(local.folder, folder, last=layout.CACHE_MANIFEST)
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


def _build(dataset: Dataset, folder: str, settings: _Settings, *, progress: bool = True) -> FeatureCache:
    from pipeline.features import feature_shape, min_samples

    audio, features = settings.audio, settings.features
    started = time.time()
    n_samples = int(round(audio.duration * audio.sample_rate))
    shape = feature_shape(features.name, features.params, n_samples=n_samples, sample_rate=audio.sample_rate)
    clip_bytes = int(np.prod(shape)) * 4
    n_clips = len(dataset.manifest)
    _check_disk(os.path.dirname(folder), n_clips * (clip_bytes + 64))
    tmp_folder = folder + ".building"
    ownership.remove_owned(tmp_folder, recognise=_only_cache_files)
    os.makedirs(tmp_folder)

    workers = settings.cache.workers or os.cpu_count() or 1
    need = min_samples(features.name, features.params)
    windows = window_spec(settings.data, audio, settings.predict)
    splits: Dict[str, dict] = {}
    skipped, repaired, window_notes = [], [], []
    shard_bytes = int(settings.cache.shard_mb * 1e6)
    chunk = chunk_clips(settings.cache.chunk_size, n_samples)
    if start_method() == "fork":
        _warm_up(features, audio.sample_rate, need)
    # The pool starts before the progress bar's monitor thread, so forked workers inherit no threads.
    read_seconds = audio.duration if windows is None else settings.predict.max_seconds
    pool = Workers(workers, worker_limits(audio, workers, read_seconds))
    bar = None  # made at the first result: importing tqdm (~25 ms) then overlaps the workers' first tasks
    try:
        for split in ("train", "test"):
            rows = dataset.manifest.loc[dataset.manifest["split"] == split, ["id", "path"]]
            rows = list(rows.itertuples(index=False, name=None))
            jobs = [
                (rows[start:stop], features.name, features.params, audio, need, windows)
                for start, stop in task_bounds(len(rows), chunk, workers)
            ]
            if any(io.is_remote(p) for _, p in rows):
                jobs = map(_fetched, jobs)  # lazily: at most `window` chunks of bytes in memory
            writer = ShardWriter(tmp_folder, split, shard_bytes)
            window_writer = ShardWriter(tmp_folder, windows_split(split), shard_bytes)
            ids: List[str] = []
            window_ids: List[str] = []
            for result in run_jobs(jobs, pool, window=2 * workers):
                writer.write_chunk(result["records"], result["sizes"])
                ids.extend(result["ids"])
                window_writer.write_chunk(result["window_records"], result["window_sizes"])
                window_ids.extend(result["window_ids"])
                skipped.extend({"id": i, "split": split, "path": p, "reason": r} for i, p, r in result["skipped"])
                repaired.extend({"id": i, "note": n} for i, n in result["notes"])
                window_notes.extend({"id": i, "split": split, "note": n} for i, n in result["window_notes"])
                if bar is None:
                    bar = _progress_bar(n_clips, settings.label, disable=not progress)
                bar.update(len(result["ids"]) + len(result["skipped"]))
            splits[split] = {"count": writer.count, "shards": writer.finish(), "ids": ids}
            if window_ids:  # listed only when the split has long clips
                splits[windows_split(split)] = {"count": window_writer.count, "shards": window_writer.finish(),
                                                "ids": window_ids}
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    for item in skipped:
        log.warning("skipped %s (%s): %s", item["id"], item["split"], item["reason"])
    for item in repaired:
        log.info("repaired %s: %s", item["id"], item["note"])
    for item in window_notes:
        log.warning("extra windows of %s (%s): %s", item["id"], item["split"], item["note"])
    seconds = time.time() - started
    manifest = {
        "complete": True,
        "key": os.path.basename(folder),
        "settings": cache_settings(settings.data, audio, features, settings.predict),
        "files": dataset.identity.audio,
        "feature": features.name,
        "shape": list(shape),
        "dtype": "float32",
        "total_files": n_clips,
        "splits": splits,
        "skipped": skipped,
        "repaired": repaired,
        "window_notes": window_notes,
        "seconds": round(seconds, 2),
        "clips_per_second": round(n_clips / max(seconds, 1e-9), 1),
        "library_versions": _versions(),
    }
    io.write_json(os.path.join(tmp_folder, layout.CACHE_MANIFEST), manifest)
    if os.path.isdir(folder):  # a concurrent builder finished first: keep theirs
        ownership.remove_owned(tmp_folder, recognise=_only_cache_files)
    else:
        os.replace(tmp_folder, folder)
    log.info(
        "features written: %d clips in %.1f s (%.0f clips/s, %d worker(s), %d clips per task), %d skipped -> %s",
        n_clips, seconds, n_clips / max(seconds, 1e-9), workers, chunk, len(skipped), folder,
    )
    return FeatureCache(folder)


def _warm_up(features, sample_rate: int, n_samples: int) -> None:
    """Compute the ``features`` (a component) of one silent clip here, so that forked workers inherit a warm process.

    The first mel features in a process import librosa.filters and build the
    filter bank (~3 s); done once here, every worker forked for every build
    of this run starts with both (the queue's check_settings usually did it
    already, then this costs microseconds).
    """
    from pipeline.features import compute_features

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. empty mel bands: the queue reported them already
        try:
            compute_features(features.name, features.params, np.zeros((1, n_samples), np.float32),
                             sample_rate=sample_rate)
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
