"""Batched power and log-mel spectrograms: numpy arrays in, numpy arrays out.

Every function takes a batch of equally long clips ``y`` of shape
``[B, samples]`` (float32, finite) and returns time-major arrays
``[B, frames, ...]``. The framing is the one of
``librosa.stft(center=True, pad_mode='constant')`` (librosa 0.10): each clip
is zero-padded by ``n_fft // 2`` samples on both sides, frame ``t`` covers
padded samples ``[t * hop_length, t * hop_length + n_fft)``, there are
``1 + (samples + 2 * (n_fft // 2) - n_fft) // hop_length`` frames (which is
``1 + samples // hop_length`` for even ``n_fft``), and every frame is
multiplied by a periodic Hann window before a real FFT.

Why it is fast: frames are strided views (no copy until the window is applied);
the work runs in blocks of a few hundred frames (whole clips, or parts of long
clips) so that frames, spectra and mel output stay in the CPU cache; the FFT is
scipy's single-precision pocketfft; and the mel projection is a sparse (CSR)
product with the filter bank, which has at most two non-zero weights per FFT
bin, so it costs ~n_mels/2 times fewer multiply-adds than a dense matmul and
needs no multi-threaded BLAS (slower than one thread on blocks this small).
"""

from __future__ import annotations

import collections

import functools
import math
import numbers
import warnings

import librosa
import numpy as np
import scipy.fft
import scipy.sparse

__all__ = [
    "EmptyMelBandsWarning",
    "empty_mel_bands",
    "log_mel",
    "mel_basis",
    "mel_blocks",
    "mel_power",
    "n_frames",
    "power_blocks",
    "stft_power",
]

# Bytes of windowed frames per block (1024 frames at n_fft=256): a block's
# frames, spectrum and features stay in L2 cache. Measured on 512 x 4000-sample
# clips: blocks of 512 KiB - 2 MiB are within ~10% of each other and ~1.5x
# faster than processing the whole batch in one pass.
_BLOCK_BYTES = 1 << 20
# At least this many frames per block so that per-call overhead stays small.
_MIN_ROWS = 256

AMIN = 1e-10  # power floor before the log, as librosa.power_to_db
# 10 log10(x) = _DB_PER_NEPER ln(x): numpy's float32 log is ~3x faster than its log10.
_DB_PER_NEPER = 10.0 / math.log(10.0)


class EmptyMelBandsWarning(UserWarning):
    """Some mel bands contain no FFT bin, so their output is constant (always at the floor)."""


# ----------------------------------------------------------------------------- argument checks


def check_positive_int(name: str, value) -> int:
    """``value`` as an int; ValueError unless it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
    return int(value)


def check_sample_rate(sample_rate) -> float:
    """``sample_rate`` (Hz) as a float; ValueError unless it is a positive finite number."""
    if (
        isinstance(sample_rate, bool)
        or not isinstance(sample_rate, numbers.Real)
        or not math.isfinite(sample_rate)
        or sample_rate <= 0
    ):
        raise ValueError(f"sample_rate must be a positive number of Hz. Received: sample_rate={sample_rate!r}")
    return float(sample_rate)


def as_audio_batch(y, *, min_samples: int = 1) -> np.ndarray:
    """Validate a batch of clips and return it as C-contiguous float32 ``[B, samples]``.

    Parameters
    ----------
    y : np.ndarray [shape=(B, samples)], real floating point
        Audio, one clip per row; float64 is converted to float32.
    min_samples : int
        Fewest samples a clip may have.

    Raises
    ------
    ValueError
        If ``y`` is not 2-D, not floating point, has fewer than ``min_samples``
        samples per clip, or contains NaN or infinity.
    """
    y = np.asarray(y)
    if y.ndim != 2:
        raise ValueError(f"y must be 2-D [B, samples]. Received: y.shape={y.shape}")
    if not np.issubdtype(y.dtype, np.floating):
        raise ValueError(f"y must be floating-point audio (float32). Received: y.dtype={y.dtype}")
    if y.shape[1] < min_samples:
        raise ValueError(f"y must have at least {min_samples} samples per clip. Received: y.shape={y.shape}")
    y = np.ascontiguousarray(y, dtype=np.float32)
    if not np.isfinite(y).all():
        bad = np.flatnonzero(~np.isfinite(y).all(axis=1)).tolist()
        raise ValueError(
            "y must be finite (no NaN or infinity; repair or skip such clips before featurising). "
            f"Received: non-finite samples in {len(bad)} of {y.shape[0]} clips, rows {bad[:10]}"
            + (" ..." if len(bad) > 10 else "")
        )
    return y


def _check_stft_args(n_fft, hop_length):
    return check_positive_int("n_fft", n_fft), check_positive_int("hop_length", hop_length)


def resolve_band(*, sample_rate, fmin, fmax) -> tuple[float, float]:
    """``(fmin, fmax)`` in Hz with ``fmax=None`` replaced by ``sample_rate / 2``.

    Raises
    ------
    ValueError
        Unless ``0 <= fmin < fmax``. (``fmax`` above ``sample_rate / 2`` is
        allowed, as in librosa; :func:`pipeline.features.check_settings` warns.)
    """
    sample_rate = check_sample_rate(sample_rate)
    fmax = sample_rate / 2.0 if fmax is None else fmax
    for name, value in (("fmin", fmin), ("fmax", fmax)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number of Hz. Received: {name}={value!r}")
    if not 0.0 <= fmin < fmax:
        raise ValueError(f"fmin and fmax must satisfy 0 <= fmin < fmax. Received: fmin={fmin!r}, fmax={fmax!r}")
    return float(fmin), float(fmax)


# ----------------------------------------------------------------------------- STFT


def n_frames(n_samples: int, *, n_fft: int, hop_length: int) -> int:
    """Number of centred frames of a clip of ``n_samples`` samples (librosa's count, see module doc)."""
    return 1 + (n_samples + 2 * (n_fft // 2) - n_fft) // hop_length


@functools.lru_cache(maxsize=32)
def _hann(n_fft: int) -> np.ndarray:
    # Periodic ("fftbins=True") Hann, as librosa's default window; computed in float64, stored float32.
    window = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    window.setflags(write=False)
    return window


def _power_blocks(y: np.ndarray, n_fft: int, hop_length: int, *, bins_major: bool, out=None):
    """Yield ``(clips, frames, power)`` for blocks of frames of ``y`` (float32 ``[B, samples]``).

    ``power`` is ``|FFT|**2`` of the windowed frames ``y[clips, frames]``,
    float32, ``[bins, rows]`` when ``bins_major`` else ``[rows, bins]``, with
    ``bins = n_fft // 2 + 1`` and rows running clip-major, then frame. With
    ``out`` (float32 ``[B, frames, bins]``, not ``bins_major``) each block is
    written into it directly; otherwise ``power`` is a new array.
    """
    n_clips, n_samples = y.shape
    pad = n_fft // 2
    frames = n_frames(n_samples, n_fft=n_fft, hop_length=hop_length)

    rows = max(_MIN_ROWS, _BLOCK_BYTES // (4 * n_fft))
    if frames <= rows:
        clips_per_block, frames_per_block = rows // frames, frames
    else:  # long clips: split each clip's frames
        clips_per_block, frames_per_block = 1, rows
    # Zero padding by hand, a block of clips at a time: the edges of `padded`
    # are never written, so they stay zero; only the block's clips are copied.
    padded = np.zeros((min(clips_per_block, n_clips), n_samples + 2 * pad), dtype=np.float32)
    scratch = np.empty((clips_per_block, frames_per_block, n_fft), dtype=np.float32)
    # The window repeated for every frame of a block: numpy multiplies two
    # equally shaped arrays ~2x faster than it broadcasts a vector.
    windows = np.broadcast_to(_hann(n_fft), scratch.shape).copy()
    for c0 in range(0, n_clips, clips_per_block):
        clips = slice(c0, min(c0 + clips_per_block, n_clips))
        n = clips.stop - clips.start
        padded[:n, pad : pad + n_samples] = y[clips]
        framed = np.lib.stride_tricks.sliding_window_view(padded[:n], n_fft, axis=-1)[:, ::hop_length]
        for f0 in range(0, frames, frames_per_block):
            span = slice(f0, min(f0 + frames_per_block, frames))
            x = scratch[:n, : span.stop - span.start]
            np.multiply(framed[:, span], windows[:n, : x.shape[1]], out=x)  # gathers the frames too
            x = x.reshape(-1, n_fft)
            # Single-precision FFT (complex64). Transforming x.T along axis 0
            # reads the same contiguous frames but writes the spectrum
            # bins-major, cheaper than transposing it afterwards.
            if bins_major:
                spectrum = scipy.fft.rfft(x.T, axis=0, workers=1)
                power = np.abs(spectrum, out=np.empty(spectrum.shape, np.float32))
            else:
                spectrum = scipy.fft.rfft(x, axis=-1, workers=1)
                power = np.abs(spectrum, out=None if out is None else _rows(out, clips, span))
            np.square(power, out=power)  # |X| then square: faster than Re**2 + Im**2 on interleaved data
            yield clips, span, power


def _rows(out: np.ndarray, clips: slice, span: slice) -> np.ndarray:
    """``out[clips, span]`` as a 2-D ``[rows, features]`` view (a block is always contiguous in ``out``)."""
    return out[clips, span].reshape(-1, out.shape[-1])


def stft_power(y: np.ndarray, *, n_fft: int, hop_length: int) -> np.ndarray:
    """Power spectrogram ``|STFT|**2`` of a batch of clips, time-major.

    Parameters
    ----------
    y : np.ndarray [shape=(B, samples)], float32
        Audio clips; ``samples >= n_fft``.
    n_fft : int > 0
        FFT (and periodic Hann window) length in samples.
    hop_length : int > 0
        Samples between frame starts.

    Returns
    -------
    np.ndarray [shape=(B, frames, n_fft // 2 + 1)], float32
        Power (squared magnitude, input units squared) per frame and FFT bin;
        ``frames`` as in :func:`n_frames`. Equals
        ``np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop_length,
        center=True, pad_mode='constant'))**2`` transposed, up to the
        rounding of the single-precision FFT used here: its absolute error is
        ~1e-7 of a frame's largest magnitude, so a bin L dB below the frame's
        strongest bin has a relative error of ~1e-7 * 10**(L / 20) (measured;
        1e-3, i.e. 0.004 dB, at L = 80 dB).

    Raises
    ------
    ValueError
        For bad ``y`` (see :func:`as_audio_batch`) or non-positive sizes.
    """
    n_fft, hop_length = _check_stft_args(n_fft, hop_length)
    y = as_audio_batch(y, min_samples=n_fft)
    n_bins = n_fft // 2 + 1
    out = np.empty((y.shape[0], n_frames(y.shape[1], n_fft=n_fft, hop_length=hop_length), n_bins), np.float32)
    # The block generator writes every block into `out`; run it to the end.
    collections.deque(_power_blocks(y, n_fft, hop_length, bins_major=False, out=out), maxlen=0)
    return out


# ----------------------------------------------------------------------------- mel filter bank


@functools.lru_cache(maxsize=64)
def _librosa_mel(sample_rate: float, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    # librosa's own warning is replaced by EmptyMelBandsWarning, which names the settings and bands.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Empty filters detected in mel frequency basis")
        basis = librosa.filters.mel(
            sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, dtype=np.float32
        )
    basis.setflags(write=False)  # cached and shared: nobody may modify it
    return basis


def _mel_args(sample_rate, n_fft, n_mels, fmin, fmax):
    fmin, fmax = resolve_band(sample_rate=sample_rate, fmin=fmin, fmax=fmax)
    return (
        check_sample_rate(sample_rate),
        check_positive_int("n_fft", n_fft),
        check_positive_int("n_mels", n_mels),
        fmin,
        fmax,
    )


def empty_mel_bands(*, sample_rate: float, n_fft: int, n_mels: int, fmin: float = 0.0, fmax=None) -> list[int]:
    """Indices of mel bands whose filter has no non-zero weight on any FFT bin.

    Such a band's output is identically zero power (the log-mel floor) for any
    input. Unlike librosa's own check, band 0 is included when ``fmin == 0``.
    Emits no warning.

    Parameters
    ----------
    sample_rate : float > 0 [Hz]
    n_fft : int > 0
    n_mels : int > 0
    fmin : float >= 0 [Hz]
    fmax : float > fmin [Hz] or None (``sample_rate / 2``)

    Returns
    -------
    list of int
        Sorted band indices; empty when every band sees at least one bin.
    """
    basis = _librosa_mel(*_mel_args(sample_rate, n_fft, n_mels, fmin, fmax))
    return np.flatnonzero(basis.max(axis=1) <= 0).tolist()


@functools.lru_cache(maxsize=64)
def _checked_mel(sample_rate: float, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    # Cached separately from _librosa_mel so the warning fires once per settings, on first use.
    basis = _librosa_mel(sample_rate, n_fft, n_mels, fmin, fmax)
    empty = np.flatnonzero(basis.max(axis=1) <= 0).tolist()
    if empty:
        warnings.warn(
            f"{len(empty)} of n_mels={n_mels} mel bands contain no FFT bin with n_fft={n_fft} at "
            f"sample_rate={sample_rate:g} Hz, fmin={fmin:g} Hz, fmax={fmax:g} Hz, so they are always "
            f"at the floor: bands {empty}. Use fewer mels, a larger n_fft or a wider frequency range.",
            EmptyMelBandsWarning,
            stacklevel=3,
        )
    return basis


def mel_basis(*, sample_rate: float, n_fft: int, n_mels: int, fmin: float = 0.0, fmax=None) -> np.ndarray:
    """Mel filter bank of ``librosa.filters.mel`` (Slaney mel scale and area normalisation), cached.

    The first call for given settings (after resolving ``fmax=None``) emits
    one :class:`EmptyMelBandsWarning` naming the settings and the empty band
    indices, if any band is empty (see :func:`empty_mel_bands`); librosa's own
    warning is suppressed. Later calls return the cached array silently.
    ``mel_basis.cache_clear()`` forgets the cache (and so re-arms the warning).

    Parameters
    ----------
    sample_rate : float > 0 [Hz]
    n_fft : int > 0
    n_mels : int > 0
    fmin : float >= 0 [Hz]
    fmax : float > fmin [Hz] or None (``sample_rate / 2``)

    Returns
    -------
    np.ndarray [shape=(n_mels, n_fft // 2 + 1)], float32, read-only
        Weight of each FFT bin in each mel band.

    Raises
    ------
    ValueError
        For non-positive sizes or unless ``0 <= fmin < fmax``.
    """
    return _checked_mel(*_mel_args(sample_rate, n_fft, n_mels, fmin, fmax))


def _cache_clear():
    _sparse_basis.cache_clear()
    _checked_mel.cache_clear()
    _librosa_mel.cache_clear()


mel_basis.cache_clear = _cache_clear


@functools.lru_cache(maxsize=64)
def _sparse_basis(sample_rate: float, n_fft: int, n_mels: int, fmin: float, fmax: float):
    # Each FFT bin lies in at most two (overlapping triangular) bands, so the
    # CSR product does ~n_mels/2 times fewer multiply-adds than a dense matmul,
    # and it runs single-threaded in C (multi-threaded BLAS on these small
    # blocks was slower than one thread; see benchmarks).
    return scipy.sparse.csr_matrix(_checked_mel(sample_rate, n_fft, n_mels, fmin, fmax))


def mel_blocks(y: np.ndarray, *, sample_rate, n_fft, hop_length, n_mels, fmin=0.0, fmax=None):
    """Mel power of ``y`` block by block, bins-major, for consumers that reduce over bands.

    Validates like :func:`mel_power` before yielding anything.

    Yields
    ------
    clips, frames : slice
        The clips and frames of ``y`` the block covers.
    block : np.ndarray [shape=(n_mels, len(clips) * len(frames))], float32
        Mel power; columns are clip-major, then frame. Owned by the caller.
    """
    n_fft, hop_length = _check_stft_args(n_fft, hop_length)
    settings = _mel_args(sample_rate, n_fft, n_mels, fmin, fmax)
    y = as_audio_batch(y, min_samples=n_fft)
    return _mel_blocks(y, n_fft, hop_length, _sparse_basis(*settings))  # warns (once) about empty bands


def _mel_blocks(y, n_fft, hop_length, basis):
    for clips, span, power in _power_blocks(y, n_fft, hop_length, bins_major=True):
        yield clips, span, basis @ power  # CSR @ dense: streams whole rows of frames


def power_blocks(y: np.ndarray, *, n_fft: int, hop_length: int):
    """STFT power of ``y`` block by block, bins-major; as :func:`mel_blocks` with ``n_fft // 2 + 1`` bins."""
    n_fft, hop_length = _check_stft_args(n_fft, hop_length)
    y = as_audio_batch(y, min_samples=n_fft)
    return _power_blocks(y, n_fft, hop_length, bins_major=True)


def _mel_into(y, *, sample_rate, n_fft, hop_length, n_mels, fmin, fmax, log: bool) -> np.ndarray:
    blocks = mel_blocks(
        y, sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, fmin=fmin, fmax=fmax
    )
    y = np.asarray(y)
    shape = (y.shape[0], n_frames(y.shape[1], n_fft=n_fft, hop_length=hop_length), n_mels)
    out = np.empty(shape, dtype=np.float32)
    for clips, span, block in blocks:
        if log:  # while the block is in cache; the dB scaling rides on the transposing copy
            np.maximum(block, AMIN, out=block)
            np.log(block, out=block)
            np.multiply(block.T, _DB_PER_NEPER, out=_rows(out, clips, span))
        else:
            np.copyto(_rows(out, clips, span), block.T)
    return out


def mel_power(
    y: np.ndarray,
    *,
    sample_rate: float,
    n_fft: int,
    hop_length: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax=None,
) -> np.ndarray:
    """Mel power spectrogram of a batch of clips, time-major.

    Parameters
    ----------
    y : np.ndarray [shape=(B, samples)], float32
        Audio clips; ``samples >= n_fft``.
    sample_rate : float > 0 [Hz]
    n_fft, hop_length : int > 0
        As in :func:`stft_power`.
    n_mels : int > 0
    fmin : float >= 0 [Hz]
    fmax : float > fmin [Hz] or None (``sample_rate / 2``)

    Returns
    -------
    np.ndarray [shape=(B, frames, n_mels)], float32
        ``stft_power(y) @ mel_basis(...).T``: power per mel band (input units
        squared, Slaney-normalised weights), as
        ``librosa.feature.melspectrogram(center=True, pad_mode='constant')``.

    Raises
    ------
    ValueError
        For bad ``y`` or settings (see :func:`stft_power`, :func:`mel_basis`).
    """
    return _mel_into(
        y, sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, fmin=fmin, fmax=fmax, log=False
    )


def log_mel(
    y: np.ndarray,
    *,
    sample_rate: float,
    n_fft: int,
    hop_length: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax=None,
    top_db: float | None = 80.0,
) -> np.ndarray:
    """Log-mel spectrogram in dB of a batch of clips, time-major.

    ``10 * log10(max(mel_power, 1e-10))`` (reference power 1.0), then, unless
    ``top_db`` is None, every value below ``(that clip's maximum) - top_db`` is
    raised to it: per clip, exactly like ``librosa.power_to_db(S, ref=1.0,
    amin=1e-10, top_db=top_db)`` applied to each clip separately.

    Parameters
    ----------
    y : np.ndarray [shape=(B, samples)], float32
        Audio clips; ``samples >= n_fft``.
    sample_rate, n_fft, hop_length, n_mels, fmin, fmax
        As in :func:`mel_power`.
    top_db : float >= 0 [dB] or None
        Dynamic range kept below each clip's peak; None keeps everything
        above the -100 dB floor.

    Returns
    -------
    np.ndarray [shape=(B, frames, n_mels)], float32 [dB]

    Raises
    ------
    ValueError
        For bad ``y`` or settings, or a negative ``top_db``.
    """
    if top_db is not None and (
        isinstance(top_db, bool) or not isinstance(top_db, numbers.Real) or not top_db >= 0
    ):
        raise ValueError(f"top_db must be a non-negative number of dB or None. Received: top_db={top_db!r}")
    out = _mel_into(
        y, sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, fmin=fmin, fmax=fmax, log=True
    )
    if top_db is not None and out.size:
        floor = out.max(axis=(1, 2), keepdims=True)
        floor -= np.float32(top_db)
        np.maximum(out, floor, out=out)
    return out
