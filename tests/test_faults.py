"""Faults a night's run must survive: bad audio, too much bad audio, NaN losses, shuffled labels.

Each test injects the fault into a tiny queue and checks that the run ends the
way the README promises (skips listed with reasons, failures isolated, scores
honest).
"""

import json
import os
import textwrap

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipeline.cli import main
from pipeline.data.synthetic import synthesize_clip

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_report")]  # the report: tests/test_report.py

SR = 2000


def good_clip(rng, label):
    samples, _ = synthesize_clip(rng=rng, label=label)
    return samples


def make_table(folder, rng, n_good=36, bad=True):
    """A `table` dataset with good clips and (optionally) one file per kind of bad audio."""
    audio = folder / "audio"
    audio.mkdir()
    rows, expected_bad = [], {}
    for i in range(n_good):
        label = i % 2
        sf.write(audio / f"good{i}.wav", good_clip(rng, label), SR, subtype="PCM_16")
        rows.append((f"good{i}.wav", label))
    if bad:
        def add(name, label, reason_word):
            rows.append((name, label))
            expected_bad[name] = reason_word

        (audio / "zero.wav").write_bytes(b"")
        add("zero.wav", 0, "empty")
        data = (audio / "good0.wav").read_bytes()
        (audio / "truncated.wav").write_bytes(data[: len(data) // 2])
        add("truncated.wav", 1, "truncated")
        (audio / "text.wav").write_text("this is not audio\n" * 50)
        add("text.wav", 0, "unreadable")
        many_nan = good_clip(rng, 0).astype(np.float32)
        many_nan[::2] = np.nan
        sf.write(audio / "nan.wav", many_nan, SR, subtype="FLOAT")
        add("nan.wav", 0, "non-finite")
        sf.write(audio / "silent.wav", np.zeros(4000, np.float32), SR, subtype="PCM_16")
        add("silent.wav", 1, "silent")
        sf.write(audio / "short.wav", good_clip(rng, 0)[:100], SR, subtype="PCM_16")
        add("short.wav", 0, "too short")
        add("missing.wav", 1, "missing")
        # Hostile headers and values (issue 14): judged before decoding, never cached.
        long = np.tile(good_clip(rng, 0), 5)
        sf.write(audio / "onehz.wav", long, SR, subtype="PCM_16")
        _patch_wav(audio / "onehz.wav", rate=1)
        add("onehz.wav", 0, "implausible header: sample rate 1 Hz")
        sf.write(audio / "channels.wav", long, SR, subtype="PCM_16")
        _patch_wav(audio / "channels.wav", channels=1000)
        add("channels.wav", 1, "implausible header: 1000 channels")
        huge = good_clip(rng, 1).astype(np.float32)
        huge[100:200] = 1e30
        sf.write(audio / "huge.wav", huge, SR, subtype="FLOAT")
        add("huge.wav", 1, "absurd sample values")
        # Repairable: kept, with a note.
        few_nan = good_clip(rng, 1).astype(np.float32)
        few_nan[10] = np.inf
        sf.write(audio / "fewnan.wav", few_nan, SR, subtype="FLOAT")
        rows.append(("fewnan.wav", 1))
        stereo = np.stack([good_clip(rng, 0), good_clip(rng, 0)], axis=1)
        sf.write(audio / "stereo.wav", stereo, SR, subtype="PCM_16")
        rows.append(("stereo.wav", 0))
        sf.write(audio / "rate.wav", np.repeat(good_clip(rng, 1), 2), 2 * SR, subtype="PCM_16")
        rows.append(("rate.wav", 1))
        # A WAV under a .flac name: decoded by content, not by extension.
        (audio / "wrongext.flac").write_bytes((audio / "good1.wav").read_bytes())
        rows.append(("wrongext.flac", 1))
    pd.DataFrame(rows, columns=["file", "label"]).to_csv(folder / "train.csv", index=False)
    return expected_bad


def _patch_wav(path, *, rate=None, channels=None):
    """Rewrite the sample rate or channel count of a canonical 44-byte WAV header (a corrupt header)."""
    data = bytearray(path.read_bytes())
    if rate is not None:
        data[24:28] = rate.to_bytes(4, "little")
    if channels is not None:
        data[22:24] = channels.to_bytes(2, "little")
        data[32:34] = (2 * channels).to_bytes(2, "little")  # block_align of 16-bit frames
    path.write_bytes(bytes(data))


QUEUE = """
defaults:
  data: {{name: table, csv: train.csv, audio_dir: audio}}
  audio: {{sample_rate: 2000, duration: 2.0, max_bad_fraction: {max_bad}}}
  features: {{name: complexity, n_fft: 128, hop_length: 64, n_mels: 32}}
  cache: {{workers: 1}}
  folds: {{n_splits: 2, seed: 0}}
  train: {{epochs: {epochs}, batch_size: 8, learning_rate: {lr}}}
  model: {{name: inceptiontime, filters: 4, depth: 2, bottleneck: 4, kernel_sizes: [4, 8]}}
experiments:
  - name: inceptiontime_a
"""


def write_queue(folder, max_bad=0.5, epochs=1, lr=0.001, extra=""):
    path = folder / "queue.yaml"
    path.write_text(textwrap.dedent(QUEUE.format(max_bad=max_bad, epochs=epochs, lr=lr)) + extra)
    return str(path)


def test_bad_audio_is_skipped_listed_and_the_run_completes(tmp_path, rng):
    expected_bad = make_table(tmp_path, rng, n_good=20)
    assert main([write_queue(tmp_path)]) == 0
    out = tmp_path / "output"
    (cache,) = (out / "cache" / "features").iterdir()
    manifest = json.loads((cache / "manifest.json").read_text())
    reasons = {item["id"]: item["reason"] for item in manifest["skipped"]}
    assert set(reasons) == set(expected_bad)
    for name, word in expected_bad.items():
        assert word in reasons[name], (name, reasons[name])
    notes = {item["id"] for item in manifest["repaired"]}
    assert {"fewnan.wav", "stereo.wav", "rate.wav"} <= notes
    run_log = (out / "inceptiontime_a" / "run.log").read_text()
    for name in expected_bad:
        assert f"skipped {name}" in run_log
    oof = pd.read_csv(out / "oof.csv")
    assert set(oof["id"]) == {r for r in pd.read_csv(tmp_path / "train.csv")["file"]} - set(expected_bad)


def test_too_much_bad_audio_fails_the_experiment_clearly(tmp_path, rng, capsys):
    make_table(tmp_path, rng, n_good=12)
    assert main([write_queue(tmp_path, max_bad=0.1)]) == 1
    status = json.loads((tmp_path / "output" / "inceptiontime_a" / "status.json").read_text())
    assert status["state"] == "failed"
    assert "max_bad_fraction=0.1" in status["error"] and "refusing to train" in status["error"]


def test_nan_loss_fails_that_experiment_and_the_queue_continues(tmp_path, rng, monkeypatch):
    make_table(tmp_path, rng, n_good=16, bad=False)
    import keras

    import pipeline.losses as losses

    real = losses.make_loss

    def poisoned(name, params, task):
        if os.environ.get("POISON_LOSS"):
            return lambda y_true, y_pred: keras.ops.mean(y_pred) * np.float32("nan")
        return real(name, params, task)

    monkeypatch.setattr(losses, "make_loss", poisoned)
    monkeypatch.setenv("POISON_LOSS", "1")
    extra = "  - name: inceptiontime_b\n    model: {name: inceptiontime, filters: 4, depth: 1, bottleneck: 4, kernel_sizes: [4]}\n"
    path = write_queue(tmp_path, extra=extra)
    assert main([path]) == 1
    for name in ("inceptiontime_a", "inceptiontime_b"):
        status = json.loads((tmp_path / "output" / name / "status.json").read_text())
        assert status["state"] == "failed" and "NaN" in status["error"]
    # Fixing the cause and rerunning finishes the queue.
    monkeypatch.delenv("POISON_LOSS")
    assert main([path]) == 0


def test_shuffled_labels_give_chance_oof_auc(tmp_path):
    """No information may leak from validation folds: with random labels OOF AUC stays near 0.5."""
    rng = np.random.default_rng(7)
    make_table(tmp_path, rng, n_good=120, bad=False)
    table = pd.read_csv(tmp_path / "train.csv")
    table["label"] = rng.permutation(table["label"].to_numpy())
    table.to_csv(tmp_path / "train.csv", index=False)
    assert main([write_queue(tmp_path, epochs=3, lr=0.01)]) == 0
    scores = json.loads((tmp_path / "output" / "inceptiontime_a" / "scores.json").read_text())
    # 120 clips: the AUC of random scores has a standard deviation of about 0.053.
    assert abs(scores["oof"]["auc"] - 0.5) < 0.16, scores["oof"]["auc"]


def test_whale_layout_with_bad_files_runs_to_the_end(tmp_path):
    """kaggle_whale reader: a 0-byte, a truncated and a non-audio AIFF are skipped, listed, and the run ends normally."""
    from pipeline.data.synthetic import ensure_synthetic_whale

    root = tmp_path / "whale"
    ensure_synthetic_whale(str(root), n_train=40, n_test=6, positive_fraction=0.5, seed=2)
    (root / "train" / "train1.aiff").write_bytes(b"")
    data = (root / "train" / "train2.aiff").read_bytes()
    (root / "train" / "train2.aiff").write_bytes(data[: len(data) // 3])
    (root / "test" / "test3.aiff").write_text("FORM but not really an AIFF file")
    queue = textwrap.dedent(QUEUE.format(max_bad=0.5, epochs=1, lr=0.001)).replace(
        "{name: table, csv: train.csv, audio_dir: audio}", "{name: kaggle_whale, root: whale}")
    (tmp_path / "queue.yaml").write_text(queue)
    assert main([str(tmp_path / "queue.yaml")]) == 0
    out = tmp_path / "output"
    (cache,) = (out / "cache" / "features").iterdir()
    reasons = {s["id"]: s["reason"] for s in json.loads((cache / "manifest.json").read_text())["skipped"]}
    assert set(reasons) == {"train1.aiff", "train2.aiff", "test3.aiff"}
    assert "empty" in reasons["train1.aiff"] and "truncated" in reasons["train2.aiff"]
    oof = pd.read_csv(out / "oof.csv")
    assert len(oof) == 38 and not {"train1.aiff", "train2.aiff"} & set(oof["id"])
    sub = pd.read_csv(out / "inceptiontime_a" / "submission.csv")
    # The unreadable test clip still gets a (mean) row so the submission is complete, at its place in the test
    # listing's (sorted) order, not appended at the end.
    assert list(sub["clip"]) == sorted(os.listdir(root / "test"))
    test = pd.read_csv(out / "inceptiontime_a" / "test.csv")
    assert sub.set_index("clip")["probability"]["test3.aiff"] == pytest.approx(test["pred"].mean())


def test_whale_layout_with_every_test_file_unreadable_still_writes_full_submissions(tmp_path, caplog):
    """Every test clip 0 bytes: the experiment and the blend still write a submission with every test clip
    (the mean OOF prediction), and the log says so with the count."""
    from pipeline.data.synthetic import ensure_synthetic_whale

    root = tmp_path / "whale"
    ensure_synthetic_whale(str(root), n_train=40, n_test=4, positive_fraction=0.5, seed=2)
    for clip in (root / "test").iterdir():
        clip.write_bytes(b"")
    queue = textwrap.dedent(QUEUE.format(max_bad=0.5, epochs=1, lr=0.001)).replace(
        "{name: table, csv: train.csv, audio_dir: audio}", "{name: kaggle_whale, root: whale}")
    (tmp_path / "queue.yaml").write_text(queue)
    with caplog.at_level("WARNING", logger="pipeline"):
        assert main([str(tmp_path / "queue.yaml")]) == 0
    out = tmp_path / "output"
    oof = pd.read_csv(out / "inceptiontime_a" / "oof.csv")
    sub = pd.read_csv(out / "inceptiontime_a" / "submission.csv")
    assert list(sub["clip"]) == sorted(os.listdir(root / "test"))
    assert np.allclose(sub["probability"], oof["pred"].mean())
    blend_sub = pd.read_csv(out / "blend" / "submission.csv")
    assert list(blend_sub["clip"]) == list(sub["clip"])
    assert "none of the 4 test clips has a prediction" in (out / "inceptiontime_a" / "run.log").read_text()
    assert "blend submission: none of the 4 test clips has a prediction" in caplog.text
