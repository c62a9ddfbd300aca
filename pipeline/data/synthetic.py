"""A synthetic North Atlantic right-whale dataset, written in the kaggle_whale layout.

The default queue runs on this data, so it must be a real learning problem:
a good spectrogram model should score a high but not perfect AUC. Each 2 s
clip at 2 kHz is background plus, for positives, one right-whale upcall:

* upcall: a 0.5-1.5 s upsweep from 50-100 Hz to 150-250 Hz with a J-shaped
  contour (flat start, steeper rise), a smooth amplitude envelope, a random
  onset, and in ~60 % of calls a weaker 2nd harmonic;
* background: coloured ocean noise (power ~ 1/f^a, random a and level, a
  random low-frequency roll-off and, in some clips, a slowly varying level),
  ship tonals with slight frequency wobble and sometimes harmonics, and
  impulsive clicks;
* confounders, mostly in negatives (and in a few positives, so that their
  presence does not give the answer away): downsweeps in the call band, flat
  tones at 80-250 Hz, short (0.1-0.4 s) upsweeps, and sweeps in other bands;
* the call's in-band SNR is uniform in dB over a wide range, so the faintest
  calls are nearly invisible and bound the achievable AUC below 1.

Files (see the README.txt written next to them)::

    ROOT/train.csv            clip_name,label
    ROOT/train/train<i>.aiff  16-bit AIFF, 2 kHz, 4000 samples   (i from 1)
    ROOT/test/test<i>.aiff
    ROOT/test_labels.csv      clip,label   -- answer key, never read by the pipeline
    ROOT/truth.csv            per-clip generator truth (kind, SNR, call shape) -- also an answer key
    ROOT/synthetic.json       generator parameters and format version
    ROOT/README.txt
    ROOT/.pipeline-owned      the pipeline's ownership marker: only such a folder is ever replaced

Every clip draws from its own generator, seeded by
``SeedSequence(seed, spawn_key=(split, index))``, so a clip does not depend
on how many others are generated or in which process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from pipeline import ownership
from pipeline.data.base import Dataset
from pipeline.data.generated_store import (SPEC_FILE, GeneratedLayout, check_free_space, count_files, read_spec,
                                           write_csv, write_into_place, write_pcm16)
from pipeline.data.whale import read_kaggle_whale
from pipeline.errors import DataError

logger = logging.getLogger(__name__)

# Bump when the generator's output changes for the same parameters, so that
# existing datasets are regenerated instead of silently mixing versions.
FORMAT_VERSION = 1
SAMPLE_RATE = 2000  # Hz, as in the Kaggle data
N_SAMPLES = 4000
DURATION = N_SAMPLES / SAMPLE_RATE  # 2 s, as in the Kaggle data
_SPLIT_CODES = {"train": 0, "test": 1}
_LABEL_STREAM = 2  # spawn_key prefix for the label permutations


@dataclass(frozen=True)
class Recipe:
    """The generator's knobs. Written to synthetic.json; changing one regenerates the data.

    Ranges are ``(low, high)`` for a uniform draw; frequencies in Hz, durations
    in seconds, levels in dB.
    """

    # Upcall
    call_duration: tuple = (0.5, 1.5)
    call_start_hz: tuple = (50.0, 100.0)
    call_end_hz: tuple = (150.0, 250.0)
    call_curvature: tuple = (1.2, 2.6)  # contour exponent: >1 gives the J shape
    harmonic_probability: float = 0.6
    harmonic_level_db: tuple = (-14.0, -4.0)  # relative to the fundamental
    # In-band SNR: call power over background-noise power in the call's band.
    snr_db: tuple = (-13.0, 10.0)
    # Background
    noise_exponent: tuple = (0.3, 2.0)  # power spectrum ~ 1/f^a
    noise_highpass_hz: tuple = (5.0, 40.0)
    noise_modulation_probability: float = 0.4
    tonal_probability: float = 0.35
    tonal_hz: tuple = (30.0, 400.0)
    tonal_snr_db: tuple = (-6.0, 12.0)  # tone power over in-band noise power
    click_probability: float = 0.3
    clicks_per_clip: tuple = (1, 20)
    click_level_db: tuple = (6.0, 26.0)  # click peak over noise RMS
    # Confounders
    confounder_probability_negative: float = 0.5
    confounder_probability_positive: float = 0.15
    confounder_snr_db: tuple = (-8.0, 10.0)
    peak_level: tuple = (0.05, 0.9)  # final peak amplitude (16-bit PCM full scale is 1)


RECIPE = Recipe()
CONFOUNDERS = ("downsweep", "flat_tone", "short_upsweep", "other_band_sweep")


# ----------------------------------------------------------------------------- public API


def ensure_synthetic_whale(
    root: str,
    *,
    n_train: int,
    n_test: int,
    positive_fraction: float,
    seed: int,
) -> None:
    """Write the synthetic whale dataset to ``root`` unless it is already there.

    Does nothing when ``root/synthetic.json`` records the same parameters (and
    generator version) and the clip folders hold the expected number of files.
    Otherwise the whole dataset is written to a hidden temporary sibling folder
    and renamed into place at the end, so an interrupted run never leaves a
    half-written dataset that looks complete. Output is deterministic: the
    same parameters give byte-identical files.

    Parameters
    ----------
    root : str
        Dataset folder. Replaced only if it is empty or was written by this
        function (holds ``synthetic.json``).
    n_train, n_test : int
        Clips per split (``n_train >= 2``, ``n_test >= 0``).
    positive_fraction : float in (0, 1)
        Fraction of upcall clips in each split; the count is rounded and kept
        between 1 and ``n - 1`` in the training set.
    seed : int >= 0

    Raises
    ------
    ValueError
        For invalid parameters.
    DataError
        When ``root`` exists and holds something else.
    """
    params = _check_params(n_train=n_train, n_test=n_test, positive_fraction=positive_fraction, seed=seed)
    root = os.path.abspath(root)
    spec = _spec(params)
    if _is_current(root, spec):
        logger.debug("%s: synthetic whale data is up to date", root)
        return
    problem = root_problem(root)
    if problem:
        raise DataError(problem)
    # 16-bit AIFF clips plus their CSV rows (~40 bytes each, truth.csv is the widest).
    check_free_space(root, (params["n_train"] + params["n_test"]) * (2 * N_SAMPLES + 54 + 200),
                     keys="data.n_train, data.n_test")
    started = time.perf_counter()
    write_into_place(root, lambda tmp: _write_dataset(tmp, params=params, spec=spec),
                     is_current=lambda: _is_current(root, spec), layout=LAYOUT)
    logger.info(
        "%s: wrote %d train + %d test synthetic clips in %.1f s",
        root, params["n_train"], params["n_test"], time.perf_counter() - started,
    )


def is_generated(root: str, *, n_train: int, n_test: int, positive_fraction: float, seed: int) -> bool:
    """Whether ``root`` holds this dataset already, so that :func:`ensure_synthetic_whale` would write nothing.

    Reads only ``synthetic.json`` and the folder listings; for checks that
    must not write (``--dry-run``, the "finished" check of a skipped experiment).
    """
    try:
        params = _check_params(n_train=n_train, n_test=n_test, positive_fraction=positive_fraction, seed=seed)
    except ValueError:
        return False
    return _is_current(os.path.abspath(root), _spec(params))


def read_synthetic_whale(
    root: str,
    *,
    n_train: int = 2000,
    n_test: int = 500,
    positive_fraction: float = 0.3,
    seed: int = 0,
) -> Dataset:
    """:func:`ensure_synthetic_whale`, then :func:`pipeline.data.whale.read_kaggle_whale` on ``root``."""
    ensure_synthetic_whale(root, n_train=n_train, n_test=n_test, positive_fraction=positive_fraction, seed=seed)
    return read_kaggle_whale(root)


def synthesize_clip(*, rng: np.random.Generator, label: int, recipe: Recipe = RECIPE) -> tuple:
    """One synthetic clip.

    Parameters
    ----------
    rng : np.random.Generator
        The clip's own generator (all randomness comes from it).
    label : int
        1: the clip holds an upcall; 0: background and maybe a confounder.
    recipe : Recipe

    Returns
    -------
    samples : np.ndarray [shape=(4000,), dtype=float32]
        2 s at 2 kHz, peak in ``recipe.peak_level``.
    truth : dict
        What was generated (``kind``, ``snr_db``, call contour, ...), for truth.csv.
    """
    n = N_SAMPLES
    t = np.arange(n) / SAMPLE_RATE
    noise, noise_spectrum = _ocean_noise(rng, recipe)
    truth = {
        "kind": "background",
        "snr_db": np.nan,
        "call_onset_s": np.nan,
        "call_duration_s": np.nan,
        "call_start_hz": np.nan,
        "call_end_hz": np.nan,
        "harmonic": False,
        "confounder": "",
        "tonal": False,
        "clicks": 0,
    }
    mix = noise.copy()

    if rng.random() < recipe.tonal_probability:
        mix += _ship_tonals(rng, t, noise_spectrum, recipe)
        truth["tonal"] = True
    if rng.random() < recipe.click_probability:
        clicks, count = _clicks(rng, recipe)
        mix += clicks
        truth["clicks"] = count

    if label:
        duration = rng.uniform(*recipe.call_duration)
        f_start = rng.uniform(*recipe.call_start_hz)
        f_end = rng.uniform(*recipe.call_end_hz)
        contour = f_start + (f_end - f_start) * np.linspace(0.0, 1.0, _n(duration)) ** rng.uniform(
            *recipe.call_curvature
        )
        harmonic = rng.random() < recipe.harmonic_probability
        harmonic_gain = 10 ** (rng.uniform(*recipe.harmonic_level_db) / 20) if harmonic else 0.0
        onset = rng.uniform(0.0, DURATION - duration)
        snr = rng.uniform(*recipe.snr_db)
        call = _tone(rng, contour, harmonic_gain=harmonic_gain)
        # SNR against the noise in the fundamental's band, where a detector looks first.
        mix += _place(call, onset, _gain(call, snr, noise_spectrum, f_start - 15, f_end + 15))
        truth.update(
            kind="upcall",
            snr_db=round(float(snr), 3),
            call_onset_s=round(float(onset), 4),
            call_duration_s=round(float(duration), 4),
            call_start_hz=round(float(f_start), 2),
            call_end_hz=round(float(f_end), 2),
            harmonic=bool(harmonic),
        )
        confounder_probability = recipe.confounder_probability_positive
    else:
        confounder_probability = recipe.confounder_probability_negative

    if rng.random() < confounder_probability:
        kind = CONFOUNDERS[rng.integers(len(CONFOUNDERS))]
        mix += _confounder(rng, kind, noise_spectrum, recipe)
        truth["confounder"] = kind
        if not label:
            truth["kind"] = kind

    peak = np.max(np.abs(mix))
    level = np.exp(rng.uniform(*np.log(recipe.peak_level)))  # log-uniform: recordings differ in gain
    return (mix * (level / peak)).astype(np.float32), truth


# ----------------------------------------------------------------------------- signal components


def _n(seconds: float) -> int:
    return max(2, int(round(seconds * SAMPLE_RATE)))


def _ocean_noise(rng, recipe: Recipe):
    """Unit-RMS coloured noise [4000] and its one-sided power spectrum [2001] (for SNR)."""
    n = N_SAMPLES
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    exponent = rng.uniform(*recipe.noise_exponent)
    corner = rng.uniform(*recipe.noise_highpass_hz)
    # 1/f^a power above a 2nd-order high-pass corner: hydrophones and flow noise
    # leave little energy near DC, which also keeps the spectrum finite at f=0.
    shape = np.maximum(freqs, 1.0) ** (-exponent / 2) * (freqs**2 / (freqs**2 + corner**2))
    spectrum = (rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs))) * shape
    noise = np.fft.irfft(spectrum, n)
    if rng.random() < recipe.noise_modulation_probability:
        # Slow level changes (passing weather, distant ships): a smooth random envelope.
        knots = rng.standard_normal(6) * rng.uniform(0.2, 0.6)
        noise *= np.exp(np.interp(np.linspace(0, 5, n), np.arange(6), knots))
    scale = 1.0 / (np.std(noise) + 1e-12)
    noise *= scale
    power = np.abs(np.fft.rfft(noise)) ** 2 / n**2
    power[1:] *= 2  # one-sided: mean(noise**2) == power.sum()
    return noise, power


def _band_power(power: np.ndarray, low: float, high: float) -> float:
    """Mean-square amplitude of the noise between ``low`` and ``high`` Hz."""
    freqs = np.fft.rfftfreq(N_SAMPLES, 1.0 / SAMPLE_RATE)
    return float(power[(freqs >= low) & (freqs <= high)].sum()) + 1e-12


def _tone(rng, contour: np.ndarray, *, harmonic_gain: float = 0.0, envelope: bool = True) -> np.ndarray:
    """A sinusoid following ``contour`` (Hz per sample) with a smooth envelope, [len(contour)]."""
    m = len(contour)
    # Small smooth frequency jitter: real calls are not perfect curves.
    jitter = np.interp(np.linspace(0, 4, m), np.arange(5), rng.standard_normal(5)) * rng.uniform(0.0, 3.0)
    phase = 2 * np.pi * np.cumsum(contour + jitter) / SAMPLE_RATE + rng.uniform(0, 2 * np.pi)
    signal = np.sin(phase)
    if harmonic_gain:
        signal += harmonic_gain * np.sin(2 * phase + rng.uniform(0, 2 * np.pi))
    if envelope:
        u = np.linspace(0.0, 1.0, m)
        shape = np.sin(np.pi * u) ** rng.uniform(0.5, 1.5)  # smooth onset and decay
        tilt = 1.0 + rng.uniform(-0.5, 0.5) * (u - 0.5)  # calls often swell or fade
        signal *= shape * tilt
    return signal


def _place(segment: np.ndarray, onset: float, gain: float) -> np.ndarray:
    """``gain * segment`` starting at ``onset`` seconds in a zero clip [4000] (cropped at the end)."""
    out = np.zeros(N_SAMPLES)
    start = int(round(onset * SAMPLE_RATE))
    stop = min(N_SAMPLES, start + len(segment))
    out[start:stop] = gain * segment[: stop - start]
    return out


def _gain(segment: np.ndarray, snr_db: float, noise_power: np.ndarray, low: float, high: float) -> float:
    """Amplitude that puts ``segment`` at ``snr_db`` over the noise in [low, high] Hz."""
    signal_power = float(np.mean(segment**2)) + 1e-12
    return float(np.sqrt(_band_power(noise_power, low, high) * 10 ** (snr_db / 10) / signal_power))


def _ship_tonals(rng, t: np.ndarray, noise_power: np.ndarray, recipe: Recipe) -> np.ndarray:
    """One or two steady tones with slow frequency wobble and maybe harmonics, [4000]."""
    out = np.zeros(N_SAMPLES)
    for _ in range(rng.integers(1, 3)):
        f0 = rng.uniform(*recipe.tonal_hz)
        wobble = f0 * rng.uniform(0.001, 0.01) * np.sin(2 * np.pi * rng.uniform(0.1, 1.5) * t + rng.uniform(0, 6.3))
        contour = f0 + wobble
        n_harmonics = rng.integers(1, 4) if rng.random() < 0.5 else 1
        tone = np.zeros(N_SAMPLES)
        phase = 2 * np.pi * np.cumsum(contour) / SAMPLE_RATE
        for k in range(1, n_harmonics + 1):
            if k * f0 >= 0.95 * SAMPLE_RATE / 2:
                break
            tone += k ** -rng.uniform(0.5, 1.5) * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
        out += _place(tone, 0.0, _gain(tone, rng.uniform(*recipe.tonal_snr_db), noise_power, f0 - 20, f0 + 20))
    return out


def _clicks(rng, recipe: Recipe):
    """Impulsive clicks (snapping shrimp, hull knocks): short damped oscillations, [4000]."""
    out = np.zeros(N_SAMPLES)
    count = int(rng.integers(recipe.clicks_per_clip[0], recipe.clicks_per_clip[1] + 1))
    for _ in range(count):
        decay = rng.uniform(0.001, 0.005)  # s
        length = _n(6 * decay)
        tt = np.arange(length) / SAMPLE_RATE
        click = np.exp(-tt / decay) * np.sin(2 * np.pi * rng.uniform(150, 950) * tt + rng.uniform(0, 6.3))
        amplitude = 10 ** (rng.uniform(*recipe.click_level_db) / 20) * rng.choice((-1, 1))
        out += _place(click / np.max(np.abs(click)), rng.uniform(0, DURATION), amplitude)
    return out, count


def _confounder(rng, kind: str, noise_power: np.ndarray, recipe: Recipe) -> np.ndarray:
    """A sound that is not an upcall but shares some of its cues, [4000]."""
    if kind == "downsweep":
        duration = rng.uniform(0.5, 1.5)
        f_a, f_b = rng.uniform(150, 250), rng.uniform(50, 100)
    elif kind == "flat_tone":
        duration = rng.uniform(0.3, 1.5)
        f_a = rng.uniform(80, 250)
        f_b = f_a * (1 + rng.uniform(-0.02, 0.02))
    elif kind == "short_upsweep":
        duration = rng.uniform(0.1, 0.4)
        f_a, f_b = rng.uniform(50, 100), rng.uniform(150, 250)
    elif kind == "other_band_sweep":
        duration = rng.uniform(0.3, 1.5)
        if rng.random() < 0.7:  # above the call band (e.g. humpback-like or vessel sweeps)
            f_a, f_b = rng.uniform(300, 500), rng.uniform(550, 900)
        else:  # below it
            f_a, f_b = rng.uniform(15, 25), rng.uniform(35, 50)
        if rng.random() < 0.5:
            f_a, f_b = f_b, f_a
    else:
        raise ValueError(f"confounder must be one of {CONFOUNDERS}. Received: kind={kind!r}")
    contour = f_a + (f_b - f_a) * np.linspace(0.0, 1.0, _n(duration)) ** rng.uniform(0.7, 1.6)
    tone = _tone(rng, contour, harmonic_gain=10 ** (rng.uniform(-14, -4) / 20) if rng.random() < 0.4 else 0.0)
    low, high = min(f_a, f_b) - 15, max(f_a, f_b) + 15
    onset = rng.uniform(0.0, DURATION - duration)
    snr = rng.uniform(*recipe.confounder_snr_db)
    return _place(tone, onset, _gain(tone, snr, noise_power, low, high))


# ----------------------------------------------------------------------------- dataset on disk


def _check_params(*, n_train, n_test, positive_fraction, seed) -> dict:
    for name, value, low in (("n_train", n_train, 2), ("n_test", n_test, 0), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}. Received: {name}={value!r}")
    if not (isinstance(positive_fraction, (int, float)) and 0.0 < positive_fraction < 1.0):
        raise ValueError(f"positive_fraction must be in (0, 1). Received: positive_fraction={positive_fraction!r}")
    return {
        "n_train": int(n_train),
        "n_test": int(n_test),
        "positive_fraction": float(positive_fraction),
        "seed": int(seed),
    }


def _spec(params: dict) -> dict:
    """The content of synthetic.json: parameters, generator version and recipe.

    No timestamps or library versions: the same parameters must give the same bytes.
    """
    return {
        "format_version": FORMAT_VERSION,
        "generator": "pipeline.data.synthetic",
        "params": params,
        "sample_rate": SAMPLE_RATE,
        "n_samples": N_SAMPLES,
        "recipe": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(RECIPE).items()},
    }


# Everything _write_dataset writes at the top of the dataset folder, and its clip names.
LAYOUT = GeneratedLayout(generator=__name__,
                         names=frozenset({"train.csv", "test_labels.csv", "truth.csv", "README.txt", SPEC_FILE,
                                          "train", "test"}),
                         clip_name=re.compile(r"(train|test)[0-9]+\.aiff"))


def root_problem(root: str) -> Optional[str]:
    """Why the generator may not write (or replace) its dataset at ``root``; None when it may.

    Only a missing or empty folder, or a dataset this generator wrote itself,
    may be replaced - never a folder of the user's (see
    :class:`pipeline.data.generated_store.GeneratedLayout`).
    """
    return LAYOUT.root_problem(root)


def _is_current(root: str, spec: dict) -> bool:
    """Same spec on disk and the expected files present (cheap: no audio is read)."""
    on_disk = read_spec(root)
    if on_disk is None:
        return False
    if on_disk != spec:
        logger.info("%s: synthetic parameters changed; regenerating", root)
        return False
    params = spec["params"]
    complete = (
        os.path.isfile(os.path.join(root, "train.csv"))
        and os.path.isfile(os.path.join(root, "test_labels.csv"))
        and count_files(os.path.join(root, "train"), ".aiff") == params["n_train"]
        and count_files(os.path.join(root, "test"), ".aiff") == params["n_test"]
    )
    if not complete:
        logger.warning("%s: synthetic dataset is incomplete (files were removed?); regenerating", root)
    return complete


def _labels(n: int, positive_fraction: float, seed: int, split: str) -> np.ndarray:
    """Exactly round(n * fraction) positives (at least 1 and at most n-1 in train), in random order."""
    n_pos = int(round(n * positive_fraction))
    if split == "train":
        n_pos = min(max(n_pos, 1), n - 1)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_LABEL_STREAM, _SPLIT_CODES[split])))
    labels = np.zeros(n, dtype=np.int64)
    labels[:n_pos] = 1
    return rng.permutation(labels)


def _clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SPLIT_CODES[split], index)))


def _write_clip(path: str, samples: np.ndarray) -> None:
    write_pcm16(path, samples, SAMPLE_RATE, "AIFF")


_TRUTH_FIELDS = [
    "clip", "split", "label", "kind", "snr_db", "call_onset_s", "call_duration_s",
    "call_start_hz", "call_end_hz", "harmonic", "confounder", "tonal", "clicks",
]


def _write_dataset(folder: str, *, params: dict, spec: dict) -> None:
    ownership.mark(folder)  # the dataset may be replaced later (new parameters); a user's folder never is
    truth_rows = []
    split_rows = {}
    for split, n in (("train", params["n_train"]), ("test", params["n_test"])):
        os.makedirs(os.path.join(folder, split))
        labels = _labels(n, params["positive_fraction"], params["seed"], split)
        rows = []
        for i, label in enumerate(labels):
            clip = f"{split}{i + 1}.aiff"
            samples, truth = synthesize_clip(rng=_clip_rng(params["seed"], split, i), label=int(label))
            _write_clip(os.path.join(folder, split, clip), samples)
            rows.append([clip, int(label)])
            truth_rows.append([clip, split, int(label)] + [_fmt(truth[k]) for k in _TRUTH_FIELDS[3:]])
        split_rows[split] = rows
    write_csv(os.path.join(folder, "train.csv"), ["clip_name", "label"], split_rows["train"])
    write_csv(os.path.join(folder, "test_labels.csv"), ["clip", "label"], split_rows["test"])
    write_csv(os.path.join(folder, "truth.csv"), _TRUTH_FIELDS, truth_rows)
    with open(os.path.join(folder, "README.txt"), "w", encoding="utf-8") as fh:
        fh.write(_README.format(**params, version=FORMAT_VERSION))
    # synthetic.json last: its presence marks a complete dataset.
    with open(os.path.join(folder, SPEC_FILE), "w", encoding="utf-8") as fh:
        json.dump(spec, fh, indent=2, sort_keys=True)
        fh.write("\n")


def _fmt(value):
    if isinstance(value, float) and np.isnan(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    return value


_README = """\
Synthetic North Atlantic right-whale data (generator format version {version})
================================================================================

Written by pipeline.data.synthetic.ensure_synthetic_whale with
n_train={n_train}, n_test={n_test}, positive_fraction={positive_fraction}, seed={seed}.
Same parameters give byte-identical files; synthetic.json records them and a
changed parameter regenerates this folder.

Layout (the Kaggle right-whale layout, read by the kaggle_whale source):
  train.csv            clip_name,label   (1 = the clip holds an upcall)
  train/train<i>.aiff  16-bit PCM AIFF, 2000 Hz, 2 s (4000 samples)
  test/test<i>.aiff    same format, unlabelled for the pipeline

ANSWER KEYS - never read by the pipeline's training, prediction or blending:
  test_labels.csv      clip,label for every test clip
  truth.csv            what the generator put in every clip (kind, in-band SNR
                       of the call in dB, call onset/duration/frequencies,
                       confounder, ship tonal, clicks)
They exist only to score a finished run by hand or in offline analysis.

Positives: one upcall, a 0.5-1.5 s J-shaped upsweep from 50-100 Hz to
150-250 Hz, often with a weaker 2nd harmonic, at an in-band SNR spread
uniformly in dB so that the faintest calls are nearly invisible.
Background in every clip: coloured (1/f^a) ocean noise; some clips add ship
tonals and clicks. Negatives often hold a confounder: a downsweep, a flat
tone, a short upsweep or a sweep in another band.
"""
