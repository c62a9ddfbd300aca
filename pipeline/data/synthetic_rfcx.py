"""A synthetic Rainforest Connection dataset, written in the kaggle_rfcx layout on first use.

Each recording (``duration`` s at ``sample_rate`` Hz, 16-bit FLAC) is coloured
background noise with occasional clicks plus animal calls:

* 24 species, each calling in its own frequency band (log-spaced between 3 %
  and 45 % of the sample rate, so the layout scales with the rate) with its own
  call shape: upsweep, downsweep, trill (a pulsed tone) or a sinusoidal
  frequency-modulated whistle, and its own typical call length;
* 1-3 species per recording, each calling 1-3 times at random onsets and
  random levels (the faintest calls are hard to see); species ``k`` and
  ``k + 12`` co-occur often (as real species share habitats);
* tp rows: each planted call is annotated with probability 0.7 (at least one
  call per present species), its box the call's time and frequency extent; the
  unannotated calls stay in the audio, as in the real data;
* fp rows: in most recordings one or two absent species get an fp box over a
  *confuser*, a call in that species' band with another shape - what a
  template detector would have fired on; ``confusers`` > 0 plants that many
  more in other absent species' bands (the real data has about six fp boxes per
  tp box; this generator's default about one per four). Those are drawn after
  everything else, so ``confusers: 0`` writes the same files as before.

Files::

    ROOT/train_tp.csv, ROOT/train_fp.csv   recording_id,species_id,songtype_id,t_min,f_min,t_max,f_max
    ROOT/train/<recording_id>.flac
    ROOT/test/<recording_id>.flac
    ROOT/test_labels.csv    recording_id,s0..s23     -- answer key, never read by the pipeline
    ROOT/test_boxes.csv     every planted test call  -- answer key, never read by the pipeline
    ROOT/synthetic.json     generator parameters and format version (written last)

Every recording draws from its own generator seeded by
``SeedSequence(seed, spawn_key=(split, index))``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Optional

import numpy as np

from pipeline import ownership
from pipeline.data.base import Dataset
from pipeline.data.rfcx import BOX_COLUMNS, N_SPECIES, read_kaggle_rfcx
from pipeline.data.generated_store import (SPEC_FILE, GeneratedLayout, check_free_space, count_files, read_spec,
                                           write_csv, write_into_place, write_pcm16)
from pipeline.errors import DataError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SHAPES = ("upsweep", "downsweep", "trill", "fm")
_SPLIT_CODES = {"train": 0, "test": 1}
ANNOTATE_PROBABILITY = 0.7
SNR_DB = (-22.0, -4.0)  # call power relative to the broadband noise power; in-band SNR is far higher


def species_bands(sample_rate: int) -> np.ndarray:
    """Frequency band [low, high] Hz of each species: [24, 2], log-spaced from 3 % to 45 % of ``sample_rate``."""
    edges = np.geomspace(0.03 * sample_rate, 0.45 * sample_rate, N_SPECIES + 1)
    return np.stack([edges[:-1], edges[1:]], axis=1)


def species_shape(k: int) -> str:
    return SHAPES[k % len(SHAPES)]


def species_call_seconds(k: int) -> float:
    """Typical call length of species ``k``, s (0.3-1.2 s)."""
    return 0.3 + 0.9 * ((k * 7) % N_SPECIES) / (N_SPECIES - 1)


def ensure_synthetic_rfcx(root: str, *, n_train: int = 200, n_test: int = 50, duration: float = 12.0,
                          sample_rate: int = 16000, seed: int = 0, confusers: int = 0) -> None:
    """Write the dataset to ``root`` unless ``root/synthetic.json`` records the same parameters.

    Written to a hidden temporary sibling and renamed into place, so an
    interrupted run never leaves a half-written dataset that looks complete.

    Raises
    ------
    ValueError
        For parameters out of range (n_train >= 4, n_test >= 0, duration >= 2 s, sample_rate >= 8000 Hz).
    DataError
        When ``root`` exists and holds something other than a synthetic dataset.
    """
    if n_train < 4 or n_test < 0 or duration < 2.0 or sample_rate < 8000 or seed < 0 or confusers < 0:
        raise ValueError("synthetic_rfcx needs n_train >= 4, n_test >= 0, duration >= 2, sample_rate >= 8000, "
                         f"seed >= 0, confusers >= 0. Received: n_train={n_train}, n_test={n_test}, "
                         f"duration={duration}, sample_rate={sample_rate}, seed={seed}, confusers={confusers}")
    spec = _spec(n_train=n_train, n_test=n_test, duration=duration, sample_rate=sample_rate, seed=seed,
                 confusers=confusers)
    params = spec["params"]
    root = os.path.abspath(root)
    if _is_current(root, spec):
        return
    problem = root_problem(root)
    if problem:
        raise DataError(problem)
    # FLAC of coloured noise compresses little: count 16-bit PCM per recording.
    check_free_space(root, (n_train + n_test) * int(2 * duration * sample_rate + 4096),
                     keys="data.n_train, data.n_test, data.duration, data.sample_rate")
    started = time.perf_counter()
    write_into_place(root, lambda tmp: _write_dataset(tmp, params, spec), is_current=lambda: _is_current(root, spec),
                     layout=LAYOUT)
    logger.info("%s: wrote %d train + %d test synthetic rfcx recordings (%.0f s at %d Hz) in %.1f s", root,
                n_train, n_test, duration, sample_rate, time.perf_counter() - started)


def _spec(*, n_train, n_test, duration, sample_rate, seed, confusers=0) -> dict:
    """The content of synthetic.json for these parameters (``confusers`` only when set: a dataset written
    before it existed is still current)."""
    params = {"n_train": int(n_train), "n_test": int(n_test), "duration": float(duration),
              "sample_rate": int(sample_rate), "seed": int(seed)}
    if confusers:
        params["confusers"] = int(confusers)
    return {"format_version": FORMAT_VERSION, "generator": "pipeline.data.synthetic_rfcx", "params": params}


def is_generated(root: str, *, n_train: int = 200, n_test: int = 50, duration: float = 12.0,
                 sample_rate: int = 16000, seed: int = 0, confusers: int = 0) -> bool:
    """Whether ``root`` holds this dataset already (:func:`ensure_synthetic_rfcx` would write nothing); reads only."""
    spec = _spec(n_train=n_train, n_test=n_test, duration=duration, sample_rate=sample_rate, seed=seed,
                 confusers=confusers)
    return _is_current(os.path.abspath(root), spec)


def read_synthetic_rfcx(root: str, *, unknown: str = "mask", **params) -> Dataset:
    """:func:`ensure_synthetic_rfcx`, then :func:`pipeline.data.rfcx.read_kaggle_rfcx` on ``root``."""
    ensure_synthetic_rfcx(root, **params)
    return read_kaggle_rfcx(root, unknown=unknown)


def synthesize_recording(rng: np.random.Generator, *, duration: float, sample_rate: int,
                         confusers: int = 0) -> tuple:
    """One recording and what was planted in it.

    Returns
    -------
    (np.ndarray [samples] float32 in [-1, 1], list of dict)
        Each dict: ``species``, ``t_min``, ``t_max``, ``f_min``, ``f_max`` (s, Hz)
        and ``kind``: ``tp`` (annotated call), ``call`` (unannotated call) or
        ``fp`` (a confuser in an absent species' band, annotated as fp).
    """
    n = int(round(duration * sample_rate))
    noise = _background(rng, n, sample_rate)
    noise_rms = float(np.sqrt(np.mean(noise ** 2)))
    x = noise
    bands = species_bands(sample_rate)
    present = set(rng.choice(N_SPECIES, size=int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2])), replace=False).tolist())
    for k in list(present):
        partner = (k + 12) % N_SPECIES
        if rng.random() < 0.6:
            present.add(partner)
    events = []
    for k in sorted(present):
        n_calls = int(rng.integers(1, 4))
        annotated = rng.random(n_calls) < ANNOTATE_PROBABILITY
        annotated[rng.integers(n_calls)] = True
        for c in range(n_calls):
            box = _plant(rng, x, k, species_shape(k), bands[k], duration, sample_rate, noise_rms)
            events.append({"species": k, **box, "kind": "tp" if annotated[c] else "call"})
    absent = [k for k in range(N_SPECIES) if k not in present]
    if rng.random() < 0.75:
        for k in rng.choice(absent, size=int(rng.integers(1, 3)), replace=False):
            _confuser(rng, x, int(k), events, duration, sample_rate, noise_rms, bands)
    if confusers:
        taken = {e["species"] for e in events}
        free = [k for k in range(N_SPECIES) if k not in taken]
        for k in rng.choice(free, size=min(confusers, len(free)), replace=False):
            _confuser(rng, x, int(k), events, duration, sample_rate, noise_rms, bands)
    peak = np.max(np.abs(x))
    x = x * (0.8 / peak) if peak > 0 else x
    return x.astype(np.float32), events


def _confuser(rng, x, k: int, events: list, duration, sample_rate, noise_rms, bands) -> None:
    """Plant a call of another shape in absent species ``k``'s band into ``x``; add its fp event."""
    other = SHAPES[(SHAPES.index(species_shape(k)) + int(rng.integers(1, len(SHAPES)))) % len(SHAPES)]
    box = _plant(rng, x, k, other, bands[k], duration, sample_rate, noise_rms)
    events.append({"species": k, **box, "kind": "fp"})


def _background(rng, n: int, sample_rate: int) -> np.ndarray:
    """Coloured noise (power ~ 1/f^a, a in [0.5, 1.5]) plus a few clicks; unit-free."""
    spectrum = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    f = np.fft.rfftfreq(n, 1.0 / sample_rate)
    f[0] = f[1]
    spectrum *= f ** (-rng.uniform(0.5, 1.5) / 2.0)
    x = np.fft.irfft(spectrum, n)
    x /= np.std(x) + 1e-12
    for _ in range(int(rng.poisson(3))):
        at = int(rng.integers(0, n - 64))
        x[at: at + 64] += rng.uniform(2, 6) * rng.standard_normal(64) * np.hanning(64)
    return x


def _plant(rng, x, k: int, shape: str, band, duration: float, sample_rate: int, noise_rms: float) -> dict:
    """Add one call of ``shape`` in ``band`` to ``x`` in place; return its box."""
    low, high = float(band[0]), float(band[1])
    length = min(species_call_seconds(k) * rng.uniform(0.8, 1.25), duration / 2)
    onset = rng.uniform(0.0, duration - length)
    m = int(length * sample_rate)
    t = np.arange(m) / sample_rate
    margin = 0.1 * (high - low)
    lo, hi = low + margin, high - margin
    u = t / length
    if shape == "upsweep":
        freq = lo + (hi - lo) * u
    elif shape == "downsweep":
        freq = hi - (hi - lo) * u
    elif shape == "fm":
        freq = (lo + hi) / 2 + (hi - lo) / 2 * np.sin(2 * np.pi * rng.uniform(3, 6) * t)
    else:  # trill: a pulsed tone in the middle of the band
        freq = np.full(m, (lo + hi) / 2)
    phase = 2 * np.pi * np.cumsum(freq) / sample_rate
    envelope = np.sin(np.pi * u) ** 0.5
    if shape == "trill":
        envelope = envelope * (0.5 + 0.5 * np.sign(np.sin(2 * np.pi * rng.uniform(8, 14) * t)))
    gain = noise_rms * 10 ** (rng.uniform(*SNR_DB) / 20) * np.sqrt(2)
    start = int(onset * sample_rate)
    x[start: start + m] += gain * envelope * np.sin(phase)
    return {"t_min": round(onset, 4), "t_max": round(onset + length, 4),
            "f_min": round(float(freq.min()), 1), "f_max": round(float(freq.max()), 1)}


# Everything _write_dataset writes at the top of the dataset folder, and its recording names.
LAYOUT = GeneratedLayout(generator=__name__,
                         names=frozenset({"train_tp.csv", "train_fp.csv", "test_labels.csv", "test_boxes.csv",
                                          "README.txt", SPEC_FILE, "train", "test"}),
                         clip_name=re.compile(r"(train|test)[0-9]+\.flac"))


def root_problem(root: str) -> Optional[str]:
    """Why the generator may not write (or replace) its dataset at ``root``; None when it may (see
    :class:`pipeline.data.generated_store.GeneratedLayout`: never a folder of the user's)."""
    return LAYOUT.root_problem(root)


# Recordings per process below which the dataset is written in this process (a pool's start-up costs more).
_PARALLEL_FROM = 32


def _write_recording(folder: str, split: str, i: int, params: dict) -> list:
    """Synthesise recording ``i`` of ``split`` from its own seed, write its FLAC file; return its events."""
    rid = f"{split}{i:05d}"
    rng = np.random.default_rng(np.random.SeedSequence(params["seed"], spawn_key=(_SPLIT_CODES[split], i)))
    samples, events = synthesize_recording(rng, duration=params["duration"], sample_rate=params["sample_rate"],
                                           confusers=params.get("confusers", 0))
    write_pcm16(os.path.join(folder, split, rid + ".flac"), samples, params["sample_rate"], "FLAC")
    return events


def _recordings_events(folder: str, params: dict):
    """``(split, recording id, events)`` of every recording in order, written by a process per core (each
    recording draws from its own seed, so the files do not depend on the number of processes)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from pipeline.machine import machine_cores

    tasks = [(split, i) for split in ("train", "test") for i in range(params[f"n_{split}"])]
    workers = min(machine_cores(), len(tasks) // _PARALLEL_FROM)
    if workers < 2:
        results = (_write_recording(folder, split, i, params) for split, i in tasks)
        yield from ((split, f"{split}{i:05d}", ev) for (split, i), ev in zip(tasks, results))
        return
    # spawn: the caller may hold TensorFlow's threads, which a forked child must not inherit.
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
    try:
        n = len(tasks)
        splits, indices = zip(*tasks)
        results = pool.map(_write_recording, [folder] * n, splits, indices, [params] * n, chunksize=8)
        yield from ((split, f"{split}{i:05d}", ev) for (split, i), ev in zip(tasks, results))
    finally:  # on an error (or Ctrl-C) the recordings not yet written are not started
        pool.shutdown(wait=True, cancel_futures=True)


def _write_dataset(folder: str, params: dict, spec: dict) -> None:
    ownership.mark(folder)  # the dataset may be replaced later (new parameters); a user's folder never is
    tp_rows, fp_rows, truth_rows, label_rows = [], [], [], []
    for split in ("train", "test"):
        os.makedirs(os.path.join(folder, split))
    for split, rid, events in _recordings_events(folder, params):
        for e in events:
            row = [rid, e["species"], 1, e["t_min"], e["f_min"], e["t_max"], e["f_max"]]
            if split == "train":
                if e["kind"] == "tp":
                    tp_rows.append(row)
                elif e["kind"] == "fp":
                    fp_rows.append(row)
            else:
                truth_rows.append(row + [e["kind"]])
        if split == "test":
            present = {e["species"] for e in events if e["kind"] != "fp"}
            label_rows.append([rid] + [int(k in present) for k in range(N_SPECIES)])
    write_csv(os.path.join(folder, "train_tp.csv"), list(BOX_COLUMNS), tp_rows)
    write_csv(os.path.join(folder, "train_fp.csv"), list(BOX_COLUMNS), fp_rows)
    write_csv(os.path.join(folder, "test_labels.csv"), ["recording_id"] + [f"s{k}" for k in range(N_SPECIES)],
               label_rows)
    write_csv(os.path.join(folder, "test_boxes.csv"), list(BOX_COLUMNS) + ["kind"], truth_rows)
    with open(os.path.join(folder, "README.txt"), "w", encoding="utf-8") as fh:
        fh.write(f"Synthetic rfcx data written by pipeline.data.synthetic_rfcx with {params}.\n"
                 "test_labels.csv and test_boxes.csv are ANSWER KEYS, never read by the pipeline.\n")
    with open(os.path.join(folder, SPEC_FILE), "w", encoding="utf-8") as fh:  # last: marks a complete dataset
        json.dump(spec, fh, indent=2, sort_keys=True)


def _is_current(root: str, spec: dict) -> bool:
    """``root`` holds the finished dataset ``spec`` describes."""
    counts = {split: spec["params"][f"n_{split}"] for split in ("train", "test")}
    return read_spec(root) == spec and all(count_files(os.path.join(root, split), ".flac") == n
                                           for split, n in counts.items())
