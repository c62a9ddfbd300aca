"""Feature stage: a batch of decoded clips in, time-major float32 features out.

Pure numpy (no files, no Keras/TensorFlow). Each feature named in
:data:`pipeline.schema.FEATURES` is an :class:`Extractor` here (:data:`MEL`,
:data:`COMPLEXITY`, :data:`WAVEFORM`), and the functions below dispatch by name. Per clip:

- ``mel`` -> ``[frames, n_mels]``: log-mel power in dB re 1.0, clipped
  ``top_db`` below each clip's own peak (:func:`.mel.log_mel`);
- ``complexity`` -> ``[frames, 4]``: ``(H, C_SQ, C_JSD, C_TV)``
  (:mod:`.complexity`) of the mel power spectrum (``spectrum="mel"``) or of
  the linear STFT power spectrum (``spectrum="linear"``);
- ``waveform`` -> ``[samples]``: the audio, divided by the clip's peak
  ``max |y|`` when ``normalize`` (an all-zero clip stays zero).

``frames = 1 + (samples + 2 * (n_fft // 2) - n_fft) // hop_length`` (centred,
zero-padded frames as ``librosa.stft(center=True, pad_mode='constant')``;
``1 + samples // hop_length`` for even ``n_fft``). ``fmax=None`` means
``sample_rate / 2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from pipeline import schema
from pipeline.features.complexity import complexities_bins_major, complexity, disequilibria, jsd_max
from pipeline.features.mel import (
    EmptyMelBandsWarning,
    as_audio_batch,
    check_positive_int,
    check_sample_rate,
    empty_mel_bands,
    log_mel,
    mel_basis,
    mel_blocks,
    mel_power,
    n_frames,
    power_blocks,
    resolve_band,
    stft_power,
)

__all__ = [
    "COMPLEXITY",
    "MEL",
    "WAVEFORM",
    "EmptyMelBandsWarning",
    "Extractor",
    "check_settings",
    "complexity",
    "compute_features",
    "disequilibria",
    "empty_mel_bands",
    "feature_shape",
    "jsd_max",
    "log_mel",
    "mel_basis",
    "mel_power",
    "min_samples",
    "n_frames",
    "stft_power",
]


@dataclass(frozen=True)
class Extractor:
    """One feature kind: how to compute it, its shape and its requirements.

    Attributes
    ----------
    compute : callable ``(params, y, *, sample_rate) -> np.ndarray [B, ...] float32``
        ``y`` is float32 ``[B, samples]``, already validated by
        :func:`compute_features`.
    shape : callable ``(params, *, n_samples, sample_rate) -> tuple``
        Per-clip output shape.
    min_samples : callable ``(params) -> int``
    check : callable ``(params, *, sample_rate) -> list[str]``
        Warnings about valid but suspicious settings; raises ValueError for
        invalid ones.
    """

    compute: Callable
    shape: Callable
    min_samples: Callable
    check: Callable

    def __call__(self, params, y, *, sample_rate):
        return self.compute(params, y, sample_rate=sample_rate)


# ----------------------------------------------------------------------------- shared by spectral features


def _spectral_min_samples(params) -> int:
    return params.n_fft


def _check_spectral(params, *, sample_rate, mel: bool) -> list[str]:
    check_sample_rate(sample_rate)
    check_positive_int("n_fft", params.n_fft)
    check_positive_int("hop_length", params.hop_length)
    messages = []
    if params.hop_length > params.n_fft:
        messages.append(
            f"hop_length={params.hop_length} exceeds n_fft={params.n_fft}: "
            f"{params.hop_length - params.n_fft} samples between consecutive frames are never analysed"
        )
    if not mel:
        return messages
    fmin, fmax = resolve_band(sample_rate=sample_rate, fmin=params.fmin, fmax=params.fmax)
    if fmax > sample_rate / 2:
        messages.append(
            f"fmax={fmax:g} Hz exceeds the Nyquist frequency sample_rate/2={sample_rate / 2:g} Hz: "
            "mel bands above it see no signal"
        )
    empty = empty_mel_bands(
        sample_rate=sample_rate, n_fft=params.n_fft, n_mels=params.n_mels, fmin=fmin, fmax=fmax
    )
    if empty:
        messages.append(
            f"{len(empty)} of n_mels={params.n_mels} mel bands are empty (contain no FFT bin) with "
            f"n_fft={params.n_fft} at sample_rate={sample_rate:g} Hz, fmin={fmin:g} Hz, fmax={fmax:g} Hz: "
            f"bands {empty}; use fewer mels, a larger n_fft or a wider frequency range"
        )
    return messages


# ----------------------------------------------------------------------------- mel


def _mel_compute(params: schema.MelParams, y, *, sample_rate):
    return log_mel(
        y,
        sample_rate=sample_rate,
        n_fft=params.n_fft,
        hop_length=params.hop_length,
        n_mels=params.n_mels,
        fmin=params.fmin,
        fmax=params.fmax,
        top_db=params.top_db,
    )


def _mel_shape(params: schema.MelParams, *, n_samples, sample_rate):
    return (n_frames(n_samples, n_fft=params.n_fft, hop_length=params.hop_length), params.n_mels)


MEL = Extractor(
    compute=_mel_compute,
    shape=_mel_shape,
    min_samples=_spectral_min_samples,
    check=lambda params, *, sample_rate: _check_spectral(params, sample_rate=sample_rate, mel=True),
)


# ----------------------------------------------------------------------------- complexity


def _check_complexity_params(params: schema.ComplexityParams) -> None:
    if params.spectrum not in ("mel", "linear"):
        raise ValueError(f"spectrum must be 'mel' or 'linear'. Received: spectrum={params.spectrum!r}")
    if params.spectrum == "mel" and (not isinstance(params.n_mels, int) or params.n_mels < 2):
        raise ValueError(f"n_mels must be an integer >= 2 for complexity. Received: n_mels={params.n_mels!r}")
    if params.spectrum == "linear" and (not isinstance(params.n_fft, int) or params.n_fft < 2):
        raise ValueError(f"n_fft must be an integer >= 2 for complexity. Received: n_fft={params.n_fft!r}")


def _complexity_compute(params: schema.ComplexityParams, y, *, sample_rate):
    _check_complexity_params(params)
    # Fused: each block's spectrum goes straight into the complexity kernel
    # while it is in cache, bins-major as the kernel wants it; the full
    # [B, frames, bins] spectrum is never stored.
    if params.spectrum == "mel":
        blocks = mel_blocks(
            y,
            sample_rate=sample_rate,
            n_fft=params.n_fft,
            hop_length=params.hop_length,
            n_mels=params.n_mels,
            fmin=params.fmin,
            fmax=params.fmax,
        )
    else:
        blocks = power_blocks(y, n_fft=params.n_fft, hop_length=params.hop_length)
    out = np.empty((y.shape[0], n_frames(y.shape[1], n_fft=params.n_fft, hop_length=params.hop_length), 4), np.float32)
    scratch = None
    for clips, span, block in blocks:
        if scratch is None or scratch.shape[1] < block.shape[1]:
            scratch = np.empty_like(block)
        out[clips, span] = complexities_bins_major(block, scratch).reshape(
            clips.stop - clips.start, span.stop - span.start, 4
        )
    return out


def _complexity_shape(params: schema.ComplexityParams, *, n_samples, sample_rate):
    return (n_frames(n_samples, n_fft=params.n_fft, hop_length=params.hop_length), 4)


def _complexity_check(params: schema.ComplexityParams, *, sample_rate):
    _check_complexity_params(params)
    messages = _check_spectral(params, sample_rate=sample_rate, mel=params.spectrum == "mel")
    if params.spectrum == "linear":
        defaults = schema.ComplexityParams()
        ignored = [k for k in ("n_mels", "fmin", "fmax") if getattr(params, k) != getattr(defaults, k)]
        if ignored:
            messages.append(f"{', '.join(ignored)} ignored: spectrum='linear' uses every FFT bin")
    return messages


COMPLEXITY = Extractor(
    compute=_complexity_compute,
    shape=_complexity_shape,
    min_samples=_spectral_min_samples,
    check=_complexity_check,
)


# ----------------------------------------------------------------------------- waveform


def _waveform_compute(params: schema.WaveformParams, y, *, sample_rate):
    y = as_audio_batch(y)
    if not params.normalize:
        return y.copy()
    peak = np.abs(y).max(axis=1, keepdims=True)
    peak[peak == 0] = 1.0  # an all-zero clip stays zero rather than becoming NaN
    return y / peak


def _waveform_check(params: schema.WaveformParams, *, sample_rate):
    check_sample_rate(sample_rate)
    return []


WAVEFORM = Extractor(
    compute=_waveform_compute,
    shape=lambda params, *, n_samples, sample_rate: (n_samples,),
    min_samples=lambda params: 1,
    check=_waveform_check,
)


# ----------------------------------------------------------------------------- public dispatch


def _get(name: str, params) -> Extractor:
    entry = schema.FEATURES[name]  # UnknownNameError listing the choices
    expected = entry.params
    if not isinstance(params, expected):
        raise ValueError(
            f"params for feature {name!r} must be a pipeline.schema.{expected.__name__}. "
            f"Received: params={params!r}"
        )
    return entry.load()


def compute_features(name: str, params, y: np.ndarray, *, sample_rate: int) -> np.ndarray:
    """Features of a batch of equally long clips.

    Parameters
    ----------
    name : str
        A key of :data:`pipeline.schema.FEATURES` (``mel``, ``complexity``, ``waveform``).
    params : the matching frozen dataclass of :mod:`pipeline.schema`
        e.g. ``schema.MelParams(n_fft=256, hop_length=64, n_mels=64)``.
    y : np.ndarray [shape=(B, samples)], float32, finite
        Decoded audio, ``samples >= min_samples(name, params)``.
    sample_rate : int > 0 [Hz]

    Returns
    -------
    np.ndarray [shape=(B, *feature_shape(name, params, ...))], float32, time-major
        See the module doc for each feature's content.

    Raises
    ------
    pipeline.registry.UnknownNameError
        For an unknown ``name`` (a QueueError listing the choices).
    ValueError
        For ``params`` of the wrong type, invalid settings, or bad ``y``
        (not 2-D, not floating point, too short, not finite).
    """
    extractor = _get(name, params)
    check_sample_rate(sample_rate)
    y = as_audio_batch(y, min_samples=extractor.min_samples(params))
    return extractor.compute(params, y, sample_rate=sample_rate)


def feature_shape(name: str, params, *, n_samples: int, sample_rate: int) -> tuple:
    """Per-clip shape (without the batch axis) of ``compute_features`` on clips of ``n_samples``.

    Raises
    ------
    ValueError
        If ``n_samples < min_samples(name, params)``, or as :func:`compute_features`.
    """
    extractor = _get(name, params)
    check_sample_rate(sample_rate)
    needed = extractor.min_samples(params)
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < needed:
        raise ValueError(
            f"n_samples must be an integer >= {needed} for feature {name!r}. Received: n_samples={n_samples!r}"
        )
    return tuple(int(d) for d in extractor.shape(params, n_samples=int(n_samples), sample_rate=sample_rate))


def min_samples(name: str, params) -> int:
    """Fewest real samples a clip needs: ``n_fft`` for spectral features, 1 for ``waveform``."""
    return int(_get(name, params).min_samples(params))


def check_settings(name: str, params, *, sample_rate: int) -> list[str]:
    """Human-readable warnings about valid but suspicious settings; ``[]`` when fine.

    Reported: empty mel bands (no FFT bin inside them), ``fmax`` above the
    Nyquist frequency ``sample_rate / 2``, ``hop_length > n_fft`` (skipped
    samples), and mel settings that ``spectrum='linear'`` ignores. Emits no
    Python warning.

    Raises
    ------
    ValueError
        For settings that :func:`compute_features` would reject
        (``fmin >= fmax``, non-positive sample rate, wrong ``params`` type),
        so that a queue can be validated before any work starts.
    """
    extractor = _get(name, params)
    return list(extractor.check(params, sample_rate=sample_rate))
