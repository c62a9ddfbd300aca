"""Deliberately naive feature code: one clip at a time, librosa calls and Python loops.

This is the straightforward per-clip approach (librosa per clip, complexity by
looping over frames and bins with :mod:`math`). It is the ground truth for the
tests of the batched code in :mod:`pipeline.features` and the baseline of the
speed benchmark. Do not use it in the pipeline.
"""

from __future__ import annotations

import math

import librosa
import numpy as np

from pipeline import schema

__all__ = ["naive_complexity", "naive_features", "naive_log_mel"]


def _check_clip(y) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D [samples] (one clip). Received: y.shape={y.shape}")
    return y.astype(np.float32, copy=False)


def _naive_mel_power(y, *, sample_rate, n_fft, hop_length, n_mels, fmin, fmax) -> np.ndarray:
    """librosa mel power ``[n_mels, frames]`` of one clip."""
    return librosa.feature.melspectrogram(
        y=y,
        sr=sample_rate,
        n_fft=n_fft,
        hop_length=hop_length,
        center=True,
        pad_mode="constant",
        power=2.0,
        n_mels=n_mels,
        fmin=fmin,
        fmax=fmax,
    )


def naive_log_mel(y, *, sample_rate, n_fft, hop_length, n_mels, fmin=0.0, fmax=None, top_db=80.0) -> np.ndarray:
    """Log-mel spectrogram of one clip with librosa.

    Parameters
    ----------
    y : np.ndarray [shape=(samples,)], float32
    sample_rate : float > 0 [Hz]
    n_fft, hop_length, n_mels : int > 0
    fmin, fmax : float [Hz] (``fmax=None``: ``sample_rate / 2``)
    top_db : float >= 0 [dB] or None

    Returns
    -------
    np.ndarray [shape=(frames, n_mels)], float32 [dB]
        ``librosa.power_to_db(librosa.feature.melspectrogram(...,
        center=True, pad_mode='constant', power=2.0), ref=1.0, amin=1e-10,
        top_db=top_db)``, transposed to time-major.
    """
    y = _check_clip(y)
    S = _naive_mel_power(
        y, sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, fmin=fmin, fmax=fmax
    )
    return librosa.power_to_db(S, ref=1.0, amin=1e-10, top_db=top_db).T


def naive_complexity(S) -> np.ndarray:
    """``(H, C_SQ, C_JSD, C_TV)`` per frame by explicit loops (definitions in :mod:`.complexity`).

    Parameters
    ----------
    S : np.ndarray [shape=(frames, bins)], >= 0
        Power spectrum of one clip, time-major.

    Returns
    -------
    np.ndarray [shape=(frames, 4)], float64
        Frames with zero total power give ``(1, 0, 0, 0)``.
    """
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 2 or S.shape[1] < 2:
        raise ValueError(f"S must be 2-D [frames, bins] with at least 2 bins. Received: S.shape={S.shape}")
    n = S.shape[1]
    u = 1.0 / n
    log_n = math.log(n)
    jsd_max = -0.5 * ((n + 1) / n * math.log(n + 1) - 2 * math.log(2 * n) + math.log(n))
    out = np.zeros((S.shape[0], 4))
    for t, row in enumerate(S.tolist()):
        total = math.fsum(row)
        if total <= 0:
            out[t] = (1.0, 0.0, 0.0, 0.0)
            continue
        p = [v / total for v in row]
        entropy_p = 0.0
        entropy_m = 0.0
        sum_sq = 0.0
        sum_abs = 0.0
        for pi in p:
            if pi > 0:
                entropy_p -= pi * math.log(pi)
            mi = 0.5 * (pi + u)
            entropy_m -= mi * math.log(mi)
            sum_sq += (pi - u) ** 2
            sum_abs += abs(pi - u)
        h = entropy_p / log_n
        d_sq = n / (n - 1) * sum_sq
        d_jsd = (entropy_m - entropy_p / 2 - log_n / 2) / jsd_max
        d_tv = sum_abs**2 / 4
        out[t] = (h, h * d_sq, h * d_jsd, h * d_tv)
    return out


def naive_features(name: str, params, y, *, sample_rate: int) -> np.ndarray:
    """One clip's features like :func:`pipeline.features.compute_features` gives for a batch of one.

    Parameters
    ----------
    name : str
        ``mel``, ``complexity`` or ``waveform``.
    params : schema.MelParams, schema.ComplexityParams or schema.WaveformParams
    y : np.ndarray [shape=(samples,)], float32
    sample_rate : int > 0 [Hz]

    Returns
    -------
    np.ndarray, float32
        mel ``[frames, n_mels]`` (dB), complexity ``[frames, 4]``, waveform ``[samples]``.
    """
    if name not in schema.FEATURES:
        raise ValueError(f"name must be one of {sorted(schema.FEATURES)}. Received: name={name!r}")
    y = _check_clip(y)
    if name == "mel":
        return naive_log_mel(
            y,
            sample_rate=sample_rate,
            n_fft=params.n_fft,
            hop_length=params.hop_length,
            n_mels=params.n_mels,
            fmin=params.fmin,
            fmax=params.fmax,
            top_db=params.top_db,
        ).astype(np.float32)
    if name == "complexity":
        if params.spectrum == "mel":
            S = _naive_mel_power(
                y,
                sample_rate=sample_rate,
                n_fft=params.n_fft,
                hop_length=params.hop_length,
                n_mels=params.n_mels,
                fmin=params.fmin,
                fmax=params.fmax,
            )
        else:
            S = np.abs(librosa.stft(y, n_fft=params.n_fft, hop_length=params.hop_length, pad_mode="constant")) ** 2
        return naive_complexity(S.T).astype(np.float32)
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    if params.normalize and peak > 0:
        return (y / peak).astype(np.float32)
    return y.copy()
