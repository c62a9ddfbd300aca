"""The feature worker's task: decode, featurise and serialise one chunk of clips (no TensorFlow).

Every clip becomes one record of its first ``audio.duration`` seconds (the
main shards). A clip longer than that also gives its *extra windows* of the
same length (:func:`window_starts`: starts at ``hop``, ``2 hop``, ..., the
last one ending at the clip's end), featurised exactly as a clip made of
that audio and written to separate shards, so that the prediction stage can
see the whole clip while the main shards stay as they were. Only a file
whose header (or frames read) says it is longer than the clip is read
further (or one of unknown length), so normal clips cost nothing more.
"""

from __future__ import annotations

import dataclasses
import signal
from typing import Dict, List, Optional, Tuple

import numpy as np

from pipeline.cache.encode import frame_examples

# CPU time a worker may spend decoding, per second of audio read (beyond a fixed
# allowance per clip: pipeline.cache.workers.worker_limits).
CPU_SECONDS_PER_AUDIO_SECOND = 2.0
# Audio (float32 bytes) of the extra windows featurised in one batch: a 600 s
# clip at 48 kHz has ~20 one-minute windows, 230 MB of overlapping audio.
_WINDOW_BATCH_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class Windows:
    """Extra windows of clips longer than ``audio.duration``, in samples at ``audio.sample_rate``.

    Attributes
    ----------
    hop : int >= 1
        Samples between the starts of consecutive windows.
    max_samples : int >= 1
        Samples of a clip read at most (``predict.max_seconds``); beyond them
        a clip has no windows.
    min_overhang : int >= 1
        A clip gets extra windows only when it is at least this many samples
        longer than a window.
    """

    hop: int
    max_samples: int
    min_overhang: int = 1


def window_starts(length: int, window: int, hop: int, min_overhang: int = 1) -> List[int]:
    """Starts (samples) of the extra windows of a clip of ``length`` samples; ``[]`` when ``length <= window``.

    The first window (start 0) is the clip itself. The extra ones start at
    ``hop, 2 hop, ...`` while they end before the clip's end, and one more
    ends exactly at it (start ``length - window``), so the clip's end is
    always seen and no start repeats.
    """
    if length - window < max(1, min_overhang):
        return []
    return [*range(hop, length - window, hop), length - window]


def featurise_chunk(job, *, clip_cpu_seconds: Optional[float] = None) -> dict:
    """Decode, featurise and serialise one chunk of clips (runs in a worker process; no TensorFlow).

    ``job``: ``(rows, feature name, feature params, audio (AudioSettings),
    min_samples, windows (Windows))``; a row is ``(id, path)`` for a local
    file or ``(id, path, bytes or skip reason)`` for one fetched by the parent.

    Returns the chunk's framed TFRecord records concatenated in ``records``
    (bytes) with each record's length in ``sizes``, so that the parent only
    appends bytes to shard files: building protos and checksums per clip in
    the parent would make it the bottleneck of the whole stage. A clip whose
    features are not all finite is skipped (:func:`_finite_features`). The
    extra windows of long clips come the same way in ``window_records`` and
    ``window_sizes`` (their clip's id per record in ``window_ids``, clips in
    chunk order, a clip's windows in order); ``window_notes`` holds
    ``(id, note)`` for windows left out (non-finite features) and clips read
    only up to ``windows.max_samples``.

    ``clip_cpu_seconds`` (feature workers only: it ends the process) bounds
    the CPU time of decoding each clip: a CPU timer (``ITIMER_PROF``, one
    system call per clip) is armed before each clip, and SIGPROF's default
    action ends a worker stuck in a decoder; the parent then isolates the
    clip (:func:`pipeline.cache.workers.run_jobs`). A long clip's second read
    gets ``CPU_SECONDS_PER_AUDIO_SECOND`` more per second read.
    """
    from pipeline.data.audio import clip_length, load_clip

    rows, feature_name, feature_params, audio, min_samples, windows = job
    n_clip = clip_length(sample_rate=audio.sample_rate, duration=audio.duration)
    ids, skipped, notes = [], [], []  # skipped: (position in the chunk, id, path, reason)
    positions = []  # of each decoded clip in the chunk
    extra: Dict[str, Tuple[bytes, List[int]]] = {}  # id -> its extra windows' records and sizes
    window_notes = []
    # Each clip goes straight into its row (no list of clips to stack: half the memory).
    batch = np.empty((len(rows), n_clip), np.float32)
    try:
        for position, row in enumerate(rows):
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
            if windows is not None and (decoded.file_samples is None
                                        or decoded.file_samples - n_clip >= windows.min_overhang):  # read on
                try:
                    long, why = _long_read(row, decoded.file_samples, audio, min_samples, windows,
                                           clip_cpu_seconds)
                    if clip_cpu_seconds:
                        signal.setitimer(signal.ITIMER_PROF, 0)  # featurising is not decoding
                    window_notes.extend((clip_id, n) for n in why)
                    if long is not None:
                        records, sizes, why = _window_records(clip_id, long, n_clip, windows, feature_name,
                                                              feature_params, audio.sample_rate)
                        window_notes.extend((clip_id, n) for n in why)
                        if sizes:
                            extra[clip_id] = (records, sizes)
                except MemoryError:  # the worker's memory bound: the clip keeps its first window
                    window_notes.append((clip_id, f"no extra windows: out of memory reading or featurising "
                                                  f"{windows.max_samples / audio.sample_rate:g} s of it"))
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
            window_notes = [(clip_id, n) for clip_id, n in window_notes if clip_id not in dropped]
            skipped.sort(key=lambda s: s[0])  # chunk order, however the chunk was cut
        if ids:
            records, sizes = frame_examples(ids, features)
    window_ids, window_sizes = [], []
    for clip_id in ids:  # the windows of kept clips only, in chunk order
        if clip_id in extra:
            window_ids += [clip_id] * len(extra[clip_id][1])
            window_sizes += extra[clip_id][1]
    return {"ids": ids, "records": records, "sizes": sizes, "skipped": [s[1:] for s in skipped], "notes": notes,
            "window_ids": window_ids, "window_records": b"".join(extra[i][0] for i in ids if i in extra),
            "window_sizes": window_sizes, "window_notes": window_notes}


def _long_read(row, file_samples: Optional[int], audio, min_samples: int, windows: Windows,
               clip_cpu_seconds: Optional[float]) -> Tuple[Optional[np.ndarray], List[str]]:
    """A long clip read again, up to ``windows.max_samples``: ``(samples [L] or None, notes)``.

    ``file_samples`` is the whole file's length from the first read (None:
    unknown). The clip's first window is not taken from here: the main
    shards keep the first read's samples, so they do not depend on how far a
    file is read (a resampler's output near the window's end could differ in
    the last bits).
    """
    from pipeline.data.audio import load_clip

    want = windows.max_samples if file_samples is None else min(file_samples, windows.max_samples)
    if clip_cpu_seconds:
        signal.setitimer(signal.ITIMER_PROF, clip_cpu_seconds + CPU_SECONDS_PER_AUDIO_SECOND * want / audio.sample_rate)
    decoded = load_clip(
        row[1],
        sample_rate=audio.sample_rate,
        duration=want / audio.sample_rate,
        min_samples=min_samples,
        max_nonfinite_fraction=audio.max_nonfinite_fraction,
        data=row[2] if len(row) > 2 else None,
    )
    if decoded.samples is None:
        return None, [f"no extra windows: reading beyond {audio.duration:g} s failed: {decoded.reason}"]
    notes = []
    if decoded.file_samples is None or decoded.file_samples > windows.max_samples:
        notes.append(f"read the first {want / audio.sample_rate:g} s (predict.max_seconds): the extra windows "
                     f"stop there")
    length = want if decoded.file_samples is None else min(decoded.file_samples, want)
    return decoded.samples[:length], notes


def _window_records(clip_id: str, samples: np.ndarray, window: int, windows: Windows, name, params,
                    sample_rate: int) -> Tuple[bytes, List[int], List[str]]:
    """Framed records of the extra windows of one clip's ``samples`` [L], their sizes, and notes on windows left out.

    Windows are featurised in batches of at most ``_WINDOW_BATCH_BYTES`` of
    audio, each exactly like a clip of that audio; a window whose features
    are not finite is left out (its clip and other windows stay).
    """
    starts = window_starts(len(samples), window, windows.hop, windows.min_overhang)
    per_batch = max(1, _WINDOW_BATCH_BYTES // (4 * window))
    parts, sizes, notes = [], [], []
    for i in range(0, len(starts), per_batch):
        group = starts[i: i + per_batch]
        y = np.stack([samples[s: s + window] for s in group])
        features, bad = _finite_features(name, params, y, sample_rate)
        notes += [f"extra window at {group[j] / sample_rate:g} s left out: {reason}" for j, reason in bad.items()]
        if features is not None:
            records, record_sizes = frame_examples([clip_id] * len(features), features)
            parts.append(records)
            sizes += record_sizes
    return b"".join(parts), sizes, notes


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
