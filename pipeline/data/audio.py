"""Decode one audio file into a fixed-length mono float32 clip, or say why not.

Bad audio never stops a run (ARCHITECTURE.md, "Errors"): :func:`load_clip`
never raises for a bad *file*; it returns a :class:`Decoded` whose ``reason``
names the problem, and the feature cache lists it. Only bad *parameters*
(programming errors) raise :class:`ValueError`.

How libsndfile (soundfile 0.12.1, libsndfile 1.2.0) reports damage, and why
this module parses AIFF/WAV headers itself:

* A truncated AIFF or WAV opens without error, and ``sf.info(...).frames``
  is silently clamped to the frames present on disk (e.g. 3597 for a
  4000-frame file cut to 90 %). Reading returns those frames without error.
  Comparing ``sf.info`` frames with frames read therefore never catches it;
  only the header's own count (AIFF ``COMM`` numSampleFrames, WAV ``data``
  chunk size) tells. libsndfile writes that count only to its text log
  (``SoundFile.extra_info``), so we read the header bytes directly.
* A truncated FLAC opens and reports the full frame count from STREAMINFO,
  then every ``read`` raises ``LibsndfileError: Internal psf_fseek() failed.``
  (even for a single missing byte, and before any frame is returned). A FLAC
  whose middle is corrupted fails the same way, so both are reported as
  truncated: the header promised frames the file did not deliver.
* A file cut inside its header, a 0-byte file or a text file fails at open
  (``Format not recognised``, ``Unspecified internal error``); a missing
  file gives only ``System error.``, so existence and permissions are
  checked with ``os`` first to give a useful reason.

Since the header is parsed anyway, uncompressed 16- and 32-bit integer and
32-bit float PCM in AIFF/AIFC/WAV (the Kaggle whale clips are 16-bit AIFF)
is read with one ``np.frombuffer`` over the sample chunk, scaled exactly as
libsndfile scales it (1 / 2**15, 1 / 2**31): for 2 s clips that is several
times faster than opening the file with libsndfile. Any other encoding, and
any header this module does not fully understand, goes through libsndfile.

One bad file must not take a night's run down (issue 14), so every file is
judged before its samples are decoded, with checks that cost microseconds:

* Only regular files are opened (after one ``os.stat``, which follows
  symlinks): opening a named pipe blocks until a writer appears, and a
  device or socket is not audio. The open itself is ``O_NONBLOCK`` and its
  descriptor is checked again with ``os.fstat``; the file is then read and
  decoded only through that descriptor, never reopened by name, so a file
  swapped for a pipe in between cannot block. A small file that holds more
  bytes than its fstat said (growing) is refused, not read without bound.
* The header's sample rate must lie in [``MIN_FILE_RATE``,
  ``MAX_FILE_RATE``] = [20 Hz, 2 MHz] (infrasound arrays record at 20 Hz,
  ultrasonic bat detectors at 384-768 kHz and up to 1 MHz) and its channel
  count in [1, ``MAX_CHANNELS``] = [1, 256] (a 64-capsule spherical array or
  15th-order ambisonics still fits). A header outside is corrupt: a WAV
  claiming 1 Hz over 10 minutes of 2 kHz PCM made librosa build 2.4 billion
  samples (9.6 GB, 29 s) and then crash.
* Only the frames that ``duration`` needs are decoded (:func:`window_frames`:
  ``ceil(duration * file_rate)`` plus a margin for the resampler's filter),
  whatever length the header claims; channels are mixed down block by block,
  so a clip's memory is about ``4 * window`` bytes whatever its channel count.
  A header that promises more frames than the file holds is still reported as
  truncated (from the file size, without reading the samples). A compressed
  file (FLAC, OGG) damaged only after the window is used: the part the clip
  needs decodes.
* Float samples beyond ``MAX_FLOAT_MAGNITUDE`` = 1000 x full scale are
  refused: float audio is expected within about +-1, and values such as 1e30
  (bytes that are not float audio, or a writer's bug) overflow the power
  spectrum to infinity. Integer PCM is within +-1 by construction.
"""

from __future__ import annotations

import io as _io
import logging
import math
import os
import stat
import struct
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import soundfile as sf

logger = logging.getLogger(__name__)

# Bytes of decoded float32 samples per read call (all channels): bounded memory
# per call, and a damaged FLAC still tells us how many frames came out before the error.
_READ_BLOCK_BYTES = 1 << 20
# O_NONBLOCK: a file swapped for a named pipe after its stat must not block the open.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
# Files up to this size are read into memory in one call and parsed from there.
_WHOLE_FILE_BYTES = 16 << 20
# libsndfile reports SF_COUNT_MAX-like values for streams of unknown length.
_UNKNOWN_FRAMES = 1 << 62
# WAV writers that stream set chunk sizes to these placeholders.
_WAV_UNKNOWN_SIZES = (0, 0xFFFFFFFF)
# WAV format tags whose data chunk size / block_align is a frame count
# (PCM, IEEE float, A-law, mu-law, extensible); ADPCM-like codecs are not.
_WAV_LINEAR_TAGS = (0x0001, 0x0003, 0x0006, 0x0007, 0xFFFE)

# Plausible headers (see the module doc): sample rate in Hz, channel count.
MIN_FILE_RATE = 20
MAX_FILE_RATE = 2_000_000
MAX_CHANNELS = 256
# Largest |sample| accepted from a float file, in units of full scale (1.0).
MAX_FLOAT_MAGNITUDE = 1e3
# Extra input frames read beyond ``duration`` when resampling, in samples at the
# lower of the two rates: soxr_hq's filter reaches that far, so the kept output
# equals resampling the whole file to within float rounding (measured: <= 1e-7
# from 100 Hz to 768 kHz file rates; tests/test_data_audio.py).
_RESAMPLE_MARGIN = 256
# A clip whose window alone would take more than this as mono float32 is refused
# rather than decoded (e.g. an hour at 768 kHz); ``audio.duration`` decides the window.
MAX_WINDOW_BYTES = 1 << 30


@dataclass(frozen=True)
class Decoded:
    """The result of :func:`load_clip`.

    Attributes
    ----------
    samples : np.ndarray [shape=(n,), dtype=float32] or None
        Mono waveform at the requested sample rate, exactly
        ``n = clip_length(sample_rate=..., duration=...)`` samples, or None
        when the file was skipped.
    reason : str or None
        Why the file was skipped (a short lower-case sentence starting with
        its category: ``missing file``, ``unreadable: ...`` (also for a
        named pipe, device, socket or directory), ``empty file (0 bytes)``,
        ``empty: ...``, ``truncated: ...``, ``implausible header: ...``
        (sample rate or channel count), ``too long: ...``,
        ``non-finite samples: ...``, ``absurd sample values: ...``,
        ``silent...``, ``too short: ...``), None when ``samples`` is usable.
    notes : tuple of str
        Repairs applied to a usable clip, in order, e.g.
        ``("stereo mixed down", "resampled 4000->2000 Hz", "padded 1900->4000 samples")``.
    file_samples : int or None
        The whole file's length in samples at the requested sample rate (as
        if all of it were decoded and resampled), known from the header or
        the frames read without decoding beyond the window; None when the
        file was skipped or its length is unknown (a stream longer than the
        window). The feature cache reads a longer window only when this
        exceeds the clip (:mod:`pipeline.cache.featurise`).
    """

    samples: Optional[np.ndarray]
    reason: Optional[str]
    notes: tuple = ()
    file_samples: Optional[int] = None

    @property
    def ok(self) -> bool:
        """True when ``samples`` is usable."""
        return self.reason is None


def clip_length(*, sample_rate: int, duration: float) -> int:
    """Samples per decoded clip: ``round(duration * sample_rate)``.

    Parameters
    ----------
    sample_rate : int > 0
        Hz.
    duration : float > 0
        Seconds.

    Returns
    -------
    n : int >= 1
    """
    return max(1, int(round(duration * sample_rate)))


def load_clip(
    path: str,
    *,
    sample_rate: int,
    duration: float,
    min_samples: int = 1,
    max_nonfinite_fraction: float = 0.01,
    res_type: str = "soxr_hq",
    data: Optional[bytes] = None,
) -> Decoded:
    """Decode ``path`` to a mono float32 clip of fixed length, or explain why not.

    With ``data`` (the file's bytes, e.g. read through tf.io.gfile from
    ``gs://`` by another process) the file is decoded from memory and ``path``
    only names it. A remote ``path`` without ``data`` is read through
    :func:`pipeline.io.read_bytes` (which imports TensorFlow).

    Steps: read the frames that ``duration`` needs (:func:`window_frames`;
    any format libsndfile reads: AIFF, WAV, FLAC, ...); set non-finite
    samples to 0 when they are at most ``max_nonfinite_fraction`` of the
    samples read; average channels to mono; resample to ``sample_rate`` with
    :func:`librosa.resample`; then pad with zeros at the end, or crop keeping
    the start, to exactly ``round(duration * sample_rate)`` samples.

    A file is skipped (``samples=None``) when it is missing, not a regular
    file (named pipe, device, socket, directory), unreadable (permissions,
    not audio, corrupt header), 0 bytes, truncated (fewer frames than its
    header declares), has an implausible sample rate or channel count (see
    the module doc), would need more than ``MAX_WINDOW_BYTES`` for its
    window, has 0 frames, has too many non-finite samples, has float samples
    beyond ``MAX_FLOAT_MAGNITUDE``, is all zeros (over the whole file or over
    the kept window), or has fewer than ``min_samples`` real samples after
    resampling.

    Parameters
    ----------
    path : str
        Audio file path.
    sample_rate : int > 0
        Output sample rate, Hz.
    duration : float > 0
        Output length, seconds.
    min_samples : int >= 1
        Fewest real (not padded) samples, counted at ``sample_rate``, for the
        clip to be usable.
    max_nonfinite_fraction : float in [0, 1]
        Largest fraction of NaN/inf samples (over all channels) that is
        repaired by zeroing; more than this skips the file.
    res_type : str
        :func:`librosa.resample` method.

    Returns
    -------
    Decoded
        ``samples`` has shape ``(round(duration * sample_rate),)`` and dtype
        float32 (same amplitude scale as the file, [-1, 1] for PCM), or is
        None with ``reason`` set.

    Raises
    ------
    ValueError
        For invalid parameters (never for a bad file).
    """
    if not (isinstance(sample_rate, (int, np.integer)) and sample_rate > 0):
        raise ValueError(f"sample_rate must be a positive integer. Received: sample_rate={sample_rate!r}")
    if not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"duration must be a positive number of seconds. Received: duration={duration!r}")
    if not (isinstance(min_samples, (int, np.integer)) and min_samples >= 1):
        raise ValueError(f"min_samples must be an integer >= 1. Received: min_samples={min_samples!r}")
    if not 0.0 <= max_nonfinite_fraction <= 1.0:
        raise ValueError(
            f"max_nonfinite_fraction must be in [0, 1]. Received: max_nonfinite_fraction={max_nonfinite_fraction!r}"
        )
    try:
        if data is None and "://" in os.fspath(path):
            data = fetch(os.fspath(path))
            if isinstance(data, str):
                return _skip(data)
        return _load_clip(
            os.fspath(path),
            data=data,
            sample_rate=int(sample_rate),
            duration=float(duration),
            min_samples=int(min_samples),
            max_nonfinite_fraction=float(max_nonfinite_fraction),
            res_type=res_type,
        )
    except MemoryError:  # e.g. the feature worker's address-space limit (pipeline.cache.workers)
        return _skip("too large: decoding ran out of memory")
    except Exception as exc:  # the contract is "bad audio never stops a run"
        logger.warning("unexpected error decoding %s", path, exc_info=True)
        return _skip(f"unreadable: unexpected {type(exc).__name__}: {exc}")


def _skip(reason: str) -> Decoded:
    return Decoded(samples=None, reason=reason, notes=())


def fetch(path: str):
    """A remote file's bytes through tf.io.gfile, or a skip reason (str) when it cannot be read."""
    from pipeline import io

    try:
        if not io.exists(path):
            return "missing file"
        if io.isdir(path):
            return "unreadable: is a directory"
        return io.read_bytes(path)
    except Exception as exc:  # noqa: BLE001 - any storage error makes this clip unreadable, not the run
        return f"unreadable: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _load_clip(path, *, sample_rate, duration, min_samples, max_nonfinite_fraction, res_type,
               data: Optional[bytes] = None) -> Decoded:
    opts = dict(sample_rate=sample_rate, duration=duration, min_samples=min_samples,
                max_nonfinite_fraction=max_nonfinite_fraction, res_type=res_type)
    if data is not None:
        return _decode(path, len(data), data, **opts)
    # Judge the file by its stat before opening it: opening a named pipe blocks
    # until something writes to it, and a device or socket is not audio. Opening
    # it ourselves then turns a permission problem into a clear reason
    # (libsndfile says only "System error."); O_NONBLOCK keeps a file swapped
    # for a pipe since the stat from blocking the open (no effect on a regular file).
    try:
        info = os.stat(path)  # follows symlinks: a link to a pipe is judged as the pipe
    except FileNotFoundError:
        return _skip("missing file")  # also a symlink whose target is missing
    except OSError as exc:
        return _skip(f"unreadable: {_os_message(exc)}")
    if not stat.S_ISREG(info.st_mode):
        return _skip(f"unreadable: {_file_kind(info.st_mode)}")
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return _skip("missing file")
    except OSError as exc:
        return _skip(f"unreadable: {_os_message(exc)}")
    # Everything from here on reads this descriptor, never the path again: the
    # path may have been swapped (for a named pipe, a device) since the stat.
    fh = None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return _skip(f"unreadable: {_file_kind(info.st_mode)}")
        size = info.st_size
        if 0 < size <= _WHOLE_FILE_BYTES:
            data = _read_fd(fd, size)
            if data is None:
                return _skip(_CHANGED)
            size = len(data)
        else:
            fh = os.fdopen(fd, "rb")
            fd = None  # now owned by fh
    except OSError as exc:
        return _skip(f"unreadable: {_os_message(exc)}")
    finally:
        if fd is not None and fh is None:
            os.close(fd)
    if fh is None:
        return _decode(path, size, data, **opts)
    with fh:
        return _decode(path, size, None, fh=fh, **opts)


_CHANGED = "unreadable: the file grew while it was read (changed while reading)"


def _file_kind(mode: int) -> str:
    """Why a path that is not a regular file is not read, e.g. ``is a named pipe (FIFO)``."""
    if stat.S_ISDIR(mode):
        return "is a directory"
    for test, kind in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return f"is {kind}, not a regular file"
    return "not a regular file"


def window_frames(file_rate: int, *, sample_rate: int, duration: float) -> int:
    """Frames of a file at ``file_rate`` Hz that a clip of ``duration`` s at ``sample_rate`` Hz needs.

    ``ceil(duration * file_rate)``, plus, when the file is resampled,
    ``_RESAMPLE_MARGIN`` samples at the lower of the two rates: the
    resampler's filter reaches that far beyond the kept output, so the clip
    equals one cut from the whole file resampled (within float rounding).
    Nothing beyond this window is decoded, whatever length a header claims.
    """
    need = math.ceil(duration * file_rate)
    if file_rate != sample_rate:
        need += math.ceil(_RESAMPLE_MARGIN * file_rate / min(file_rate, sample_rate))
    return max(1, need)


def _implausible(file_rate: int, channels: int) -> Optional[str]:
    """A skip reason when a header's sample rate or channel count is implausible (module doc), else None."""
    if not MIN_FILE_RATE <= file_rate <= MAX_FILE_RATE:
        return (f"implausible header: sample rate {file_rate} Hz "
                f"(expected {MIN_FILE_RATE} Hz to {MAX_FILE_RATE:,} Hz)")
    if not 1 <= channels <= MAX_CHANNELS:
        return f"implausible header: {channels} channels (expected 1 to {MAX_CHANNELS})"
    return None


def _too_long(n: int, file_rate: int, duration: float) -> str:
    return (f"too long: the first {duration:g} s at {file_rate} Hz are {n} frames ({4 * n / 2**30:.1f} GiB as "
            f"float32), more than the {MAX_WINDOW_BYTES / 2**30:g} GiB a clip may take; lower audio.duration "
            f"or resample the file first")


def _mix(block: np.ndarray, channels: int, floating: bool) -> Tuple[Optional[np.ndarray], int, float]:
    """One block of frames [n, channels] float32 mixed to mono: ``(mono [n], non-finite count, peak |sample|)``.

    Mixing block by block keeps a clip's memory at about 4 bytes per frame
    whatever its channel count. Only float sources (``floating``) can hold
    NaN/inf, zeroed before mixing so that a NaN in one channel does not
    erase the others, or absurd magnitudes (``mono`` is None beyond
    ``MAX_FLOAT_MAGNITUDE``: the clip is refused, and mixing such values
    could overflow); integer PCM is within +-1 (peak reported as 0).
    """
    bad, peak = 0, 0.0
    if floating and block.size:
        finite = np.isfinite(block)
        bad = int(block.size - np.count_nonzero(finite))
        if bad:
            block = np.where(finite, block, np.float32(0.0))
        peak = max(float(block.max()), -float(block.min()))
        if peak > MAX_FLOAT_MAGNITUDE:
            return None, bad, peak
    return (block[:, 0] if channels == 1 else block.mean(axis=1, dtype=np.float32)), bad, peak


class _Blocks:
    """Mixed blocks of a clip read in pieces (large files, libsndfile), and the counts :func:`_finish` needs."""

    def __init__(self, channels: int, floating: bool):
        self.channels, self.floating = channels, floating
        self.parts, self.frames, self.nonfinite, self.peak = [], 0, 0, 0.0

    def add(self, block: np.ndarray) -> None:
        mono, bad, peak = _mix(block, self.channels, self.floating)
        self.frames += len(block)
        self.nonfinite += bad
        self.peak = max(self.peak, peak)
        self.parts.append(mono)

    def finish(self, file_rate: int, total: Optional[int], **opts) -> Decoded:
        mono = None  # no frames, or refused by _mix
        if self.parts and all(part is not None for part in self.parts):
            mono = self.parts[0] if len(self.parts) == 1 else np.concatenate(self.parts)
        return _finish(mono, self.frames, self.channels, self.nonfinite, self.peak, file_rate, total, **opts)


class _QuietSeek:
    """A binary file for libsndfile's virtual I/O whose ``seek`` never raises.

    A damaged header makes libsndfile seek before the start; the file raises
    inside soundfile's C callback, where Python can only print the exception
    ("Exception ignored from cffi callback", a traceback on the console) and
    the decoder fails anyway. Here the position stays put instead, and the
    clip is skipped with libsndfile's own error like any unreadable file.
    """

    def __init__(self, file):
        self._file = file

    def seek(self, offset: int, whence: int = 0) -> int:
        try:
            return self._file.seek(offset, whence)
        except (OSError, ValueError):
            return self._file.tell()

    def tell(self) -> int:
        return self._file.tell()

    def read(self, n: int = -1) -> bytes:
        return self._file.read(n)

    def readinto(self, buffer) -> int:
        return self._file.readinto(buffer)


def _decode(path, size, data, *, fh=None, **opts) -> Decoded:
    """Decode a file of ``size`` bytes: ``data`` (its bytes) when given, else the open binary file ``fh``.

    ``path`` only names the file: it is never reopened (it may have been
    swapped for a named pipe since it was opened).

    ``opts``: the keyword arguments of :func:`_finish` from ``sample_rate`` on.
    """
    if size == 0:
        return _skip("empty file (0 bytes)")
    try:
        if data is not None:
            header = _memory_header(data)
            if header.pcm is not None and header.frames is not None:
                return _decode_pcm(header, size, data, None, **opts)
        else:
            header = _read_header(_file_reader(fh), size)
            if header.pcm is not None and header.frames is not None:
                return _decode_pcm(header, size, None, fh, **opts)
            fh.seek(0)
    except OSError as exc:
        return _skip(f"unreadable: {_os_message(exc)}")
    # An AIFF/WAV header is judged before libsndfile opens the file (other formats: once it has).
    problem = _implausible(MIN_FILE_RATE if header.rate is None else header.rate,
                           1 if header.channels is None else header.channels)
    if problem:
        return _skip(problem)

    try:
        sound = sf.SoundFile(_QuietSeek(fh if data is None else _io.BytesIO(data)))
    except Exception as exc:
        message = _sf_message(exc)
        if header.declared_bytes is not None and header.declared_bytes > size:
            of = f" of {header.frames} frames" if header.frames is not None else ""
            return _skip(
                f"truncated: read 0{of}; file has {size} of the {header.declared_bytes} bytes "
                f"its header declares ({message})"
            )
        return _skip(f"unreadable: {message}")

    with sound:
        file_rate, channels = int(sound.samplerate), int(sound.channels)
        problem = _implausible(file_rate, channels)
        if problem:
            return _skip(problem)
        reported = int(sound.frames)
        reported = None if reported >= _UNKNOWN_FRAMES else reported
        # The header count is authoritative for AIFF/WAV (libsndfile clamps
        # `reported` to what is on disk); otherwise trust libsndfile's count.
        declared = header.frames if header.frames is not None else reported
        if declared is not None and reported is not None and reported < declared:
            return _skip(f"truncated: read {reported} of {declared} frames")
        window = window_frames(file_rate, sample_rate=opts["sample_rate"], duration=opts["duration"])
        n = window if reported is None else min(reported, window)
        if 4 * n > MAX_WINDOW_BYTES:
            return _skip(_too_long(n, file_rate, opts["duration"]))
        blocks = _Blocks(channels, floating=True)
        per_read = max(1, _READ_BLOCK_BYTES // (4 * channels))
        read_error = None
        try:
            while blocks.frames < n:
                block = sound.read(min(per_read, n - blocks.frames), dtype="float32", always_2d=True)
                if len(block) == 0:
                    break
                blocks.add(block)
        except Exception as exc:
            read_error = _sf_message(exc)
    if read_error is not None:
        if declared is not None and blocks.frames < declared:
            return _skip(f"truncated: read {blocks.frames} of {declared} frames ({read_error})")
        return _skip(f"unreadable: {read_error}")
    if declared is not None and blocks.frames < min(declared, n):
        return _skip(f"truncated: read {blocks.frames} of {declared} frames")
    total = reported if reported is not None else (blocks.frames if blocks.frames < n else None)
    return blocks.finish(file_rate, total, **opts)


def _decode_pcm(header: "_Header", size: int, data: Optional[bytes], fh, **opts) -> Decoded:
    """Plain PCM: judge the header, then read the window's frames from ``data`` (the file's bytes) or ``fh``."""
    pcm = header.pcm
    rate, channels = pcm.sample_rate, pcm.channels
    if not (MIN_FILE_RATE <= rate <= MAX_FILE_RATE and 1 <= channels <= MAX_CHANNELS):
        return _skip(_implausible(rate, channels))
    frame_bytes = channels * pcm.dtype.itemsize
    available = min(header.frames, max(0, (size - pcm.offset) // frame_bytes))
    if available < header.frames:  # from the size alone: no need to read the samples
        return _skip(f"truncated: read {available} of {header.frames} frames")
    n = min(available, window_frames(rate, sample_rate=opts["sample_rate"], duration=opts["duration"]))
    if 4 * n > MAX_WINDOW_BYTES:
        return _skip(_too_long(n, rate, opts["duration"]))
    floating = pcm.dtype.kind == "f"
    if data is not None:  # at most _WHOLE_FILE_BYTES: converted in one go
        mono, bad, peak = _mix(_pcm_frames(data, pcm.offset, pcm, n), channels, floating)
        return _finish(mono, n, channels, bad, peak, rate, available, **opts)
    blocks = _Blocks(channels, floating)
    fh.seek(pcm.offset)
    per_read = max(1, _READ_BLOCK_BYTES // frame_bytes)
    while blocks.frames < n:
        want = min(per_read, n - blocks.frames)
        block = _pcm_frames(fh.read(want * frame_bytes), 0, pcm, want)
        if len(block) < want:  # the file shrank since its size was taken
            return _skip(f"truncated: read {blocks.frames + len(block)} of {header.frames} frames")
        blocks.add(block)
    return blocks.finish(rate, available, **opts)


def _resampled_length(frames: int, file_rate: int, sample_rate: int) -> int:
    """Samples of ``frames`` frames at ``file_rate`` resampled to ``sample_rate``, as librosa.resample counts them."""
    if file_rate == sample_rate:
        return frames
    return int(np.ceil(frames * (float(sample_rate) / file_rate)))


def _finish(mono: Optional[np.ndarray], frames: int, channels: int, nonfinite: int, peak: float, file_rate: int,
            total: Optional[int], *, sample_rate, duration, min_samples, max_nonfinite_fraction, res_type) -> Decoded:
    """Checks and repairs shared by both decoders.

    ``mono``: the window's ``frames`` frames (:func:`window_frames`) of
    ``channels`` channels mixed down by :func:`_mix`, which counted
    ``nonfinite`` samples (zeroed) and the ``peak`` magnitude (``mono`` None
    when it is absurd); ``total``: the file's frame count (None when
    unknown, e.g. a stream longer than the window).
    """
    if frames == 0:
        return _skip("empty: no audio frames")
    notes = []
    if nonfinite:
        values = frames * channels
        fraction = nonfinite / values
        if fraction > max_nonfinite_fraction:
            return _skip(
                f"non-finite samples: {nonfinite} of {values} ({fraction:.1%}) "
                f"exceed max_nonfinite_fraction={max_nonfinite_fraction:g}"
            )
        notes.append(f"{nonfinite} non-finite samples set to 0")
    if peak > MAX_FLOAT_MAGNITUDE:
        return _skip(
            f"absurd sample values: up to {peak:.1e}; float audio is expected within about +-1 "
            f"(more than {MAX_FLOAT_MAGNITUDE:g} x full scale is refused)"
        )
    if channels > 1:
        notes.append("stereo mixed down" if channels == 2 else f"{channels} channels mixed down")

    whole = total is not None and frames >= total  # the window holds the whole file
    if _all_zero(mono):
        return _skip("silent" if whole else f"silent: all zero in the first {duration:g} s")

    if file_rate != sample_rate:
        import librosa  # deferred: librosa's import is slow and only resampling needs it

        mono = librosa.resample(mono, orig_sr=file_rate, target_sr=sample_rate, res_type=res_type)
        notes.append(f"resampled {file_rate}->{sample_rate} Hz")

    if len(mono) < min_samples:
        return _skip(f"too short: {len(mono)} samples at {sample_rate} Hz < min_samples={min_samples}")

    # The whole file's length at sample_rate, as if all of it had been decoded.
    full = len(mono) if whole else (None if total is None else _resampled_length(total, file_rate, sample_rate))
    n_out = clip_length(sample_rate=sample_rate, duration=duration)
    if len(mono) < n_out:
        notes.append(f"padded {len(mono)}->{n_out} samples")
        mono = np.pad(mono, (0, n_out - len(mono)))
    elif len(mono) > n_out or not whole:
        notes.append(f"cropped {full}->{n_out} samples" if full is not None else f"cropped to {n_out} samples")
        mono = mono[:n_out]
        if _all_zero(mono):
            return _skip(f"silent: all zero in the first {duration:g} s")

    return Decoded(samples=np.ascontiguousarray(mono, dtype=np.float32), reason=None, notes=tuple(notes),
                   file_samples=full)


def _all_zero(x: np.ndarray) -> bool:
    # max and min are SIMD reductions, ~2x faster than any() (which casts to bool); finite input.
    return x.max() == 0 and x.min() == 0


@dataclass(frozen=True)
class _Header:
    """What an AIFF/WAV header declares; all None for other formats."""

    frames: Optional[int] = None  # audio frames the header promises
    declared_bytes: Optional[int] = None  # total file size the container promises
    # Sample rate (Hz) and channel count from the format chunk (any codec), judged before decoding.
    rate: Optional[int] = None
    channels: Optional[int] = None
    # Set only for plain PCM this module decodes itself (see :func:`_pcm_frames`).
    pcm: Optional["_PCM"] = None


@dataclass(frozen=True)
class _PCM:
    """Where and how the samples of a plain PCM file are stored."""

    offset: int  # byte offset of the first sample
    dtype: np.dtype  # of one sample, e.g. ">i2"
    channels: int
    sample_rate: int
    scale: np.float32  # multiply to get libsndfile's float values


# (container endianness or AIFC compression type, bits, WAV format tag) -> numpy dtype, scale
_INT_SCALE = {16: 1.0 / (1 << 15), 32: 1.0 / (1 << 31)}


def _pcm_dtype(endian: str, bits: int, is_float: bool) -> Optional[Tuple[np.dtype, np.float32]]:
    if is_float:
        return (np.dtype(endian + "f4"), np.float32(1.0)) if bits == 32 else None
    if bits in _INT_SCALE:
        return np.dtype(f"{endian}i{bits // 8}"), np.float32(_INT_SCALE[bits])
    return None


def _extended_rate(raw: bytes) -> int:
    """An AIFF 80-bit IEEE extended sample rate as an integer (0 when invalid)."""
    exponent = struct.unpack(">H", raw[:2])[0] & 0x7FFF
    (mantissa,) = struct.unpack(">Q", raw[2:10])
    if exponent == 0 or exponent == 0x7FFF or mantissa == 0:  # 0x7FFF: infinity or NaN
        return 0
    # Exact integer arithmetic: a float would overflow for a huge exponent (a corrupt header).
    shift = exponent - 16383 - 63
    if shift >= 0:
        rate = mantissa << shift if shift < 64 else 1 << 64
    elif -shift >= 64 or mantissa & ((1 << -shift) - 1):
        return 0  # below 1 Hz, or not a whole number of Hz
    else:
        rate = mantissa >> -shift
    return rate if 0 < rate < 1_000_000_000 else 0


def _read_header(read_at, size: int) -> _Header:
    """Walk the chunks of an AIFF/AIFC or WAV file of ``size`` bytes (other formats: empty _Header).

    ``read_at(pos, n)`` returns up to ``n`` bytes of the file from offset
    ``pos``. The result depends only on ``size`` and on what ``read_at``
    returns, which :func:`_memory_header` relies on.
    """
    head = read_at(0, 12)
    if len(head) < 12:
        return _Header()
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        endian, kind = ">", "aiff"
    elif head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        endian, kind = "<", "wav"
    else:
        return _Header()
    (form_size,) = struct.unpack(endian + "I", head[4:8])
    declared_bytes = None if (kind == "wav" and form_size in _WAV_UNKNOWN_SIZES) else 8 + form_size

    frames = None
    wav_tag = wav_block_align = wav_data_size = wav_channels = wav_rate = wav_bits = None
    aiff_format = aiff_data = None
    pos = 12
    for _ in range(10000):  # a corrupt file must not loop forever
        if pos + 8 > size:
            break
        chunk = read_at(pos, 8)
        if len(chunk) < 8:
            break
        chunk_id = chunk[:4]
        (chunk_size,) = struct.unpack(endian + "I", chunk[4:8])
        if kind == "aiff" and chunk_id == b"COMM":
            body = read_at(pos + 8, min(chunk_size, 22))
            if len(body) >= 6:
                # COMM: numChannels (int16), numSampleFrames (uint32), sampleSize (int16),
                # sampleRate (80-bit extended)[, AIFC compressionType (4 chars)]
                (frames,) = struct.unpack(">I", body[2:6])
            if len(body) >= 18:
                channels, _, bits = struct.unpack(">hIh", body[:8])
                compression = body[18:22] if head[8:12] == b"AIFC" else b"NONE"
                aiff_format = (channels, bits, _extended_rate(body[8:18]), compression)
        elif kind == "aiff" and chunk_id == b"SSND":
            body = read_at(pos + 8, 4)
            if len(body) == 4:
                aiff_data = pos + 16 + struct.unpack(">I", body)[0]  # skip offset and blockSize
        elif kind == "wav" and chunk_id == b"fmt ":
            body = read_at(pos + 8, 16)
            if len(body) == 16:
                wav_tag, wav_channels, wav_rate, _, wav_block_align, wav_bits = struct.unpack("<HHIIHH", body)
        elif kind == "wav" and chunk_id == b"data":
            wav_data_size = chunk_size
            wav_data = pos + 8
            break  # the data chunk is what matters; anything after it is metadata
        pos += 8 + chunk_size + (chunk_size & 1)  # chunks are padded to even length

    rate = channels = None
    if kind == "wav" and wav_tag is not None:
        rate, channels = wav_rate, wav_channels
    elif kind == "aiff" and aiff_format is not None:
        rate, channels = aiff_format[2] or None, aiff_format[0]  # 0: an 80-bit rate we do not parse exactly
    pcm = None
    if kind == "wav" and wav_data_size is not None and wav_data_size not in _WAV_UNKNOWN_SIZES:
        if wav_tag in _WAV_LINEAR_TAGS and wav_block_align:
            frames = wav_data_size // wav_block_align
        if wav_tag in (0x0001, 0x0003) and wav_channels and wav_rate:
            layout = _pcm_dtype("<", wav_bits, wav_tag == 0x0003)
            if layout and wav_block_align == wav_channels * wav_bits // 8:
                pcm = _PCM(wav_data, layout[0], wav_channels, wav_rate, layout[1])
    if kind == "aiff" and aiff_format is not None and aiff_data is not None:
        channels, bits, rate, compression = aiff_format
        endian = {b"NONE": ">", b"twos": ">", b"sowt": "<"}.get(compression)
        layout = _pcm_dtype(endian, bits, False) if endian else None
        if layout and channels > 0 and rate > 0:
            pcm = _PCM(aiff_data, layout[0], channels, rate, layout[1])
    return _Header(frames=frames, declared_bytes=declared_bytes, rate=rate, channels=channels, pcm=pcm)


def header_of(read_at, size: int) -> _Header:
    """What an AIFF/AIFC or WAV header of a file of ``size`` bytes declares (``frames``, ``rate``,
    ``channels``; all None for other formats), ``read_at(pos, n)`` returning the file's bytes.

    Pure Python (no libsndfile): also used where no decoder may run, e.g.
    :mod:`pipeline.data.rfcx` checking boxes against recording lengths.
    """
    return _read_header(read_at, size)


def _read_fd(fd: int, size: int) -> Optional[bytes]:
    """The whole of an open file of ``size`` bytes (by its fstat) in one read, or None when it holds more.

    One ``os.read``: Python's buffered file object adds an ioctl and a seek and
    read per header chunk, a quarter of decoding a 2 s clip. At most ``size +
    1`` bytes are read: a file that grew since the fstat (being written, or
    growing without bound) is refused rather than read to its end. A file that
    shrank gives fewer bytes, judged as truncated by the header.
    """
    parts, total = [], 0
    while total <= size:  # a regular file may return less than asked (e.g. a network file system)
        part = os.read(fd, size + 1 - total)
        if not part:
            break
        parts.append(part)
        total += len(part)
    if total > size:
        return None
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _file_reader(fh):
    """``read_at(pos, n)`` over a binary file object, for :func:`_read_header`."""
    def read_at(pos: int, n: int) -> bytes:
        fh.seek(pos)
        return fh.read(n)

    return read_at


# The last header parsed per file size: (byte ranges the parser read, those bytes, the _Header).
_recent_headers: dict = {}
_RECENT_SIZES = 16


def _memory_header(data: bytes) -> _Header:
    """:func:`_read_header` of a file held in memory, reusing the last result for a file of the same size.

    A dataset's clips mostly share one header (same format, rate and length).
    The parser's result depends only on the file size and the bytes it reads,
    so a file of the same size with the same bytes at the offsets the last
    parse read gets the same header: comparing a few short slices (~1 us)
    replaces the parse (~8 us for a whale clip).
    """
    size = len(data)
    known = _recent_headers.get(size)
    if known is not None:
        ranges, seen, header = known
        if all(data[a:b] == s for (a, b), s in zip(ranges, seen)):
            return header
    ranges = []

    def read_at(pos: int, n: int) -> bytes:
        ranges.append((pos, pos + n))
        return data[pos : pos + n]

    header = _read_header(read_at, size)
    if size not in _recent_headers and len(_recent_headers) >= _RECENT_SIZES:
        _recent_headers.pop(next(iter(_recent_headers)), None)
    _recent_headers[size] = (tuple(ranges), tuple(data[a:b] for a, b in ranges), header)
    return header


def _pcm_frames(raw: bytes, offset: int, pcm: _PCM, frames: int) -> np.ndarray:
    """Up to ``frames`` frames of plain PCM from ``raw[offset:]`` as float32 [n, channels] (n < frames: cut short)."""
    frame_bytes = pcm.channels * pcm.dtype.itemsize
    n = max(0, min(frames, (len(raw) - offset) // frame_bytes))
    if n == 0:
        return np.zeros((0, pcm.channels), np.float32)
    samples = np.frombuffer(raw, dtype=pcm.dtype, count=n * pcm.channels, offset=offset).reshape(n, pcm.channels)
    if pcm.scale == 1.0:
        return samples.astype(np.float32)
    return np.multiply(samples, pcm.scale, dtype=np.float32)  # converts, then scales in float32


def _sf_message(exc: Exception) -> str:
    """libsndfile's own error text, without the 'Error opening <path>:' prefix."""
    message = getattr(exc, "error_string", None) or str(exc)
    return message.strip().rstrip(".").lower() or type(exc).__name__


def _os_message(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()
