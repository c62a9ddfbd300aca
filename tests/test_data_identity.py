"""Identity of data: edited labels, replaced, added or removed audio are never reused or reported as current."""

import json
import os
import shutil
import textwrap

import numpy as np
import pandas as pd
import pytest

from pipeline import layout, results
from pipeline.config import load_queue
from pipeline.data import load_dataset
from pipeline.data.identity import compute_identity, describe_changes
from pipeline.data.synthetic import ensure_synthetic_whale

pytestmark = pytest.mark.usefixtures("no_report")  # the report: tests/test_report.py


def whale(folder, n_train=24, n_test=4):
    """A tiny dataset in the Kaggle whale layout (train.csv, train/, test/)."""
    root = folder / "whale"
    ensure_synthetic_whale(str(root), n_train=n_train, n_test=n_test, positive_fraction=0.5, seed=4)
    (root / "synthetic.json").unlink()  # from now on it is the user's data, read by kaggle_whale
    return root


def read(root):
    return load_dataset("kaggle_whale", _params(root))


def _params(root):
    from pipeline import schema

    return schema.KaggleWhaleParams(root=str(root))


def flip_labels(root, n):
    table = pd.read_csv(root / "train.csv")
    table.loc[: n - 1, "label"] = 1 - table.loc[: n - 1, "label"]
    table.to_csv(root / "train.csv", index=False)


def rewrite_audio(path):
    """New content under the same name and size (the waveform at half level), with a later mtime."""
    import soundfile as sf

    x, rate = sf.read(str(path), dtype="float32")
    sf.write(str(path), 0.5 * x, rate, subtype="PCM_16", format="AIFF")
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))  # coarse-mtime filesystems too


def add_clip(root, name="train999.aiff"):
    shutil.copyfile(root / "train" / "train2.aiff", root / "train" / name)
    table = pd.read_csv(root / "train.csv")
    table = pd.concat([table, pd.DataFrame({"clip_name": [name], "label": [1]})], ignore_index=True)
    table.to_csv(root / "train.csv", index=False)


# ----------------------------------------------------------------------------- the identity itself


def test_each_part_follows_what_it_depends_on(tmp_path):
    root = whale(tmp_path)
    before = read(root).identity
    assert read(root).identity.parts == before.parts  # same data, same identity

    flip_labels(root, 3)
    labels = read(root).identity
    assert labels.audio == before.audio  # the feature cache does not depend on labels
    assert labels.parts["labels"] != before.parts["labels"] and labels.folds != before.folds

    rewrite_audio(root / "train" / "train5.aiff")
    audio = read(root).identity
    assert audio.audio != labels.audio
    assert audio.parts["labels"] == labels.parts["labels"] and audio.folds == labels.folds

    add_clip(root)
    added = read(root).identity
    assert added.audio != audio.audio and added.folds != audio.folds

    (root / "test" / "test1.aiff").unlink()  # a removed test file changes what is cached
    assert read(root).identity.audio != added.audio


def test_groups_masks_and_boxes_are_part_of_the_labels():
    frame = pd.DataFrame({"id": ["a", "b", "c", "d"], "path": ["/x/a", "/x/b", "/x/c", "/x/d"], "split": "train",
                          "s0": [1.0, 0.0, 1.0, 0.0], "mask:s0": [1.0, 1.0, 0.0, 1.0],
                          "boxes": ["[[0, 1.0, 2.0, 10.0, 20.0, 1]]", "[]", "[]", "[]"],
                          "group": ["g1", "g1", "g2", "g2"]})
    base = compute_identity(frame, ("s0",))
    for column, value in (("mask:s0", 0.0), ("boxes", "[[0, 1.5, 2.0, 10.0, 20.0, 1]]"), ("s0", 0.0)):
        edited = frame.copy()
        edited.loc[0, column] = value
        other = compute_identity(edited, ("s0",))
        assert other.parts["labels"] != base.parts["labels"], column
        assert other.folds != base.folds and other.audio == base.audio, column
    regrouped = frame.assign(group=["g1", "g2", "g2", "g2"])
    other = compute_identity(regrouped, ("s0",))
    assert other.parts["groups"] != base.parts["groups"] and other.folds != base.folds
    assert other.parts["labels"] == base.parts["labels"]
    # -0.0 and 0.0, and any NaN, are the same label.
    signed = frame.assign(s0=[1.0, -0.0, 1.0, 0.0])
    assert compute_identity(signed, ("s0",)).parts == base.parts


def test_the_change_is_said_in_words(tmp_path):
    root = whale(tmp_path)
    before = read(root).identity
    flip_labels(root, 12)
    rewrite_audio(root / "train" / "train7.aiff")
    add_clip(root)
    (root / "test" / "test2.aiff").unlink()
    text = describe_changes(before.checked(), read(root).identity, before.clips)
    assert "12 labels changed" in text
    assert "1 audio file changed (train/train7.aiff)" in text
    assert "1 clip added (train/train999.aiff)" in text
    assert "1 clip removed (test/test2.aiff)" in text
    assert describe_changes(before.checked(), before, before.clips) == ""
    # Without the per-clip table (killed before it was written) the parts are named.
    assert describe_changes(before.checked(), read(root).identity) == "audio files or clips and labels changed"
    assert "did not record" in describe_changes(None, before)


def test_remote_files_are_statted_through_gfile(tmp_path):
    import tensorflow as tf

    from pipeline import io
    from pipeline.data.identity import stat_files

    root = f"ram://identity-{os.getpid()}"
    tf.io.gfile.makedirs(root)
    path = io.join(root, "a.aiff")
    with io.open_file(path, "wb") as f:
        f.write(b"x" * 10)
    try:
        sizes, mtimes = stat_files([path, io.join(root, "missing.aiff")])
        assert sizes.tolist() == [10, -1] and mtimes[1] == -1
    finally:
        tf.io.gfile.rmtree(root)


# ----------------------------------------------------------------------------- stages keyed on it


def test_feature_cache_key_covers_the_files_not_the_labels(tmp_path):
    from pipeline.cache.build import cache_key

    root = whale(tmp_path)
    exp = _queue(tmp_path, root).experiments[0]
    specs = (exp.data, exp.audio, exp.features, exp.predict)
    key = cache_key(*specs, read(root).identity.audio)
    flip_labels(root, 4)
    assert cache_key(*specs, read(root).identity.audio) == key
    rewrite_audio(root / "train" / "train1.aiff")
    assert cache_key(*specs, read(root).identity.audio) != key


def test_fold_table_for_other_labels_is_not_reused(tmp_path):
    from pipeline.folds import ensure_folds, make_folds

    root = whale(tmp_path, n_train=40)
    exp = _queue(tmp_path, root).experiments[0]
    first = ensure_folds(read(root), exp.data, exp.folds, str(tmp_path / "folds"))
    table = pd.read_csv(root / "train.csv")
    table["label"] = np.roll(table["label"].to_numpy(), 7)  # same ids, other labels
    table.to_csv(root / "train.csv", index=False)
    data = read(root)
    second = ensure_folds(data, exp.data, exp.folds, str(tmp_path / "folds"))
    assert second.equals(make_folds(data, n_splits=exp.folds.n_splits, seed=exp.folds.seed))
    assert not second.equals(first)
    assert len(list((tmp_path / "folds").iterdir())) == 2


# ----------------------------------------------------------------------------- the queue's decisions (no training)

QUEUE = """
defaults:
  data: {name: kaggle_whale, root: whale}
  features: {name: complexity, n_fft: 128, hop_length: 64, n_mels: 32}
  cache: {workers: 1}
  folds: {n_splits: 2, seed: 1}
  train: {epochs: 1, batch_size: 8}
  model: {name: inceptiontime, filters: 4, depth: 2, bottleneck: 4, kernel_sizes: [4, 8]}
experiments:
  - name: small
blend: {method: mean}
"""


def _queue(folder, root, text=QUEUE):
    path = folder / "queue.yaml"
    path.write_text(textwrap.dedent(text).replace("root: whale", f"root: {root}"))
    return load_queue(str(path))


def _fake_stages(calls):
    """Stands in for the stages: records the call and writes the outputs a finished experiment has."""

    def stages(exp, paths, exp_dir, timings, data=None, memory_budget=None):
        if data and data[1] is not None:  # the data stage raises the loading error
            raise data[1]
        dataset = data[0] if data else load_dataset(exp.data.name, exp.data.params)
        calls.append(exp.name)
        train = dataset.train
        pd.DataFrame({"id": train["id"], "fold": np.arange(len(train)) % 2, "label": train["label"],
                      "pred": 0.5}).to_csv(os.path.join(exp_dir, "oof.csv"), index=False)
        scores = {"oof": {"auc": 0.5}, "fold_mean": 0.5, "fold_std": 0.0, "task": "binary", "targets": ["label"],
                  "submission": "whale"}
        with open(os.path.join(exp_dir, "scores.json"), "w") as f:
            json.dump(scores, f)

    return stages


def test_changed_data_is_rerun_and_never_shown_as_current(tmp_path, monkeypatch, caplog):
    import pipeline.queue as q

    root = whale(tmp_path)
    queue = _queue(tmp_path, root)
    exp = queue.experiments[0]
    paths = q.Paths(queue.output_dir)
    calls = []
    monkeypatch.setattr(q, "_stages", _fake_stages(calls))
    assert q.run_experiment(exp, paths)["state"] == "done" and calls == ["small"]

    # Unchanged data: skipped, and nothing in the experiment folder is written.
    exp_dir = tmp_path / "output" / "small"
    before = {p: p.read_bytes() for p in exp_dir.rglob("*") if p.is_file()}
    assert q.run_experiment(exp, paths)["state"] == "done" and calls == ["small"]
    assert {p: p.read_bytes() for p in exp_dir.rglob("*") if p.is_file()} == before
    assert [e.name for e in results.finished(queue, paths.output)] == ["small"]

    # Flipped labels: not finished any more, stale in the summary and the plan, out of oof.csv.
    flip_labels(root, 5)
    assert results.finished(queue, paths.output) == []
    summary = q.write_summary(queue, paths)
    assert summary.loc[0, "status"] == "stale" and "5 labels changed" in summary.loc[0, "error"]
    assert pd.isna(summary.loc[0, "oof_auc"])
    assert q.write_queue_oof(queue, paths) is None
    assert "data changed since the last run: 5 labels changed" in q.plan(queue, paths, ["small"], force=False)

    # The rerun starts afresh (no resume of folds trained on the old labels) and says why.
    (exp_dir / "fold0").mkdir()
    (exp_dir / "fold0" / "done.json").write_text("{}")
    with caplog.at_level("INFO", logger="pipeline"):
        status = q.run_experiment(exp, paths)
    assert status["state"] == "done" and calls == ["small", "small"]
    assert "small: starting afresh (data changed since the last run: 5 labels changed)" in caplog.text
    assert not (exp_dir / "fold0").exists()
    assert [e.name for e in results.finished(queue, paths.output)] == ["small"]
    assert q.write_summary(queue, paths).loc[0, "status"] == "done"


def test_an_unfinished_run_on_other_data_is_not_resumed(tmp_path, monkeypatch, caplog):
    import pipeline.queue as q

    root = whale(tmp_path)
    queue = _queue(tmp_path, root)
    exp = queue.experiments[0]
    paths = q.Paths(queue.output_dir)
    calls = []

    def interrupted(*args, **kwargs):
        calls.append("run")
        raise KeyboardInterrupt

    monkeypatch.setattr(q, "_stages", interrupted)
    with pytest.raises(KeyboardInterrupt):
        q.run_experiment(exp, paths)
    add_clip(root)
    monkeypatch.setattr(q, "_stages", _fake_stages(calls))
    assert "run (data changed since the last run: 1 clip added (train/train999.aiff); start afresh)" in q.plan(
        queue, paths, ["small"], force=False)
    with caplog.at_level("INFO", logger="pipeline"):
        q.run_experiment(exp, paths)
    assert "starting afresh (data changed since the last run: 1 clip added (train/train999.aiff))" in caplog.text


def test_results_whose_data_cannot_be_read_are_not_presented_as_current(tmp_path, monkeypatch):
    import pipeline.queue as q

    root = whale(tmp_path)
    queue = _queue(tmp_path, root)
    exp = queue.experiments[0]
    paths = q.Paths(queue.output_dir)
    monkeypatch.setattr(q, "_stages", _fake_stages([]))
    q.run_experiment(exp, paths)
    (root / "train.csv").unlink()
    assert results.finished(queue, paths.output) == []
    row = q.write_summary(queue, paths).loc[0]
    assert row["status"] == "stale" and "train.csv not found" in row["error"]
    assert "small: fail: the data cannot be read (DataError: " in q.plan(queue, paths, ["small"], force=False)
    status = q.run_experiment(exp, paths)
    assert status["state"] == "failed" and "train.csv not found" in status["error"]
    assert (tmp_path / "output" / "small" / "oof.csv").is_file()  # earlier results are not deleted


def test_a_finished_run_on_synthetic_data_not_on_disk_is_skipped_without_generating_it(tmp_path, monkeypatch):
    import pipeline.queue as q

    text = QUEUE.replace("{name: kaggle_whale, root: whale}", "{name: synthetic_whale, n_train: 12, n_test: 2}")
    queue = _queue(tmp_path, None, text)
    exp = queue.experiments[0]
    paths = q.Paths(queue.output_dir)
    calls = []
    monkeypatch.setattr(q, "_stages", _fake_stages(calls))
    q.run_experiment(exp, paths)
    data_root = tmp_path / "input" / "synthetic_whale"
    recorded = json.loads((tmp_path / "output" / "small" / "status.json").read_text())["data"]
    shutil.rmtree(data_root)
    assert q.run_experiment(exp, paths)["state"] == "done" and calls == ["small"]
    assert not data_root.exists()  # a skipped experiment writes nothing, not even its input
    assert [e.name for e in results.finished(queue, paths.output)] == ["small"]
    # Regenerated, the data is the same data (same bytes and, by design, the same mtimes): still current.
    load_dataset(exp.data.name, exp.data.params)
    assert json.loads((tmp_path / "output" / "small" / "status.json").read_text())["data"] == recorded
    assert results.current_data(queue)[results.data_key(exp)].identity.checked() == recorded
    assert [e.name for e in results.finished(queue, paths.output)] == ["small"]


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_edited_data_reruns_what_depends_on_it(tmp_path, capsys):
    """(d) unchanged: skipped; (a) flipped labels: retrained on the same cache; (b) a replaced file and
    (c) an added clip: a new cache holding the new clip, retrained, the clip in oof.csv."""
    from pipeline.cli import main

    root = whale(tmp_path)
    path = str(tmp_path / "queue.yaml")
    _queue(tmp_path, root)
    caches = tmp_path / "output" / "cache" / "features"
    assert main([path]) == 0
    first_cache = sorted(p.name for p in caches.iterdir())
    capsys.readouterr()

    assert main([path]) == 0  # (d)
    assert "small: finished earlier with the same config; skipped" in capsys.readouterr().out

    flip_labels(root, 6)  # (a)
    assert main([path]) == 0
    out = capsys.readouterr().out
    assert "small: starting afresh (data changed since the last run: 6 labels changed)" in out
    assert sorted(p.name for p in caches.iterdir()) == first_cache
    assert "feature cache hit" in (tmp_path / "output" / "small" / "run.log").read_text()
    labels = pd.read_csv(root / "train.csv").set_index("clip_name")["label"]
    oof = pd.read_csv(tmp_path / "output" / "oof.csv").set_index("id")
    assert (oof["label"] == labels.loc[oof.index]).all()
    assert len(list((tmp_path / "output" / "folds").iterdir())) == 2

    rewrite_audio(root / "train" / "train3.aiff")  # (b)
    add_clip(root)  # (c)
    assert main([path]) == 0
    out = capsys.readouterr().out
    assert ("data changed since the last run: 1 audio file changed (train/train3.aiff), "
            "1 clip added (train/train999.aiff)") in out
    new_caches = sorted(p.name for p in caches.iterdir() if p.name not in first_cache)
    assert len(new_caches) == 1
    manifest = json.loads((caches / new_caches[0] / "manifest.json").read_text())
    assert "train999.aiff" in manifest["splits"]["train"]["ids"]
    assert "train999.aiff" in set(pd.read_csv(tmp_path / "output" / "oof.csv")["id"])
    assert "train999.aiff" in set(pd.read_csv(tmp_path / "output" / "small" / "oof.csv")["id"])


@pytest.mark.parametrize("damage", ["truncated_clips", "text_size", "data_not_dict", "timings_not_dict",
                                    "status_fields_edited"])
def test_damaged_data_clips_or_edited_status_never_crash_the_queue(tmp_path, monkeypatch, damage):
    """A cut data_clips.csv or a status.json edited into other types is "not recorded", never a traceback, at
    every place that reads them (run_experiment, finished, write_summary, write_queue_oof, plan)."""
    import pipeline.queue as q

    root = whale(tmp_path)
    queue = _queue(tmp_path, root)
    exp = queue.experiments[0]
    paths = q.Paths(queue.output_dir)
    calls = []
    monkeypatch.setattr(q, "_stages", _fake_stages(calls))
    assert q.run_experiment(exp, paths)["state"] == "done"
    exp_dir = tmp_path / "output" / "small"
    clips = exp_dir / layout.CLIPS
    status_path = exp_dir / "status.json"
    status = json.loads(status_path.read_text())
    if damage == "truncated_clips":
        lines = clips.read_text().splitlines()
        clips.write_text("\n".join([*lines[:-1], ",".join(lines[-1].split(",")[:3]) + ","]) + "\n")  # cut row
    elif damage == "text_size":
        lines = clips.read_text().splitlines()
        cells = lines[1].split(",")
        cells[3] = "big"
        clips.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    elif damage == "data_not_dict":
        status["data"] = "x"
    elif damage == "timings_not_dict":
        status.update(timings=5, state="running")  # an unfinished run on the same data resumes with its timings
    else:
        status.update(wall_seconds="soon", error=["x"], timings={"data": "a", "train": 1.5}, state=7)
    if damage != "truncated_clips" and damage != "text_size":
        status_path.write_text(json.dumps(status))
    if damage != "timings_not_dict":
        flip_labels(root, 3)  # so that the recorded data is compared with the current one
    current = results.current_data(queue)
    assert results.finished(queue, paths.output, current) == []
    summary = q.write_summary(queue, paths, current)
    assert summary.loc[0, "status"] in ("stale", "not run", "running")
    q.write_queue_oof(queue, paths, current)
    q.plan(queue, paths, ["small"], force=False)
    assert q.run_experiment(exp, paths)["state"] == "done" and len(calls) == 2


def test_output_oof_is_removed_when_no_experiment_is_current(tmp_path, monkeypatch):
    import pipeline.queue as q

    root = whale(tmp_path)
    queue = _queue(tmp_path, root)
    paths = q.Paths(queue.output_dir)
    monkeypatch.setattr(q, "_stages", _fake_stages([]))
    q.run_experiment(queue.experiments[0], paths)
    assert q.write_queue_oof(queue, paths) is not None
    table = tmp_path / "output" / "oof.csv"
    assert table.is_file()
    flip_labels(root, 3)
    assert q.write_queue_oof(queue, paths) is None
    assert not table.exists()  # stale predictions and labels are not left for the report to read
    # Likewise when the only current experiment's oof.csv is unreadable.
    q.run_experiment(queue.experiments[0], paths)
    assert q.write_queue_oof(queue, paths) is not None
    (tmp_path / "output" / "small" / "oof.csv").write_text("garbage\n")
    assert q.write_queue_oof(queue, paths) is None
    assert not table.exists()


def test_an_experiment_refused_by_ownership_is_failed_in_the_summary(tmp_path, monkeypatch):
    """A folder of the user's under the experiment's name (appearing after the check): nothing is written into
    it, and the summary says FAILED with the reason instead of "not run"."""
    import pipeline.queue as q

    root = whale(tmp_path)
    queue = _queue(tmp_path, root)
    paths = q.Paths(queue.output_dir)
    monkeypatch.setattr(q, "_stages", _fake_stages([]))
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "small").mkdir()
    (tmp_path / "output" / "small" / "thesis.tex").write_bytes(b"mine\n")
    from pipeline import ownership

    ownership.mark(str(tmp_path / "output"))
    assert q._run_locked(queue, paths, ["small"], force=False, blend_only=False) == 1
    assert sorted(os.listdir(tmp_path / "output" / "small")) == ["thesis.tex"]
    assert (tmp_path / "output" / "small" / "thesis.tex").read_bytes() == b"mine\n"
    row = pd.read_csv(tmp_path / "output" / "summary.csv").iloc[0]
    assert row["status"] == "failed" and "not created by the pipeline" in row["error"]
