"""End to end: a tiny queue on generated whale data, rerun, resume, failure isolation, cache reuse."""

import json
import os
import shutil
import textwrap

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_report")]  # the report: tests/test_report.py

QUEUE = """
defaults:
  data: {name: synthetic_whale, n_train: 60, n_test: 12, seed: 3}
  features: {name: complexity, n_fft: 128, hop_length: 64, n_mels: 32}
  cache: {workers: 1}
  folds: {n_splits: 3, seed: 1}
  train: {epochs: 1, batch_size: 16}
experiments:
  - name: inceptiontime_a
    model: {name: inceptiontime, filters: 4, depth: 2, bottleneck: 4}
  - name: inceptiontime_b
    model: {name: inceptiontime, filters: 4, depth: 3, bottleneck: 4, residual: true}
blend: {method: mean}
"""


def write_queue(folder, text=QUEUE):
    path = folder / "queue.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("queue")
    path = write_queue(folder)
    code = main([path])
    return folder, path, code


def test_queue_outputs(finished_run):
    folder, _, code = finished_run
    assert code == 0
    out = folder / "output"
    train = pd.read_csv(folder / "input" / "synthetic_whale" / "train.csv")
    oof = pd.read_csv(out / "oof.csv")
    assert sorted(oof["id"]) == sorted(train["clip_name"])
    assert oof["id"].is_unique
    assert set(oof["fold"]) == {0, 1, 2}
    assert {"inceptiontime_a", "inceptiontime_b", "label"} <= set(oof.columns)
    assert oof[["inceptiontime_a", "inceptiontime_b"]].notna().all().all()
    labels = dict(zip(train["clip_name"], train["label"]))
    assert (oof["label"] == oof["id"].map(labels)).all()

    test_files = sorted(os.listdir(folder / "input" / "synthetic_whale" / "test"))
    for name in ("inceptiontime_a", "inceptiontime_b"):
        exp = out / name
        sub = pd.read_csv(exp / "submission.csv")
        assert list(sub.columns) == ["clip", "probability"]
        assert sorted(sub["clip"]) == test_files
        assert sub["probability"].between(0, 1).all()
        for k in range(3):
            assert (exp / f"fold{k}" / "model.keras").is_file()
            assert (exp / f"fold{k}" / "history.csv").is_file()
            assert not (exp / f"fold{k}" / "state").exists()
            assert list((exp / f"fold{k}" / "tb").rglob("events.out.tfevents*"))  # TensorBoard logs
        scores = json.loads((exp / "scores.json").read_text())
        assert set(scores["folds"]) == {"0", "1", "2"} and 0 <= scores["oof"]["auc"] <= 1
        assert {"accuracy", "f1", "precision", "recall"} <= set(scores["oof"])
        status = json.loads((exp / "status.json").read_text())
        assert status["state"] == "done"
        assert (exp / "config.yaml").is_file() and (exp / "run.log").is_file()
        exp_oof = pd.read_csv(exp / "oof.csv")
        assert list(exp_oof.columns) == ["id", "fold", "label", "pred"]
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["experiment"]) == {"inceptiontime_a", "inceptiontime_b"}
    assert (summary["status"] == "done").all()
    blend = json.loads((out / "blend" / "scores.json").read_text())
    assert "blend" in blend and "best_single" in blend
    assert sorted(pd.read_csv(out / "blend" / "submission.csv")["clip"]) == test_files


def test_second_experiment_reuses_the_feature_cache(finished_run):
    folder, _, _ = finished_run
    caches = [c for c in os.listdir(folder / "output" / "cache" / "features")  # --predict's caches hold test clips only
              if json.loads((folder / "output" / "cache" / "features" / c / "manifest.json").read_text())
              ["splits"]["train"]["count"]]
    assert len(caches) == 1  # both experiments share one cache
    log_b = (folder / "output" / "inceptiontime_b" / "run.log").read_text()
    assert "feature cache hit" in log_b
    log_a = (folder / "output" / "inceptiontime_a" / "run.log").read_text()
    assert "features written" in log_a
    assert len(os.listdir(folder / "output" / "folds")) == 1


def test_rerun_skips_finished_experiments(finished_run, capsys):
    folder, path, _ = finished_run
    model = folder / "output" / "inceptiontime_a" / "fold0" / "model.keras"
    before = model.stat().st_mtime_ns
    assert main([path]) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier with the same config; skipped") == 2
    assert model.stat().st_mtime_ns == before


def test_dry_run_prints_plan_and_writes_nothing(finished_run, capsys):
    folder, path, _ = finished_run
    listing = sorted(os.listdir(folder / "output"))
    assert main([path, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "inceptiontime_a: skip" in out and "cache" in out and "hit" in out
    assert sorted(os.listdir(folder / "output")) == listing


def test_resume_at_first_unfinished_fold_and_rebuild_incomplete_cache(tmp_path, capsys):
    path = write_queue(tmp_path)
    assert main([path, "--only", "inceptiontime_a"]) == 0
    exp = tmp_path / "output" / "inceptiontime_a"
    fold0 = (exp / "fold0" / "model.keras").stat().st_mtime_ns
    # Simulate a run killed during fold 2: fold 2 unfinished, experiment not done.
    shutil.rmtree(exp / "fold2")
    status = json.loads((exp / "status.json").read_text())
    status["state"] = "running"
    (exp / "status.json").write_text(json.dumps(status))
    # ... and a feature cache whose manifest was never written.
    cache = tmp_path / "output" / "cache" / "features"
    key = os.listdir(cache)[0]
    os.remove(cache / key / "manifest.json")
    capsys.readouterr()
    assert main([path, "--only", "inceptiontime_a"]) == 0
    out = capsys.readouterr().out
    assert "fold 1/3: finished earlier; skipped" in out and "fold 2/3: finished earlier; skipped" in out
    assert "fold 3/3: AUC" in out
    assert (exp / "fold0" / "model.keras").stat().st_mtime_ns == fold0
    assert (cache / key / "manifest.json").is_file()
    assert "rebuilding" in (tmp_path / "output" / "queue.log").read_text()


def test_failing_experiment_does_not_stop_the_queue(tmp_path, capsys):
    # A data problem only the data stage can see (folds.n_splits beyond the classes is now a queue error).
    (tmp_path / "broken_whale").mkdir()
    (tmp_path / "broken_whale" / "train.csv").write_text("clip_name,label\n")
    text = QUEUE.replace(
        "  - name: inceptiontime_a\n",
        "  - name: broken\n    model: {name: inceptiontime, filters: 4, depth: 2}\n"
        "    data: {name: kaggle_whale, root: broken_whale}\n  - name: inceptiontime_a\n",
    )
    text = text.replace("  - name: inceptiontime_b\n    model: {name: inceptiontime, filters: 4, depth: 3, bottleneck: 4, residual: true}\n", "")
    path = write_queue(tmp_path, text)
    assert main([path]) == 1
    out = capsys.readouterr().out
    status = json.loads((tmp_path / "output" / "broken" / "status.json").read_text())
    assert status["state"] == "failed" and "broken_whale" in status["error"], status
    assert "Traceback" in (tmp_path / "output" / "broken" / "run.log").read_text()
    assert json.loads((tmp_path / "output" / "inceptiontime_a" / "status.json").read_text())["state"] == "done"
    summary = pd.read_csv(tmp_path / "output" / "summary.csv")
    assert dict(zip(summary["experiment"], summary["status"])) == {"broken": "failed", "inceptiontime_a": "done"}
    assert "failed" in out


# ----------------------------------------------------------------------------- issue 18: --predict new audio


@pytest.fixture
def finished_queue(finished_run):
    """The finished queue; the predict runs below write only output/predict/<run>/ (a name per test) and a
    feature cache of their audio, so they leave the other tests' outputs as they are, in any order."""
    folder, path, code = finished_run
    assert code == 0
    return folder, path


def snapshot(folder):
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_predict_reproduces_test_predictions_finds_a_late_call_by_windows_and_lists_bad_files(finished_queue):
    """One --predict run (the costly part) over the test clips, a long recording and bad files."""
    import soundfile as sf

    folder, path = finished_queue
    out = folder / "output"
    test_dir = folder / "input" / "synthetic_whale" / "test"
    new = folder / "new"
    shutil.copytree(test_dir, new)
    preds = pd.read_csv(out / "inceptiontime_a" / "test.csv").set_index("id")["pred"]
    low, high = preds.idxmin(), preds.idxmax()
    assert preds[high] > preds[low]
    quiet, call = sf.read(test_dir / low, dtype="float32")[0], sf.read(test_dir / high, dtype="float32")[0]
    rate = sf.info(test_dir / high).samplerate
    (new / "site").mkdir()
    # 8 s: the training window (2 s) of the quietest clip three times, then the loudest clip's call at the end.
    sf.write(new / "site" / "long.aiff", np.concatenate([quiet, quiet, quiet, call]), rate, format="AIFF")
    (new / "empty.aiff").write_bytes(b"")
    (new / "not_audio.aiff").write_text("hello")
    data = (test_dir / high).read_bytes()
    (new / "truncated.aiff").write_bytes(data[:len(data) // 2])
    sf.write(new / "wrong_rate.wav", call, rate, subtype="PCM_16")
    raw = bytearray((new / "wrong_rate.wav").read_bytes())
    raw[24:28] = (5).to_bytes(4, "little")  # an implausible 5 Hz in the canonical WAV header
    (new / "wrong_rate.wav").write_bytes(bytes(raw))
    before = {name: snapshot(out / name) for name in ("inceptiontime_a", "inceptiontime_b", "blend")}

    assert main([path, "--predict", str(new), "--predict-name", "field"]) == 0
    run = out / "predict" / "field"
    # The test clips: every experiment's and the blend's training-time test predictions.
    worst = 0.0
    for name, test in (("inceptiontime_a", out / "inceptiontime_a" / "test.csv"),
                       ("inceptiontime_b", out / "inceptiontime_b" / "test.csv"), ("blend", out / "blend" / "test.csv")):
        expected = pd.read_csv(test).set_index("id")["pred"]
        got = pd.read_csv(run / f"{name}.csv").set_index("id")["pred"]
        assert sorted(got.index) == sorted([*expected.index, "site/long.aiff"])
        worst = max(worst, float((got.loc[expected.index] - expected).abs().max()))
    print(f"--predict vs training-time test predictions: max abs difference {worst:.3g}")
    assert worst <= 1e-6
    sub = pd.read_csv(run / "submission.csv").set_index("clip")["probability"]
    blend_sub = pd.read_csv(out / "blend" / "submission.csv").set_index("clip")["probability"]
    assert (sub.loc[blend_sub.index] - blend_sub).abs().max() <= 1e-6
    # The long recording: its first window alone is the quiet clip's prediction; the windows found the late call.
    got = pd.read_csv(run / "inceptiontime_a.csv").set_index("id")["pred"]
    assert got["site/long.aiff"] >= preds[high] - 1e-6 > preds[low]
    # The bad files: listed with their reasons (file and log), and still a row of the submission.
    skipped = pd.read_csv(run / "skipped.csv").set_index("id")["reason"]
    assert sorted(skipped.index) == ["empty.aiff", "not_audio.aiff", "truncated.aiff", "wrong_rate.wav"]
    assert skipped.str.len().gt(0).all() and "5 Hz" in skipped["wrong_rate.wav"]
    log = (run / "predict.log").read_text()
    assert all(name in log for name in skipped.index) and "epoch" not in log.lower()  # nothing trained
    assert sorted(sub.index) == sorted([*blend_sub.index, "site/long.aiff", *skipped.index])
    # Nothing of the experiments or the blend changed.
    assert before == {name: snapshot(out / name) for name in ("inceptiontime_a", "inceptiontime_b", "blend")}


def test_predict_refuses_what_it_cannot_predict_before_writing(tmp_path, capsys):
    path = write_queue(tmp_path)
    (tmp_path / "silent").mkdir()
    (tmp_path / "silent" / "notes.txt").write_text("no audio here")
    cases = [(["--predict", str(tmp_path / "nowhere")], "not found"),
             (["--predict", str(tmp_path / "silent")], "no audio files"),
             (["--predict", str(tmp_path)], "no finished experiment"),
             (["--predict-name", "x"], "needs --predict"),
             (["--predict", str(tmp_path), "--force"], "cannot be combined with --force"),
             (["--predict", str(tmp_path), "--predict-name", "../up"], "not a safe folder name"),
             (["--predict", str(tmp_path / "block.yaml")], "data.name: 'kaggle_whal' is not a data source"),
             (["--predict", str(tmp_path / "other.yaml")], "expected a mapping with the one key data"),
             (["--export", "--predict", str(tmp_path)], "cannot be combined with --predict"),
             (["--export"], "--export: no finished experiment"),
             (["--predict", str(tmp_path / "other_data.yaml")], "predicting would replace it")]
    (tmp_path / "block.yaml").write_text("data: {name: kaggle_whal, root: x}\n")
    # A synthetic data block whose root holds another synthetic dataset (the queue's training data, say) is never
    # generated over: --predict replaced a finished queue's training clips.
    from pipeline.data.synthetic import ensure_synthetic_whale

    ensure_synthetic_whale(str(tmp_path / "synth"), n_train=30, n_test=5, positive_fraction=0.3, seed=0)
    synth = snapshot(tmp_path / "synth")
    (tmp_path / "other_data.yaml").write_text(
        f"data: {{name: synthetic_whale, n_train: 20, root: {tmp_path / 'synth'}}}\n")
    (tmp_path / "other.yaml").write_text("data: {name: kaggle_whale, root: x}\noutput: y\n")
    (tmp_path / "song.wav").write_bytes(b"")  # audio in the folder: the missing experiments are the problem
    for args, words in cases:
        assert main([path, *args]) == 2, args
        assert words in capsys.readouterr().err, args
    assert not (tmp_path / "output").exists()
    assert snapshot(tmp_path / "synth") == synth


FORBIDDEN_IN_EXPORTED = ("pipeline.queue", "pipeline.train", "pipeline.fold_job", "pipeline.fold_loop",
                         "pipeline.models", "pipeline.losses", "pipeline.schedules", "pipeline.distribute",
                         "pipeline.export", "pipeline.keras_metrics", "pipeline.augment")


def test_export_predicts_in_a_fresh_process_without_the_queue_or_training_code(finished_queue):
    import subprocess
    import sys

    folder, path = finished_queue
    out = folder / "output"
    assert main([path, "--export", "--only", "inceptiontime_a"]) == 0
    root = out / "export"
    manifest = json.loads((root / "inceptiontime_a" / "export.json").read_text())
    assert manifest["targets"] == ["label"] and manifest["n_folds"] == 3 and manifest["select_tf_ops"] == []
    assert manifest["input_shape"] == manifest["feature_shape"] and manifest["windows"] == {"aggregate": "max"}
    for k in range(3):
        assert (root / "inceptiontime_a" / f"fold{k}.tflite").stat().st_size > 0
        assert (root / "inceptiontime_a" / f"fold{k}.savedmodel" / "saved_model.pb").is_file()
    assert json.loads((root / "export.json").read_text())["experiments"] == ["inceptiontime_a"]
    # Elsewhere, with neither the queue file nor the output folder: a copy of the export and of the audio.
    shutil.copytree(root, folder / "kaggle" / "export")
    shutil.copytree(folder / "input" / "synthetic_whale" / "test", folder / "kaggle" / "test")
    script = (
        "import sys\n"
        "from pipeline.exported import main\n"
        "code = main(['export', 'test', '--out', 'preds'])\n"
        f"loaded = [m for m in sys.modules if m.split('.')[:2] in [f.split('.') for f in {FORBIDDEN_IN_EXPORTED!r}]]\n"
        "assert code == 0 and not loaded, (code, loaded)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=folder / "kaggle", capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})
    assert done.returncode == 0, done.stderr[-3000:]
    keras_test = pd.read_csv(out / "inceptiontime_a" / "test.csv").set_index("id")["pred"]
    tflite = pd.read_csv(folder / "kaggle" / "preds" / "inceptiontime_a.csv").set_index("id")["pred"]
    worst = float((tflite.loc[keras_test.index] - keras_test).abs().max())
    print(f"TFLite export vs Keras test predictions: max abs difference {worst:.3g}")
    assert worst <= 1e-4
    sub = pd.read_csv(folder / "kaggle" / "preds" / "submission.csv")
    assert sorted(sub["clip"]) == sorted(keras_test.index)
    check_damaged_exports(folder / "kaggle", tflite)


def check_damaged_exports(kaggle, predictions):
    """Copies of a good export at ``kaggle/export`` (a Kaggle dataset upload that lost bytes, a hand-edited
    manifest, one of an older version): a damaged one is refused with a message naming the file (TFLite's
    interpreter killed the process with SIGSEGV on a truncated model), the old one predicts as before."""
    import subprocess
    import sys

    def copy(name):
        shutil.copytree(kaggle / "export", kaggle / name)
        return kaggle / name

    tflite = copy("truncated") / "inceptiontime_a" / "folds.tflite"
    tflite.write_bytes(tflite.read_bytes()[:1000])
    manifest = copy("edited") / "inceptiontime_a" / "export.json"
    manifest.write_text(manifest.read_text().replace('"batch_size": ', '"batch_size": 1'))
    (copy("not_json") / "export.json").write_text('{"version": 2, "exp')
    old = copy("version1")
    for path in (old / "export.json", old / "inceptiontime_a" / "export.json"):
        m = json.loads(path.read_text())
        del m["checksums"]
        path.write_text(json.dumps({**m, "version": 1}))
    script = ("import sys\n"
              "from pipeline.exported import main\n"
              "print([main([name, 'test', '--out', 'p_' + name]) for name in sys.argv[1:]])\n")
    names = ["truncated", "edited", "not_json", "version1"]
    done = subprocess.run([sys.executable, "-c", script, *names], cwd=kaggle, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "[1, 1, 2, 0]", (done.returncode,
                                                                                          done.stderr[-3000:])
    log = (kaggle / "p_truncated" / "predict.log").read_text()
    assert "truncated/inceptiontime_a/folds.tflite: damaged or changed since it was exported" in log, log
    log = (kaggle / "p_edited" / "predict.log").read_text()
    assert "edited/inceptiontime_a/export.json: damaged or changed since it was exported" in log, log
    assert "not_json/export.json: not readable as JSON" in done.stderr
    assert not (kaggle / "p_not_json").exists()
    old_preds = pd.read_csv(kaggle / "p_version1" / "inceptiontime_a.csv").set_index("id")["pred"]
    pd.testing.assert_series_equal(old_preds, predictions)


def test_predict_and_export_apply_the_saved_blend_only_while_the_queue_describes_it(tmp_path, caplog):
    """blend/ was made by the queue's blend: section; after that section changes (and before --blend-only), new
    audio is not blended with the old weights (before: the old blend was applied with no word)."""
    text = textwrap.dedent(f"""
        defaults:
          data: {{name: synthetic_whale, n_train: 60, n_test: 10, seed: 0, root: {tmp_path / 'data'}}}
          folds: {{n_splits: 2}}
          features: {{name: mel, n_fft: 256, hop_length: 64, n_mels: 32}}
          model: logreg
        experiments: [{{name: a}}, {{name: b, model: {{name: logreg, regularization: 10.0}}}}]
        blend: {{method: mean}}
    """)
    path = write_queue(tmp_path, text)
    assert main([path]) == 0
    changed = write_queue(tmp_path, text.replace("blend: {method: mean}", "blend: {method: mean, include: [a]}"))
    new_audio = str(tmp_path / "data" / "test")
    run = tmp_path / "output" / "predict"
    assert main([changed, "--predict", new_audio, "--predict-name", "changed"]) == 0
    assert not (run / "changed" / "blend.csv").exists()
    assert "blend: section changed since" in caplog.text
    assert main([changed, "--export"]) == 0
    assert json.loads((tmp_path / "output" / "export" / "export.json").read_text())["blend"] is None
    assert main([changed, "--blend-only"]) == 0
    assert main([changed, "--predict", new_audio, "--predict-name", "blended"]) == 0
    assert (run / "blended" / "blend.csv").is_file()


# ----------------------------------------------------------------------------- undefined fold scores

TABLE_QUEUE = """
defaults:
  data: {name: table, csv: train.csv, audio_dir: audio, group_column: site}
  audio: {sample_rate: 2000, duration: 1.0}
  features: {name: mel, n_fft: 128, hop_length: 64, n_mels: 16}
  cache: {workers: 1}
  folds: {n_splits: 2, seed: 0}
experiments:
  - name: apart
    model: {name: logreg}
  - name: mixed
    data: {csv: train_mixed.csv}
    model: {name: logreg}
blend: {method: mean}
"""


def test_a_fold_without_both_classes_fails_its_experiment_and_is_never_scored(tmp_path, monkeypatch, capsys):
    # Site "a" holds every positive clip: each fold would train on one class and validate on the other (AUC NaN).
    from conftest import write_tone_clips

    rows = write_tone_clips(tmp_path / "audio", 24, seed=5)
    table = pd.DataFrame([{**row, "site": "a" if row["label"] else f"b{i % 3}"} for i, row in enumerate(rows)])
    table.to_csv(tmp_path / "train.csv", index=False)
    table.assign(site=[f"s{i % 3}" for i in range(24)]).to_csv(tmp_path / "train_mixed.csv", index=False)
    path = write_queue(tmp_path, TABLE_QUEUE)
    out = tmp_path / "output"

    def check_outputs(error):
        status = json.loads((out / "apart" / "status.json").read_text())
        assert status["state"] == "failed" and status["error"].startswith(error), status
        assert not list((out / "apart").rglob("done.json")) and not (out / "apart" / "scores.json").exists()
        for file in out.rglob("*.json"):  # strict JSON everywhere: no NaN
            json.loads(file.read_text(), parse_constant=lambda c: pytest.fail(f"{file} holds {c}"))
        summary = pd.read_csv(out / "summary.csv").set_index("experiment")
        assert summary.loc["apart", "status"] == "failed"
        assert summary.drop(columns="error").loc["apart"].isna().sum() > 0
        assert pd.isna(summary.loc["apart"].filter(like="auc")).all()
        assert summary.loc["mixed", "status"] == "done"
        assert list(json.loads((out / "blend" / "scores.json").read_text())["experiments"]) == ["mixed"]

    # The folds stage refuses the table, naming the group column.
    assert main([path]) == 1
    check_outputs("FoldError: data.group_column='site': every fold needs both classes")
    assert "fold 1: validation has no positive clip" in capsys.readouterr().out
    # The last guard, should a one-class fold reach training (the check bypassed): no done.json, no score.
    monkeypatch.setattr("pipeline.folds.check_fold_classes", lambda *args: None)
    assert main([path, "--only", "apart"]) == 1
    check_outputs("TrainingError: fold 1/2: the validation AUC is undefined (NaN)")
