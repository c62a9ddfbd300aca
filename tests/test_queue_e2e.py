"""End to end: a tiny queue on generated whale data, rerun, resume, failure isolation, cache reuse."""

import json
import os
import shutil
import textwrap

import pandas as pd
import pytest

from pipeline.cli import main

pytestmark = pytest.mark.slow

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
    caches = os.listdir(folder / "output" / "cache" / "features")
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
