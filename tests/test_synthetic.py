"""pipeline.data.synthetic and its store (pipeline.data.generated_store): layout, determinism, regeneration,
safety and learnability; the rfcx generator's bytes are pinned here too."""

import hashlib
import json
import os

import numpy as np
import pandas as pd
import pytest
import scipy.signal
import scipy.stats
import soundfile as sf
from sklearn.metrics import roc_auc_score

from pipeline.data import synthetic
from pipeline.data.audio import load_clip
from pipeline.data.generated_store import GENERATED_MTIME_NS
from pipeline.data.synthetic import Recipe, ensure_synthetic_whale, read_synthetic_whale, synthesize_clip
from pipeline.data.synthetic_rfcx import ensure_synthetic_rfcx
from pipeline.errors import DataError

SMALL = {"n_train": 20, "n_test": 8, "positive_fraction": 0.3, "seed": 3}


def digest(root):
    """{relative path: sha256} of every file under ``root``."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def mtimes(root):
    return {p: os.stat(os.path.join(root, p)).st_mtime_ns for p in digest(root)}


@pytest.fixture
def small(tmp_path):
    root = str(tmp_path / "whale")
    ensure_synthetic_whale(root, **SMALL)
    return root


# ----------------------------------------------------------------------------- layout


def test_layout(small):
    files = set(digest(small))
    assert {"train.csv", "test_labels.csv", "truth.csv", "synthetic.json", "README.txt"} <= files
    assert {f"train/train{i}.aiff" for i in range(1, 21)} | {f"test/test{i}.aiff" for i in range(1, 9)} <= files
    assert len(files) == 5 + 20 + 8 + 1  # + the ownership marker: the generator may replace its own dataset only
    assert ".pipeline-owned" in files
    train = pd.read_csv(os.path.join(small, "train.csv"))
    assert list(train.columns) == ["clip_name", "label"]
    answers = pd.read_csv(os.path.join(small, "test_labels.csv"))
    assert list(answers.columns) == ["clip", "label"]
    assert sorted(answers["clip"]) == sorted(f"test{i}.aiff" for i in range(1, 9))
    readme = open(os.path.join(small, "README.txt")).read()
    assert "never read by the pipeline" in readme and "test_labels.csv" in readme
    spec = json.load(open(os.path.join(small, "synthetic.json")))
    assert spec["format_version"] == synthetic.FORMAT_VERSION
    assert spec["params"] == SMALL
    # No hidden temporary folders are left next to the dataset.
    assert os.listdir(os.path.dirname(small)) == ["whale"]


def test_clips_are_16_bit_2khz_2s_aiff(small):
    for path in (os.path.join(small, "train", "train1.aiff"), os.path.join(small, "test", "test8.aiff")):
        info = sf.info(path)
        assert (info.format, info.subtype, info.samplerate) == ("AIFF", "PCM_16", 2000)
        assert (info.channels, info.frames) == (1, 4000)
        assert open(path, "rb").read(4) == b"FORM"  # AIFF: big-endian PCM
        decoded = load_clip(path, sample_rate=2000, duration=2.0)
        assert decoded.ok and decoded.notes == ()
        assert 0.04 < np.abs(decoded.samples).max() < 0.91


def test_ids_and_manifest(small):
    ds = read_synthetic_whale(small, **SMALL)
    assert (ds.task, ds.targets, ds.submission) == ("binary", ("label",), "whale")
    assert list(ds.train["id"]) == [f"train{i}.aiff" for i in range(1, 21)]
    assert list(ds.test["id"]) == sorted(f"test{i}.aiff" for i in range(1, 9))
    assert ds.test["label"].isna().all()  # the answer key never reaches the manifest
    assert all(os.path.isfile(p) for p in ds.manifest["path"])


@pytest.mark.parametrize("n,fraction", [(20, 0.3), (37, 0.5), (10, 0.05)])
def test_positive_fraction(tmp_path, n, fraction):
    root = str(tmp_path / "w")
    ensure_synthetic_whale(root, n_train=n, n_test=n, positive_fraction=fraction, seed=0)
    train = pd.read_csv(os.path.join(root, "train.csv"))
    test = pd.read_csv(os.path.join(root, "test_labels.csv"))
    expected = max(1, round(n * fraction))
    assert train["label"].sum() == expected
    assert test["label"].sum() == round(n * fraction)
    assert set(train["label"]) == {0, 1}


# ----------------------------------------------------------------------------- determinism and caching


def test_same_parameters_give_byte_identical_files(tmp_path, small):
    other = str(tmp_path / "again")
    ensure_synthetic_whale(other, **SMALL)
    assert digest(other) == digest(small)


def content_digest(root):
    """One sha256 over every file of a dataset: audio as its decoded 16-bit samples, other files as bytes.

    Decoded samples, not file bytes: AIFF/FLAC headers (the FLAC encoder's
    vendor string) depend on the libsndfile build, the samples only on the generator.
    """
    total = hashlib.sha256()
    for relative in sorted(digest(root)):
        path = os.path.join(root, relative)
        total.update(relative.encode())
        if relative.endswith((".aiff", ".flac")):
            total.update(sf.read(path, dtype="int16")[0].tobytes())
        else:
            total.update(open(path, "rb").read())
    return total.hexdigest()


# Generator output pinned: a change to what either generator writes for the same parameters must also bump
# its FORMAT_VERSION (so existing datasets are regenerated) and then update these digests.
PINNED = {
    "whale": "e869d5457210c30a64627370014aab36a369150ac3157e73692d6a3ad7e06d7a",
    "rfcx": "f6e783836a96e1aeba53cd8196e6ea6a2513feaa30ad90b5900968c642e5367c",
}


@pytest.mark.parametrize("source", ["whale", "rfcx"])
def test_generated_datasets_are_pinned_to_their_bytes_and_fixed_mtime(tmp_path, source):
    root = str(tmp_path / source)
    if source == "whale":
        ensure_synthetic_whale(root, n_train=6, n_test=2, positive_fraction=0.5, seed=3)
    else:
        ensure_synthetic_rfcx(root, n_train=4, n_test=1, duration=2.0, sample_rate=8000, seed=3)
    assert content_digest(root) == PINNED[source]
    # The data's identity (file sizes and mtimes) is a function of the parameters too.
    assert set(mtimes(root).values()) == {GENERATED_MTIME_NS}


def test_rfcx_recordings_written_by_a_process_pool_are_the_same_bytes(tmp_path, monkeypatch):
    """At scale the rfcx generator writes recordings in a process per core; the files are those of the pinned
    single-process run (each recording draws from its own seed)."""
    import pipeline.data.synthetic_rfcx as generator
    from pipeline import machine

    monkeypatch.setattr(generator, "_PARALLEL_FROM", 1)  # 5 recordings: a pool of two processes
    monkeypatch.setattr(machine, "machine_cores", lambda: 2)
    spawned = []
    real_pool = generator._recordings_events

    def recorded(folder, params):
        from concurrent.futures import ProcessPoolExecutor

        init = ProcessPoolExecutor.__init__

        def counting(self, *args, **kwargs):
            spawned.append(args[0] if args else kwargs.get("max_workers"))
            init(self, *args, **kwargs)

        monkeypatch.setattr(ProcessPoolExecutor, "__init__", counting)
        yield from real_pool(folder, params)

    monkeypatch.setattr(generator, "_recordings_events", recorded)
    root = str(tmp_path / "rfcx")
    ensure_synthetic_rfcx(root, n_train=4, n_test=1, duration=2.0, sample_rate=8000, seed=3)
    assert spawned == [2]
    assert content_digest(root) == PINNED["rfcx"]


def test_rfcx_confusers_add_fp_boxes_in_absent_bands_and_nothing_else(tmp_path):
    """``confusers: N``: N more fp boxes per recording, each in a species' band that has no other event, the
    tp boxes and test labels as they were; ``confusers: 0`` is the pinned dataset (its spec unchanged)."""

    plain, dense = str(tmp_path / "plain"), str(tmp_path / "dense")
    ensure_synthetic_rfcx(plain, n_train=6, n_test=2, duration=2.0, sample_rate=8000, seed=3, confusers=0)
    ensure_synthetic_rfcx(dense, n_train=6, n_test=2, duration=2.0, sample_rate=8000, seed=3, confusers=3)
    assert "confusers" not in json.load(open(os.path.join(plain, "synthetic.json")))["params"]
    assert json.load(open(os.path.join(dense, "synthetic.json")))["params"]["confusers"] == 3
    for name in ("train_tp.csv", "test_labels.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(os.path.join(plain, name)), pd.read_csv(os.path.join(dense, name)))
    fp_plain, fp_dense = (pd.read_csv(os.path.join(r, "train_fp.csv")) for r in (plain, dense))
    per_plain, per_dense = (f.groupby("recording_id").size() for f in (fp_plain, fp_dense))
    assert (per_dense.sub(per_plain, fill_value=0) == 3).all() and len(per_dense) == 6
    tp = pd.read_csv(os.path.join(dense, "train_tp.csv"))
    for rid, group in fp_dense.groupby("recording_id"):  # a confuser's species is absent: no tp, no second fp
        assert group["species_id"].is_unique
        assert not set(group["species_id"]) & set(tp.loc[tp["recording_id"] == rid, "species_id"])
    with pytest.raises(ValueError, match="confusers >= 0"):
        ensure_synthetic_rfcx(str(tmp_path / "bad"), n_train=6, n_test=0, confusers=-1)

def test_clip_depends_only_on_its_own_seed():
    a, truth_a = synthesize_clip(rng=synthetic._clip_rng(5, "train", 7), label=1)
    b, truth_b = synthesize_clip(rng=synthetic._clip_rng(5, "train", 7), label=1)
    c, _ = synthesize_clip(rng=synthetic._clip_rng(5, "train", 8), label=1)
    np.testing.assert_array_equal(a, b)
    assert truth_a == truth_b
    assert not np.array_equal(a, c)
    assert a.shape == (4000,) and a.dtype == np.float32


def test_unchanged_parameters_rewrite_nothing(small):
    before = mtimes(small)
    ensure_synthetic_whale(small, **SMALL)
    assert mtimes(small) == before


@pytest.mark.parametrize("change", [{"seed": 4}, {"n_train": 25}, {"positive_fraction": 0.5}, {"n_test": 0}])
def test_changed_parameters_regenerate(small, change):
    before = digest(small)
    params = {**SMALL, **change}
    ensure_synthetic_whale(small, **params)
    after = digest(small)
    assert json.load(open(os.path.join(small, "synthetic.json")))["params"] == params
    assert after["train.csv"] != before["train.csv"] or after["test_labels.csv"] != before["test_labels.csv"]
    assert sum(p.startswith("train/") for p in after) == params["n_train"]
    assert sum(p.startswith("test/") for p in after) == params["n_test"]
    assert os.listdir(os.path.dirname(small)) == ["whale"]


def test_incomplete_dataset_is_regenerated(small):
    reference = digest(small)
    os.remove(os.path.join(small, "train", "train3.aiff"))
    ensure_synthetic_whale(small, **SMALL)
    assert digest(small) == reference


def test_interrupted_generation_leaves_no_dataset(tmp_path, monkeypatch):
    root = str(tmp_path / "whale")
    calls = []
    real_write = synthetic._write_clip

    def failing_write(path, samples):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt  # what a killed run looks like from inside
        real_write(path, samples)

    monkeypatch.setattr(synthetic, "_write_clip", failing_write)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_whale(root, **SMALL)
    assert os.listdir(tmp_path) == []  # neither the dataset nor a temporary folder
    monkeypatch.undo()
    ensure_synthetic_whale(root, **SMALL)
    assert len(digest(root)) == 5 + 20 + 8 + 1  # + the ownership marker


def test_interrupted_regeneration_keeps_the_old_dataset(small, monkeypatch):
    before = digest(small)
    monkeypatch.setattr(synthetic, "_write_clip", lambda path, samples: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        ensure_synthetic_whale(small, **{**SMALL, "seed": 99})
    assert digest(small) == before
    assert os.listdir(os.path.dirname(small)) == ["whale"]


def test_stale_work_folders_of_killed_runs_are_removed(tmp_path):
    stale, fresh = tmp_path / ".whale.tmp-killed", tmp_path / ".whale.tmp-running"
    for folder in (stale, fresh):
        (folder / "train").mkdir(parents=True)
    os.utime(stale, (0, 0))
    ensure_synthetic_whale(str(tmp_path / "whale"), **SMALL)
    assert sorted(os.listdir(tmp_path)) == [".whale.tmp-running", "whale"]


def test_refuses_to_overwrite_other_data(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "train.csv").write_text("clip_name,label\nreal.aiff,1\n")
    with pytest.raises(DataError, match="not a synthetic dataset"):
        ensure_synthetic_whale(str(root), **SMALL)
    assert (root / "train.csv").read_text() == "clip_name,label\nreal.aiff,1\n"


def test_empty_folder_is_filled(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    ensure_synthetic_whale(str(root), **SMALL)
    assert (root / "synthetic.json").is_file()


@pytest.mark.parametrize(
    "bad,match",
    [({"n_train": 1}, "n_train"), ({"n_test": -1}, "n_test"), ({"positive_fraction": 1.0}, "positive_fraction"),
     ({"seed": -2}, "seed"), ({"n_train": 10.5}, "n_train")],
)
def test_bad_parameters(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        ensure_synthetic_whale(str(tmp_path / "w"), **{**SMALL, **bad})


# ----------------------------------------------------------------------------- signal content

CLEAN = Recipe(
    snr_db=(25.0, 25.0),
    confounder_snr_db=(25.0, 25.0),
    tonal_probability=0.0,
    click_probability=0.0,
    confounder_probability_positive=0.0,
    confounder_probability_negative=1.0,
    noise_modulation_probability=0.0,
)


def peak_track(x, *, threshold_db=-12.0):
    """Frame times (s) and peak frequencies (Hz) of frames within ``threshold_db`` of the loudest."""
    f, t, z = scipy.signal.stft(x, fs=2000, nperseg=256, noverlap=224)
    power = np.abs(z) ** 2
    band = f <= 950
    peak = power[band].max(axis=0)
    loud = 10 * np.log10(peak / peak.max()) > threshold_db
    return t[loud], f[band][power[band].argmax(axis=0)][loud]


@pytest.mark.parametrize("index", range(6))
def test_clean_upcall_is_a_rising_sweep_in_the_right_band(index):
    x, truth = synthesize_clip(rng=np.random.default_rng(index), label=1, recipe=CLEAN)
    assert truth["kind"] == "upcall"
    assert 0.5 <= truth["call_duration_s"] <= 1.5
    assert 50 <= truth["call_start_hz"] <= 100 and 150 <= truth["call_end_hz"] <= 250
    times, freqs = peak_track(x)
    onset, end = truth["call_onset_s"], truth["call_onset_s"] + truth["call_duration_s"]
    assert times.min() >= onset - 0.1 and times.max() <= end + 0.1  # the call is where truth says
    assert scipy.stats.spearmanr(times, freqs)[0] > 0.9  # frequency rises with time
    assert 45 <= freqs.min() <= 110 and 120 <= freqs.max() <= 260
    assert freqs.max() - freqs.min() > 40


def test_negatives_with_clean_confounders_show_their_shape():
    seen = set()
    for seed in range(40):
        x, truth = synthesize_clip(rng=np.random.default_rng(seed), label=0, recipe=CLEAN)
        seen.add(truth["kind"])
        times, freqs = peak_track(x)
        if truth["kind"] == "downsweep":
            assert freqs[: len(freqs) // 4].mean() > freqs[-len(freqs) // 4:].mean() + 30
        elif truth["kind"] == "flat_tone":
            assert np.ptp(freqs) <= 2 * 2000 / 256 and 70 <= np.median(freqs) <= 260
        elif truth["kind"] == "short_upsweep":
            assert times.max() - times.min() <= 0.5
    assert seen == set(synthetic.CONFOUNDERS)


# ----------------------------------------------------------------------------- a real learning problem


def upsweep_score(x):
    """An untrained upcall detector, [n] for x [n, 4000] at 2 kHz.

    Per-band median-normalised log spectrogram, summed along a small bank of
    J-shaped contours (50-100 Hz -> 150-250 Hz, 0.6-1.2 s), max over onsets.
    """
    f, _, z = scipy.signal.stft(x, fs=2000, nperseg=256, noverlap=224, boundary=None, padded=False)
    s = np.log(np.abs(z) ** 2 + 1e-10)
    s -= np.median(s, axis=-1, keepdims=True)  # whiten: each band relative to its own noise floor
    n_frames = s.shape[-1]
    best = np.full(len(x), -np.inf)
    for seconds in (0.6, 0.9, 1.2):
        d = int(seconds * 2000 / 32)
        for f0 in (60, 80, 95):
            for f1 in (160, 200, 240):
                bins = np.round((f0 + (f1 - f0) * np.linspace(0, 1, d) ** 1.8) / f[1]).astype(int)
                total = sum(s[:, b, k : n_frames - d + 1 + k] for k, b in enumerate(bins))
                best = np.maximum(best, total.max(axis=1) / d)
    return best


@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("learn") / "whale")
    ensure_synthetic_whale(root, n_train=300, n_test=0, positive_fraction=0.5, seed=11)
    truth = pd.read_csv(os.path.join(root, "truth.csv"))
    paths = [os.path.join(root, "train", c) for c in truth["clip"]]
    x = np.stack([load_clip(p, sample_rate=2000, duration=2.0).samples for p in paths])
    return x, truth


def test_simple_detector_learns_but_not_perfectly(learnable):
    x, truth = learnable
    auc = roc_auc_score(truth["label"], upsweep_score(x))
    assert 0.6 < auc < 0.995, auc


def test_level_alone_does_not_give_the_answer(learnable):
    x, truth = learnable
    for level in (np.sqrt((x**2).mean(axis=1)), np.abs(x).max(axis=1)):
        assert 0.35 < roc_auc_score(truth["label"], level) < 0.65


def test_faint_calls_are_harder(learnable):
    x, truth = learnable
    score = upsweep_score(x)
    negatives = score[truth["label"] == 0]

    def auc_of(mask):
        pos = score[mask.to_numpy()]
        return roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(negatives))], np.r_[pos, negatives])

    loud = auc_of((truth["label"] == 1) & (truth["snr_db"] > 2))
    faint = auc_of((truth["label"] == 1) & (truth["snr_db"] < -6))
    assert loud > 0.95 and faint < loud - 0.15, (loud, faint)


@pytest.mark.parametrize("source", ["whale", "rfcx"])
def test_synthetic_data_larger_than_the_free_disk_is_refused_before_writing(tmp_path, monkeypatch, source):
    """A data.n_train that cannot fit fails at once, naming the keys, with nothing written (not after filling the disk)."""
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 50_000, 50_000))
    root = tmp_path / "data" / source
    with pytest.raises(DataError, match=r"data\.n_train, data\.n_test.*needs about 0\.\d+ GB but only 0\.00 GB"):
        if source == "whale":
            ensure_synthetic_whale(str(root), n_train=10, n_test=0, positive_fraction=0.3, seed=0)
        else:
            ensure_synthetic_rfcx(str(root), n_train=4, n_test=0, duration=2.0, sample_rate=8000, seed=0)
    assert os.listdir(tmp_path) == []
