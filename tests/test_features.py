"""Tests of the feature stage: generated signals and spectra with known answers.

The seeded ``rng`` fixture comes from ``tests/conftest.py``.

Tolerances (why):

- STFT power vs librosa: librosa runs the FFT in float64 and rounds to
  complex64; here it runs in float32, whose absolute error is ~1e-7 of a
  frame's largest magnitude. So the absolute tolerance is 2e-6 of the peak
  power (measured: 4e-7) plus rtol 1e-5 for the strong bins.
- Log-mel vs the librosa reference: the same FFT error is *relative* to the
  level below the peak, ~4e-7 * 10**(L / 20) dB at L dB below the clip's peak
  (measured up to L = 120 dB). The noise + chirp clips span < 60 dB, where
  that is < 5e-4 dB: atol 1e-3 dB (measured: 4e-5 dB). No rtol: a relative
  tolerance on a logarithm is meaningless near 0 dB. Wide-range clips are
  checked against the level-dependent bound 1e-4 + 2e-6 * 10**(L / 20) dB.
- Complexity vs the float64 loop reference: values are in [0, 1] and the
  float32 computation is within ~5e-7 of float64 on the same spectrum;
  spectra from the two STFTs differ by float32 rounding as well: atol 2e-6.
"""

from __future__ import annotations

import math
import warnings

import librosa
import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy

from pipeline import schema
from pipeline.features import (
    EmptyMelBandsWarning,
    check_settings,
    complexity,
    compute_features,
    disequilibria,
    empty_mel_bands,
    feature_shape,
    jsd_max,
    log_mel,
    mel_basis,
    mel_power,
    min_samples,
    n_frames,
    stft_power,
)
from pipeline.features.reference import naive_complexity, naive_features, naive_log_mel
from pipeline.registry import UnknownNameError

SR = 2000  # Hz, the synthetic whale data's rate
N_SAMPLES = 4000  # 2 s


def noise_and_chirp(rng, n_clips, n_samples=N_SAMPLES, sample_rate=SR, noise=0.05):
    """Linear chirps with random start/end frequencies plus white noise, float32 [n_clips, n_samples]."""
    t = np.arange(n_samples) / sample_rate
    f0 = rng.uniform(30, 200, size=(n_clips, 1))
    f1 = rng.uniform(300, 0.45 * sample_rate, size=(n_clips, 1))
    duration = n_samples / sample_rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * duration))
    y = 0.5 * np.sin(phase) + noise * rng.standard_normal((n_clips, n_samples))
    return y.astype(np.float32)


def tone(freq, n_samples=N_SAMPLES, sample_rate=SR, amplitude=0.5):
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(n_samples) / sample_rate)).astype(np.float32)


# ----------------------------------------------------------------------------- complexity: known answers


@pytest.mark.parametrize("n_bins", [2, 3, 64, 129])
def test_uniform_spectrum_has_full_entropy_and_no_complexity(n_bins):
    S = np.full((2, 5, n_bins), 3.7, dtype=np.float32)
    out = complexity(S)
    assert out.shape == (2, 5, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(out[..., 1:], 0.0, atol=1e-6)


@pytest.mark.parametrize("n_bins", [2, 3, 64, 129])
def test_single_bin_spectrum_has_zero_entropy_and_maximal_disequilibria(n_bins):
    S = np.zeros((n_bins, n_bins), dtype=np.float32)
    S[np.arange(n_bins), np.arange(n_bins)] = 2.5  # frame i: all power in bin i
    np.testing.assert_allclose(complexity(S), 0.0, atol=1e-6)
    d = disequilibria(S)
    np.testing.assert_allclose(d[:, 0], 0.0, atol=1e-6)  # H
    np.testing.assert_allclose(d[:, 1], 1.0, atol=1e-6)  # D_SQ
    np.testing.assert_allclose(d[:, 2], 1.0, atol=1e-6)  # D_JSD: Rosso normalisation is 1 at a delta
    np.testing.assert_allclose(d[:, 3], ((n_bins - 1) / n_bins) ** 2, atol=1e-6)  # D_TV


@pytest.mark.parametrize("n_bins", [2, 10, 64, 129])
def test_jsd_max_is_the_divergence_of_a_delta_from_uniform(n_bins):
    delta = np.zeros(n_bins)
    delta[0] = 1.0
    uniform = np.full(n_bins, 1.0 / n_bins)
    # scipy's jensenshannon is the square root of the divergence (natural log)
    assert jsd_max(n_bins) == pytest.approx(jensenshannon(delta, uniform) ** 2, rel=1e-12)


def test_measures_match_independent_formulas(rng):
    n_bins = 64
    p = rng.dirichlet(np.full(n_bins, 0.3), size=200)
    S = (p * rng.uniform(1e-3, 1e3, size=(200, 1))).astype(np.float32)
    p = S / S.sum(axis=1, keepdims=True, dtype=np.float64)
    u = np.full(n_bins, 1.0 / n_bins)
    expected = np.stack(
        [
            entropy(p, axis=1) / math.log(n_bins),
            n_bins / (n_bins - 1) * ((p - u) ** 2).sum(axis=1),
            jensenshannon(p, np.broadcast_to(u, p.shape), axis=1) ** 2 / jsd_max(n_bins),
            np.abs(p - u).sum(axis=1) ** 2 / 4,
        ],
        axis=1,
    )
    np.testing.assert_allclose(disequilibria(S), expected, atol=1e-6)
    np.testing.assert_allclose(complexity(S)[:, 1:], expected[:, :1] * expected[:, 1:], atol=1e-6)


def spectra_zoo(rng, n_bins=64):
    """Awkward spectra [frames, bins]: heavy-tailed, sparse, near-uniform, extreme scales, silent."""
    heavy = rng.standard_exponential((50, n_bins)) ** 8
    sparse = rng.random((50, n_bins)) * (rng.random((50, n_bins)) < 0.1)
    near_uniform = 1 + 1e-3 * rng.standard_normal((50, n_bins))
    tiny = rng.random((20, n_bins)) * 1e-30
    huge = rng.random((20, n_bins)) * 1e30
    silent = np.zeros((3, n_bins))
    return np.concatenate([heavy, sparse, near_uniform, tiny, huge, silent]).astype(np.float32)


@pytest.mark.parametrize("n_bins", [2, 64, 129])
def test_complexity_values_lie_in_unit_interval(rng, n_bins):
    out = complexity(spectra_zoo(rng, n_bins))
    assert np.isfinite(out).all()
    assert (out >= 0).all() and (out <= 1).all()
    assert (out[:, 1:] <= out[:, :1] + 1e-7).all()  # C = H * D <= H


def test_complexity_equals_loop_reference(rng):
    S = spectra_zoo(rng)
    np.testing.assert_allclose(complexity(S), naive_complexity(S), atol=2e-6)


def test_silent_frame_is_treated_as_uniform():
    S = np.zeros((3, 16), dtype=np.float32)
    np.testing.assert_array_equal(complexity(S), np.tile([1.0, 0.0, 0.0, 0.0], (3, 1)))
    np.testing.assert_array_equal(naive_complexity(S), np.tile([1.0, 0.0, 0.0, 0.0], (3, 1)))


def test_complexity_is_scale_invariant_and_accepts_other_dtypes(rng):
    S = rng.random((40, 33)).astype(np.float32)
    base = complexity(S)
    np.testing.assert_allclose(complexity(S * np.float32(1e6)), base, atol=1e-6)
    np.testing.assert_allclose(complexity(S.astype(np.float64)), base, atol=1e-6)
    np.testing.assert_allclose(complexity((S * 1000).astype(np.int64)), base, atol=1e-3)


def test_complexity_axis_selects_the_bins_axis(rng):
    S = rng.random((3, 20, 33)).astype(np.float32)  # [clips, frames, bins]
    librosa_layout = np.ascontiguousarray(S.transpose(0, 2, 1))  # [clips, bins, frames]
    np.testing.assert_array_equal(complexity(librosa_layout, axis=1), complexity(S))
    np.testing.assert_array_equal(complexity(librosa_layout[0], axis=0), complexity(S[0]))


# ----------------------------------------------------------------------------- STFT and mel


@pytest.mark.parametrize(
    "n_fft, hop_length, n_samples",
    [(256, 32, 4000), (256, 64, 4001), (255, 50, 3000), (64, 100, 1000), (8, 3, 17), (256, 32, 256)],
)
def test_stft_power_matches_librosa(rng, n_fft, hop_length, n_samples):
    y = rng.standard_normal((3, n_samples)).astype(np.float32)
    P = stft_power(y, n_fft=n_fft, hop_length=hop_length)
    ref = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop_length, center=True, pad_mode="constant")) ** 2
    ref = np.swapaxes(ref, -1, -2)  # librosa [B, bins, frames] -> time-major
    assert P.shape == ref.shape == (3, n_frames(n_samples, n_fft=n_fft, hop_length=hop_length), n_fft // 2 + 1)
    assert P.dtype == np.float32
    np.testing.assert_allclose(P, ref, rtol=1e-5, atol=2e-6 * ref.max())


def test_frame_count_is_one_plus_samples_over_hop_for_even_n_fft():
    for n_samples in (256, 1000, 4000, 4001):
        for hop in (1, 32, 64, 300):
            assert n_frames(n_samples, n_fft=256, hop_length=hop) == 1 + n_samples // hop


@pytest.mark.parametrize("bin_index", [10, 40, 100])
def test_bin_centred_tone_puts_its_energy_in_the_bands_containing_it(bin_index):
    n_fft, hop = 256, 32
    y = tone(bin_index * SR / n_fft)[None]
    M = mel_power(y, sample_rate=SR, n_fft=n_fft, hop_length=hop, n_mels=64)[0]
    M = M[n_fft // hop : -(n_fft // hop)]  # frames fully inside the clip
    basis = mel_basis(sample_rate=SR, n_fft=n_fft, n_mels=64)
    # A periodic-Hann-windowed bin-centred tone leaks only into the two neighbouring bins.
    touching = basis[:, bin_index - 1 : bin_index + 2].max(axis=1) > 0
    share = M[:, touching].sum(axis=1) / M.sum(axis=1)
    assert share.min() > 1 - 1e-6
    assert basis[M.mean(axis=0).argmax(), bin_index] > 0  # the loudest band contains the tone


def test_off_bin_tone_puts_almost_all_energy_near_its_frequency():
    n_fft, hop, freq = 256, 64, 437.1
    M = mel_power(tone(freq)[None], sample_rate=SR, n_fft=n_fft, hop_length=hop, n_mels=64)[0, 4:-4]
    basis = mel_basis(sample_rate=SR, n_fft=n_fft, n_mels=64)
    k = round(freq * n_fft / SR)
    touching = basis[:, k - 3 : k + 4].max(axis=1) > 0
    assert (M[:, touching].sum(axis=1) / M.sum(axis=1)).min() > 0.999


def test_mel_power_is_stft_power_times_the_filter_bank(rng):
    y = noise_and_chirp(rng, 2)
    M = mel_power(y, sample_rate=SR, n_fft=256, hop_length=64, n_mels=40, fmin=20.0, fmax=800.0)
    basis = mel_basis(sample_rate=SR, n_fft=256, n_mels=40, fmin=20.0, fmax=800.0)
    P = stft_power(y, n_fft=256, hop_length=64).astype(np.float64)
    np.testing.assert_allclose(M, P @ basis.T, rtol=1e-5, atol=1e-6 * M.max())


MEL_SETTINGS = [
    dict(n_fft=256, hop_length=32, n_mels=64, fmin=0.0, fmax=None, top_db=80.0),
    dict(n_fft=256, hop_length=64, n_mels=64, fmin=0.0, fmax=None, top_db=80.0),
    dict(n_fft=255, hop_length=50, n_mels=40, fmin=50.0, fmax=900.0, top_db=None),
    dict(n_fft=512, hop_length=128, n_mels=32, fmin=10.0, fmax=1000.0, top_db=60.0),
]


@pytest.mark.parametrize("settings", MEL_SETTINGS)
def test_log_mel_equals_librosa_reference(rng, settings):
    y = noise_and_chirp(rng, 3)
    got = log_mel(y, sample_rate=SR, **settings)
    ref = np.stack([naive_log_mel(clip, sample_rate=SR, **settings) for clip in y])
    frames = n_frames(N_SAMPLES, n_fft=settings["n_fft"], hop_length=settings["hop_length"])
    assert got.shape == ref.shape == (3, frames, settings["n_mels"])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-3)


@pytest.mark.parametrize("top_db", [None, 80.0])
def test_log_mel_error_is_bounded_by_level_below_peak(rng, top_db):
    # Loud chirp over noise 60-140 dB down: exercises the float32 FFT's level-dependent error.
    y = noise_and_chirp(rng, 4, noise=0.0)
    y += (rng.standard_normal(y.shape) * np.logspace(-7, -3, 4)[:, None]).astype(np.float32)
    settings = dict(n_fft=256, hop_length=32, n_mels=64, fmin=0.0, fmax=None, top_db=top_db)
    got = log_mel(y, sample_rate=SR, **settings)
    ref = np.stack([naive_log_mel(clip, sample_rate=SR, **settings) for clip in y])
    below_peak = ref.max(axis=(1, 2), keepdims=True) - ref
    assert (np.abs(got - ref) <= 1e-4 + 2e-6 * 10 ** (below_peak / 20)).all()


def test_log_mel_top_db_is_relative_to_each_clips_own_peak(rng):
    loud = noise_and_chirp(rng, 1)
    quiet = loud * np.float32(1e-3)  # 60 dB down
    settings = dict(sample_rate=SR, n_fft=256, hop_length=64, n_mels=64, top_db=40.0)
    both = log_mel(np.concatenate([loud, quiet]), **settings)
    np.testing.assert_array_equal(both[:1], log_mel(loud, **settings))
    np.testing.assert_array_equal(both[1:], log_mel(quiet, **settings))
    np.testing.assert_allclose(both[1], both[0] - 60.0, atol=1e-3)
    for clip in both:
        assert clip.max() - clip.min() <= 40.0 + 1e-4


@pytest.mark.parametrize("settings", MEL_SETTINGS)
@pytest.mark.parametrize("n_samples", [512, 1000, 4000])
def test_mel_shapes(settings, n_samples):
    y = np.zeros((2, n_samples), dtype=np.float32)
    out = log_mel(y, sample_rate=SR, **settings)
    frames = n_frames(n_samples, n_fft=settings["n_fft"], hop_length=settings["hop_length"])
    assert out.shape == (2, frames, settings["n_mels"])
    np.testing.assert_allclose(out, -100.0, atol=1e-4)  # silence sits at the floor 10 log10(amin = 1e-10)


# ----------------------------------------------------------------------------- empty mel bands


def test_empty_mel_band_warning_fires_once_per_settings(rng):
    mel_basis.cache_clear()
    y = rng.standard_normal((2, 1000)).astype(np.float32)
    params = schema.MelParams(n_fft=64, hop_length=32, n_mels=128)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mel_basis(sample_rate=SR, n_fft=64, n_mels=128)
        mel_basis(sample_rate=SR, n_fft=64, n_mels=128, fmin=0, fmax=SR / 2)  # same settings, resolved
        log_mel(y, sample_rate=SR, n_fft=64, hop_length=32, n_mels=128)
        compute_features("mel", params, y, sample_rate=SR)
        compute_features("complexity", schema.ComplexityParams(n_fft=64, n_mels=128), y, sample_rate=SR)
    ours = [w for w in caught if issubclass(w.category, EmptyMelBandsWarning)]
    assert len(ours) == 1
    assert not [w for w in caught if "Empty filters detected" in str(w.message)]  # librosa's is suppressed
    message = str(ours[0].message)
    empty = empty_mel_bands(sample_rate=SR, n_fft=64, n_mels=128)
    assert "n_mels=128" in message and "n_fft=64" in message and "sample_rate=2000" in message
    assert f"{len(empty)} of n_mels=128" in message and str(empty[1]) in message

    with pytest.warns(EmptyMelBandsWarning):  # other settings warn again
        mel_basis(sample_rate=SR, n_fft=64, n_mels=100)


def test_empty_mel_bands_are_the_all_zero_filters():
    empty = empty_mel_bands(sample_rate=SR, n_fft=64, n_mels=128)
    with pytest.warns(UserWarning, match="Empty filters detected"):  # librosa's own, coarser check
        basis = librosa.filters.mel(sr=SR, n_fft=64, n_mels=128)
    assert empty == np.flatnonzero(basis.max(axis=1) == 0).tolist()
    assert 0 < len(empty) < 128
    assert empty_mel_bands(sample_rate=SR, n_fft=256, n_mels=64) == []


def test_check_settings_reports_problems_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # check_settings must only return messages
        empty = check_settings("mel", schema.MelParams(n_fft=64, hop_length=32, n_mels=128), sample_rate=SR)
        above = check_settings("mel", schema.MelParams(fmax=1500.0), sample_rate=SR)
        gap = check_settings("complexity", schema.ComplexityParams(n_fft=256, hop_length=300), sample_rate=SR)
        ignored = check_settings("complexity", schema.ComplexityParams(spectrum="linear", n_mels=32), sample_rate=SR)
    assert len(empty) == 1 and "empty" in empty[0] and "n_mels=128" in empty[0]
    assert any("fmax=1500 Hz exceeds the Nyquist frequency" in m for m in above)
    assert gap == ["hop_length=300 exceeds n_fft=256: 44 samples between consecutive frames are never analysed"]
    assert ignored == ["n_mels ignored: spectrum='linear' uses every FFT bin"]
    for entry in schema.FEATURES.entries():
        assert check_settings(entry.name, entry.params(), sample_rate=SR) == []


def test_check_settings_rejects_invalid_band():
    with pytest.raises(ValueError, match=r"0 <= fmin < fmax. Received: fmin=1200.0, fmax=1000.0"):
        check_settings("mel", schema.MelParams(fmin=1200.0), sample_rate=SR)


# ----------------------------------------------------------------------------- registry, dispatch, shapes


PARAMS = [
    ("mel", schema.MelParams(n_fft=256, hop_length=64, n_mels=64)),
    ("mel", schema.MelParams(n_fft=255, hop_length=50, n_mels=40, fmin=50.0, fmax=900.0, top_db=None)),
    ("complexity", schema.ComplexityParams(n_fft=256, hop_length=32)),
    ("complexity", schema.ComplexityParams(n_fft=256, hop_length=64, spectrum="linear")),
    ("waveform", schema.WaveformParams()),
    ("waveform", schema.WaveformParams(normalize=False)),
]


@pytest.mark.parametrize("name", list(schema.FEATURES))
@pytest.mark.parametrize("preset", [False, True], ids=["defaults", "preset"])
def test_every_extractor_with_default_and_preset_params(rng, name, preset):
    params = schema.FEATURES[name].tiny() if preset else schema.FEATURES[name].params()
    y = noise_and_chirp(rng, 3)
    out = compute_features(name, params, y, sample_rate=SR)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert out.shape == (3, *feature_shape(name, params, n_samples=N_SAMPLES, sample_rate=SR))


@pytest.mark.parametrize("name, params", PARAMS)
@pytest.mark.parametrize("n_samples", ["min", 1001, N_SAMPLES])
def test_feature_shape_matches_computed_arrays(rng, name, params, n_samples):
    n_samples = min_samples(name, params) if n_samples == "min" else n_samples
    y = noise_and_chirp(rng, 2, n_samples=n_samples)
    out = compute_features(name, params, y, sample_rate=SR)
    assert out.shape == (2, *feature_shape(name, params, n_samples=n_samples, sample_rate=SR))
    assert out.dtype == np.float32


@pytest.mark.parametrize("name, params", PARAMS)
def test_compute_features_equals_naive_reference(rng, name, params):
    y = noise_and_chirp(rng, 3)
    got = compute_features(name, params, y, sample_rate=SR)
    ref = np.stack([naive_features(name, params, clip, sample_rate=SR) for clip in y])
    assert got.shape == ref.shape
    atol = {"mel": 1e-3, "complexity": 2e-6, "waveform": 0.0}[name]  # see module doc
    np.testing.assert_allclose(got, ref, rtol=0, atol=atol)


@pytest.mark.parametrize(
    "name, params",
    [
        # The default queue's settings: complexity in the upcall band, log-mel at hop 32.
        ("complexity", schema.ComplexityParams(n_fft=256, hop_length=32, n_mels=64, fmin=30.0, fmax=400.0)),
        ("mel", schema.MelParams(n_fft=256, hop_length=32, n_mels=64)),
    ],
)
def test_batch_spanning_several_blocks_equals_naive_reference(rng, name, params):
    # 19 clips of 126 frames fill more than two blocks of 1024 frames, the last one partly:
    # every clip must come out as if featurised alone.
    y = noise_and_chirp(rng, 19)
    got = compute_features(name, params, y, sample_rate=SR)
    ref = np.stack([naive_features(name, params, clip, sample_rate=SR) for clip in y])
    atol = {"mel": 1e-3, "complexity": 2e-6}[name]  # see module doc
    np.testing.assert_allclose(got, ref, rtol=0, atol=atol)


def test_min_samples():
    assert min_samples("mel", schema.MelParams(n_fft=512)) == 512
    assert min_samples("complexity", schema.ComplexityParams(n_fft=128)) == 128
    assert min_samples("waveform", schema.WaveformParams()) == 1


def test_waveform_is_peak_normalised_per_clip(rng):
    y = noise_and_chirp(rng, 3) * np.array([[1.0], [1e-3], [0.0]], dtype=np.float32)
    out = compute_features("waveform", schema.WaveformParams(), y, sample_rate=SR)
    np.testing.assert_allclose(np.abs(out[:2]).max(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[1], y[1] / np.abs(y[1]).max(), rtol=1e-6)
    assert (out[2] == 0).all()  # silence stays silent instead of becoming NaN
    raw = compute_features("waveform", schema.WaveformParams(normalize=False), y, sample_rate=SR)
    np.testing.assert_array_equal(raw, y)
    assert not np.shares_memory(raw, y)


def test_complexity_feature_of_mel_and_linear_spectra(rng):
    y = noise_and_chirp(rng, 2)
    mel = compute_features("complexity", schema.ComplexityParams(hop_length=64), y, sample_rate=SR)
    np.testing.assert_allclose(
        mel, complexity(mel_power(y, sample_rate=SR, n_fft=256, hop_length=64, n_mels=64)), atol=1e-6
    )
    linear_params = schema.ComplexityParams(hop_length=64, spectrum="linear")
    linear = compute_features("complexity", linear_params, y, sample_rate=SR)
    np.testing.assert_allclose(linear, complexity(stft_power(y, n_fft=256, hop_length=64)), atol=1e-6)
    assert not np.allclose(mel, linear)


# ----------------------------------------------------------------------------- errors


def test_unknown_feature_name_lists_the_choices():
    with pytest.raises(UnknownNameError, match="'mfcc' is not a feature; choose one of: complexity, mel, waveform"):
        compute_features("mfcc", schema.MelParams(), np.zeros((1, 4000), np.float32), sample_rate=SR)


@pytest.mark.parametrize(
    "y, message",
    [
        (np.zeros(4000, np.float32), r"y must be 2-D \[B, samples\]. Received: y.shape=\(4000,\)"),
        (np.zeros((2, 1, 4000), np.float32), r"y must be 2-D \[B, samples\]. Received: y.shape=\(2, 1, 4000\)"),
        (np.zeros((2, 4000), np.int16), r"y must be floating-point audio \(float32\). Received: y.dtype=int16"),
        (np.zeros((2, 100), np.float32), r"y must have at least 256 samples per clip. Received: y.shape=\(2, 100\)"),
        (np.full((2, 4000), np.nan, np.float32), r"y must be finite"),
    ],
)
@pytest.mark.parametrize("name", ["mel", "complexity"])
def test_bad_audio_is_rejected_with_the_rule_and_what_was_received(name, y, message):
    with pytest.raises(ValueError, match=message):
        compute_features(name, schema.FEATURES[name].params(n_fft=256), y, sample_rate=SR)


def test_bad_waveform_input_is_rejected():
    with pytest.raises(ValueError, match=r"y must be 2-D \[B, samples\]. Received: y.shape=\(4000,\)"):
        compute_features("waveform", schema.WaveformParams(), np.zeros(4000, np.float32), sample_rate=SR)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda y: stft_power(y, n_fft=0, hop_length=32), r"n_fft must be a positive integer. Received: n_fft=0"),
        (
            lambda y: stft_power(y, n_fft=256, hop_length=2.5),
            r"hop_length must be a positive integer. Received: hop_length=2.5",
        ),
        (
            lambda y: log_mel(y, sample_rate=SR, n_fft=256, hop_length=64, n_mels=0),
            r"n_mels must be a positive integer. Received: n_mels=0",
        ),
        (
            lambda y: log_mel(y, sample_rate=SR, n_fft=256, hop_length=64, n_mels=64, fmin=900.0, fmax=500.0),
            r"fmin and fmax must satisfy 0 <= fmin < fmax. Received: fmin=900.0, fmax=500.0",
        ),
        (
            lambda y: log_mel(y, sample_rate=SR, n_fft=256, hop_length=64, n_mels=64, top_db=-1.0),
            r"top_db must be a non-negative number of dB or None. Received: top_db=-1.0",
        ),
        (
            lambda y: log_mel(y, sample_rate=0, n_fft=256, hop_length=64, n_mels=64),
            r"sample_rate must be a positive number of Hz. Received: sample_rate=0",
        ),
        (
            lambda y: compute_features("mel", schema.ComplexityParams(), y, sample_rate=SR),
            r"params for feature 'mel' must be a pipeline.schema.MelParams. Received: params=ComplexityParams\(",
        ),
        (
            lambda y: compute_features("complexity", schema.ComplexityParams(spectrum="cqt"), y, sample_rate=SR),
            r"spectrum must be 'mel' or 'linear'. Received: spectrum='cqt'",
        ),
        (
            lambda y: compute_features("complexity", schema.ComplexityParams(n_mels=1), y, sample_rate=SR),
            r"n_mels must be an integer >= 2 for complexity. Received: n_mels=1",
        ),
        (
            lambda y: feature_shape("mel", schema.MelParams(), n_samples=100, sample_rate=SR),
            r"n_samples must be an integer >= 256 for feature 'mel'. Received: n_samples=100",
        ),
    ],
)
def test_bad_parameters_are_rejected_with_the_rule_and_what_was_received(call, message):
    with pytest.raises(ValueError, match=message):
        call(np.zeros((2, 4000), np.float32))


@pytest.mark.parametrize(
    "S, kwargs, message",
    [
        (-np.ones((3, 8)), {}, r"S must be a power spectrum \(>= 0\). Received: min\(S\)=-1.0"),
        (np.ones((3, 1)), {}, r"S must have at least 2 bins along axis. Received: S.shape=\(3, 1\), axis=-1"),
        (np.ones((3, 8)), {"axis": 2}, r"axis must index a dimension of S. Received: axis=2, S.shape=\(3, 8\)"),
        (np.array([[1.0, np.nan]]), {}, r"S must be finite"),
        (np.array([[1.0, np.inf]]), {}, r"S must be finite"),
        (np.ones((3, 8), dtype=bool), {}, r"S must be a real power spectrum array"),
    ],
)
def test_bad_spectra_are_rejected(S, kwargs, message):
    with pytest.raises(ValueError, match=message):
        complexity(S, **kwargs)


def test_jsd_max_rejects_fewer_than_two_bins():
    with pytest.raises(ValueError, match=r"n_bins must be an integer >= 2. Received: n_bins=1"):
        jsd_max(1)
