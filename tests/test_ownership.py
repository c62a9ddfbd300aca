"""The pipeline never deletes, replaces or writes into what it did not create (issue 14, class 1).

Every data-loss test hashes the user's files before and after and checks
they are byte-identical; the refusals happen before anything is written, so
these tests need no training.
"""

import hashlib
import json
import os
import textwrap

import pytest

from pipeline import layout, ownership
from pipeline.cli import main
from pipeline.config import load_queue



def snapshot(root):
    """Every file (sha256 of its bytes) and folder under ``root``, by relative path."""
    out = {}
    for folder, dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        out[rel + "/"] = "dir"
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                out[os.path.join(rel, name)] = hashlib.sha256(f.read()).hexdigest()
    return out


def user_folder(path, files=("a.txt", "sub/b.wav")):
    """A folder of the user's with a few files of distinct content."""
    for i, name in enumerate(files):
        p = path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(f"user file {i} {name}\n".encode() * (i + 1))
    return path


def quick_data(tmp_path):
    """A data block that fails at once if a run ever starts (a header-only train.csv), kept outside ``tmp_path``.

    The refusals must come before any work; should one regress, the test
    fails in seconds instead of generating data and training.
    """
    root = tmp_path.parent / (tmp_path.name + "_kw")
    root.mkdir(exist_ok=True)
    (root / "train.csv").write_text("clip_name,label\n")
    return f"{{name: kaggle_whale, root: {root}}}"


def quick_queue(tmp_path, output) -> str:
    """A one-experiment queue on :func:`quick_data` writing to ``output``."""
    return write(tmp_path, f"""
        defaults:
          data: {quick_data(tmp_path)}
          features: mel
          model: inceptiontime
        experiments: [{{name: a}}]
        output: {output}
    """)


def write(folder, text, name="queue.yaml"):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def refused(capsys, argv, *expected):
    """Run the CLI; it must exit 2 naming every expected fragment on stderr."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    for fragment in expected:
        assert fragment in err, err
    assert "Traceback" not in err
    return err


# ----------------------------------------------------------------------------- the cases


def test_output_equal_to_data_root_with_an_experiment_named_train_is_refused(tmp_path, capsys):
    whale = tmp_path / "whale"
    user_folder(whale, ("train.csv", "train/train1.aiff", "train/train2.aiff", "test/test1.aiff"))
    path = write(tmp_path, f"""
        defaults:
          data: {{name: kaggle_whale, root: whale}}
          features: mel
          model: inceptiontime
        experiments: [{{name: train}}]
        output: whale
    """)
    before = snapshot(tmp_path)
    refused(capsys, [path], "output: ", "is the same folder as experiments[0].data.root",
            "experiments[0].name: ", "whale/train exists and was not created by the pipeline")
    assert snapshot(tmp_path) == before


def test_output_dot_with_a_user_folder_named_like_an_experiment_is_refused(tmp_path, capsys):
    user_folder(tmp_path / "notes")
    path = write(tmp_path, f"""
        defaults:
          data: {quick_data(tmp_path)}
          features: mel
          model: inceptiontime
        experiments: [{{name: notes}}]
        output: .
    """)
    before = snapshot(tmp_path)
    err = refused(capsys, [path], "output: ", "is not empty and was not created by the pipeline", "'notes'",
                  "experiments[0].name: ")
    assert "queue.yaml" in err  # the listing shows what is in the folder
    assert snapshot(tmp_path) == before


def test_an_output_folder_of_the_users_is_refused(tmp_path, capsys):
    user_folder(tmp_path / "results")
    path = write(tmp_path, f"""
        defaults:
          data: {quick_data(tmp_path)}
          features: mel
          model: inceptiontime
        experiments: [{{name: a}}]
        output: results
    """)
    before = snapshot(tmp_path)
    refused(capsys, [path], "output: ", "results exists, is not empty and was not created by the pipeline",
            "'a.txt'")
    refused(capsys, [path, "--dry-run"], "output: ")  # the plan is refused too, still writing nothing
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("source, ext", [("synthetic_whale", "aiff"), ("synthetic_rfcx", "flac")])
def test_a_synthetic_data_root_pointed_at_a_user_folder_is_refused(tmp_path, capsys, source, ext):
    user_folder(tmp_path / "mine", ("train.csv", f"train/train1.{ext}", "notes.txt"))
    path = write(tmp_path, f"""
        defaults:
          data: {{name: {source}, root: mine}}
          features: mel
          model: inceptiontime
          loss: masked_bce
        experiments: [{{name: a}}]
    """)
    before = snapshot(tmp_path)
    refused(capsys, [path], "experiments[0].data.root: ", "is not a synthetic dataset written by pipeline.data." + source[:9])
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("output, data_root, words", [
    ("data/out", "data", "lies inside experiments[0].data.root"),  # output inside the data
    (".", "data", "contains experiments[0].data.root"),  # data inside the output
    ("data", "data", "is the same folder as experiments[0].data.root"),
    ("link", "data", "is the same folder as"),  # the same folder under another name
])
def test_an_output_overlapping_a_data_folder_is_refused(tmp_path, capsys, output, data_root, words):
    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "data" / "train.csv").write_text("clip_name,label\n")
    os.symlink(tmp_path / "data", tmp_path / "link")
    path = write(tmp_path / "data", f"""
        defaults:
          data: {{name: kaggle_whale, root: ../{data_root}}}
          features: mel
          model: inceptiontime
        experiments: [{{name: a}}]
        output: ../{output}
    """, name="q.yaml")
    before = snapshot(tmp_path)
    refused(capsys, [path], "output: ", words)
    assert snapshot(tmp_path) == before


def test_table_paths_are_checked_against_the_output(tmp_path, capsys):
    (tmp_path / "out" / "audio").mkdir(parents=True)
    (tmp_path / "labels.csv").write_text("file,label\n")
    (tmp_path / "out" / "test.csv").write_text("file\n")
    path = write(tmp_path, f"""
        defaults:
          data: {{name: table, csv: labels.csv, audio_dir: out/audio, test_csv: out/test.csv, test_audio_dir: out/audio}}
          features: mel
          model: inceptiontime
        experiments: [{{name: a}}]
        output: out
    """)
    before = snapshot(tmp_path)
    err = refused(capsys, [path], "contains experiments[0].data.audio_dir", "contains experiments[0].data.test_csv",
                  "contains experiments[0].data.test_audio_dir")
    assert "data.csv" not in err  # labels.csv beside the output folder is fine
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("output", ["afile", "afile/sub"])
def test_an_output_naming_a_file_is_refused(tmp_path, capsys, output):
    (tmp_path / "afile").write_text("mine\n")
    path = quick_queue(tmp_path, output)
    before = snapshot(tmp_path)
    refused(capsys, [path], "output: ", "afile", "expected a folder")
    assert snapshot(tmp_path) == before


def test_a_user_folder_inside_the_pipelines_output_is_refused_by_experiment_name(tmp_path, capsys):
    out = tmp_path / "output"
    out.mkdir()
    ownership.mark(str(out))
    user_folder(out / "mine")
    path = write(tmp_path, f"""
        defaults:
          data: {quick_data(tmp_path)}
          features: mel
          model: inceptiontime
        experiments: [{{name: ok}}, {{name: mine}}]
    """)
    before = snapshot(tmp_path)
    err = refused(capsys, [path], "experiments[1].name: ", "mine exists and was not created by the pipeline")
    assert "output: " not in err
    assert snapshot(tmp_path) == before


def test_run_experiment_never_deletes_a_folder_it_did_not_create(tmp_path):
    """Below the CLI checks too: the folder of an experiment whose config changed is deleted only if it is ours."""
    from pipeline.queue import Paths, run_experiment

    path = write(tmp_path, f"""
        defaults:
          data: {quick_data(tmp_path)}
          features: mel
          model: inceptiontime
        experiments: [{{name: train}}]
    """)
    exp = load_queue(path).experiments[0]
    user_folder(tmp_path / "output" / "train")
    (tmp_path / "output" / "train" / "status.json").write_text('{"state": "done", "config_hash": "old"}')
    before = snapshot(tmp_path)
    status = run_experiment(exp, Paths(str(tmp_path / "output")))
    assert status["state"] == "failed" and "not created by the pipeline" in status["error"]
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- outputs of earlier versions


def legacy_output(out, names=("a",)):
    """An output folder as the pipeline wrote it before the marker existed."""
    for name in names:
        d = out / name
        (d / "fold0").mkdir(parents=True)
        (d / "fold0" / "history.csv").write_text("epoch\n1\n")
        (d / "status.json").write_text(json.dumps({"state": "done", "config_hash": "abc"}))
        (d / "oof.csv").write_text("id,fold,label,pred\n")
        (d / "config.yaml").write_text("name: x\n")
    (out / "cache" / "features" / "0123456789abcdef").mkdir(parents=True)
    (out / "cache" / "features" / "0123456789abcdef" / "manifest.json").write_text("{}")
    (out / "cache" / "features" / "0123456789abcdef" / "train-00000.tfrecord").write_bytes(b"x")
    (out / "folds").mkdir()
    (out / "folds" / "fedcba9876543210.csv").write_text("id,fold,label\n")
    (out / "blend").mkdir()
    (out / "blend" / "scores.json").write_text("{}")
    (out / "summary.csv").write_text("experiment,status\n")
    (out / "oof.csv").write_text("id,fold,label,a\n")
    (out / "queue.log").write_text("2025-01-02 03:04:05,678 INFO pipeline: queue q.yaml: 1 experiment(s)\n")


def test_an_output_of_an_earlier_version_is_adopted_and_kept(tmp_path):
    out = tmp_path / "output"
    legacy_output(out, ("a", "b"))
    path = write(tmp_path, f"""
        defaults:
          data: {quick_data(tmp_path)}
          features: mel
          model: inceptiontime
        experiments: [{{name: a}}, {{name: b}}]
    """)
    before = snapshot(tmp_path)
    assert ownership.check_output(load_queue(path)) == []
    adopted = ownership.adopt_output(str(out))
    assert sorted(adopted) == sorted([str(out)] + [str(out / n) for n in ("a", "b", "blend")])
    for folder in (out, out / "a", out / "b", out / "blend"):
        assert ownership.is_owned(str(folder))
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.endswith(layout.MARKER)} == before  # nothing else changed


def test_an_earlier_versions_folder_with_a_user_file_is_not_adopted(tmp_path, capsys):
    out = tmp_path / "output"
    legacy_output(out)
    (out / "a" / "my_notes.txt").write_text("mine\n")
    (out / "thesis").mkdir()
    (out / "thesis" / "draft.tex").write_text("mine\n")
    path = write(tmp_path, f"""
        defaults:
          data: {quick_data(tmp_path)}
          features: mel
          model: inceptiontime
        experiments: [{{name: a}}]
    """)
    before = snapshot(tmp_path)
    refused(capsys, [path], "output: ", "'thesis'", "experiments[0].name: ", "output/a exists")
    with pytest.raises(ownership.OwnershipError):
        ownership.adopt_output(str(out))
    assert snapshot(tmp_path) == before


def _user_out(out, files):
    for name, content in files.items():
        p = out / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)


_USER_BLEND = {"oof.csv": b"id,fold,label,mine\n1,0,1,0.9\n", "blend/submission.csv": b"clip,probability\nx,0.1\n",
               "blend/weights.json": b'{"mine": 1}\n'}


@pytest.mark.parametrize("files", [
    _USER_BLEND,  # queue-level names only: no evidence that the pipeline wrote the folder
    {**_USER_BLEND, "queue.log": b"my own notes\n"},  # a queue.log that is not the pipeline's log
    {**_USER_BLEND, "cache/readme.txt": b"mine\n"},
    {"folds/notes.txt": b"mine\n", "report.html": b"<html>mine</html>"},
    {"report/": None},
], ids=["blend_and_oof", "own_queue_log", "own_cache", "own_folds", "empty_report"])
def test_a_user_folder_of_queue_level_names_is_not_adopted(tmp_path, capsys, files):
    out = tmp_path / "output"
    if "report/" in files:
        (out / "report").mkdir(parents=True)
        (out / "oof.csv").write_bytes(b"id,fold\n")
    else:
        _user_out(out, files)
    path = write(tmp_path, f"""
        defaults:
          data: {quick_data(tmp_path)}
          features: mel
          model: inceptiontime
        experiments: [{{name: a}}]
    """)
    before = snapshot(tmp_path)
    refused(capsys, [path], "output: ", "not created by the pipeline")
    assert not ownership.is_legacy_output(str(out))
    with pytest.raises(ownership.OwnershipError):
        ownership.adopt_output(str(out))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("files", [
    {"blend/my_weights.json": b"mine\n"},
    {"blend/submission.csv": b"mine\n", "blend/notes/x.txt": b"mine\n"},
    {"oof.csv": b"my own table\n"},
    {"summary.csv": b"name,score\n"},
    {"cache/features/0123456789abcdef/thesis.tex": b"mine\n"},
    {"folds/0123456789abcdef.csv": b"name,score\n"},
    {"report.png": b"not a png"},
    {"report/plot.png": b"not a png"},
], ids=lambda f: ",".join(f))
def test_an_earlier_versions_output_with_a_user_entry_of_a_queue_level_name_is_not_adopted(tmp_path, capsys, files):
    out = tmp_path / "output"
    legacy_output(out)
    _user_out(out, files)
    path = write(tmp_path, f"""
        defaults:
          data: {quick_data(tmp_path)}
          features: mel
          model: inceptiontime
        experiments: [{{name: a}}]
    """)
    before = snapshot(tmp_path)
    refused(capsys, [path], "output: ", "not created by the pipeline", repr(next(iter(files)).split("/")[0]))
    with pytest.raises(ownership.OwnershipError):
        ownership.adopt_output(str(out))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name,kind", [("blend", "file"), ("oof.csv", "dir"), ("summary.csv", "dir"),
                                       ("queue.log", "dir"), ("cache", "file"), ("folds", "file"),
                                       ("blend", "foreign")])
def test_queue_level_names_the_pipeline_cannot_write_are_refused_in_its_own_output(tmp_path, capsys, name, kind):
    out = tmp_path / "output"
    ownership.make_owned_dir(str(out))
    if kind == "file":
        (out / name).write_text("mine\n")
    elif kind == "dir":
        (out / name).mkdir()
        (out / name / "x.txt").write_text("mine\n")
    else:
        (out / name).mkdir()
        (out / name / "submission.csv").write_text("mine\n")
        (out / name / "thesis.tex").write_text("mine\n")
    path = write(tmp_path, f"""
        defaults:
          data: {quick_data(tmp_path)}
          features: mel
          model: inceptiontime
        experiments: [{{name: a}}]
    """)
    before = snapshot(tmp_path)
    refused(capsys, [path], f"output: {out / name} ")
    assert snapshot(tmp_path) == before


def test_an_unmarked_blend_folder_of_every_blend_file_is_recognised_and_cleared(tmp_path):
    """An older version's blend/ (no marker) holding every file the blend writes, error.json included, is the
    pipeline's: ownership and the blend take the names from the same list (pipeline.layout)."""
    from pipeline.blend.stage import _clear

    folder = user_folder(tmp_path / "blend", (*layout.BLEND_FILES, layout.BLEND_ERROR))
    assert ownership.is_blend_folder(str(folder))
    _clear(str(folder))
    assert sorted(os.listdir(folder)) == [layout.MARKER]


# ----------------------------------------------------------------------------- the primitives


def test_remove_owned_deletes_only_marked_or_empty_folders(tmp_path):
    mine = user_folder(tmp_path / "mine")
    before = snapshot(mine)
    with pytest.raises(ownership.OwnershipError, match="not created by the pipeline"):
        ownership.remove_owned(str(mine))
    assert snapshot(mine) == before
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ownership.OwnershipError):
        ownership.remove_owned(str(tmp_path / "afile"))
    with pytest.raises(ownership.OwnershipError):
        ownership.make_owned_dir(str(mine))
    assert snapshot(mine) == before

    ours = tmp_path / "ours"
    ownership.make_owned_dir(str(ours))
    (ours / "x.txt").write_text("x")
    ownership.remove_owned(str(ours))
    assert not ours.exists()
    (tmp_path / "empty").mkdir()
    ownership.make_owned_dir(str(tmp_path / "empty"))  # an empty folder holds nothing to lose
    assert ownership.is_owned(str(tmp_path / "empty"))
    ownership.remove_owned(str(tmp_path / "missing"))  # nothing there: fine


def test_ownership_on_a_remote_filesystem(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from pipeline import io

    root = "ram://ownership_test"
    try:
        ownership.make_owned_dir(io.join(root, "ours"))
        io.write_text(io.join(root, "ours", "x.txt"), "x")
        io.write_text(io.join(root, "theirs", "y.txt"), "y")
        with pytest.raises(ownership.OwnershipError):
            ownership.remove_owned(io.join(root, "theirs"))
        assert io.read_bytes(io.join(root, "theirs", "y.txt")) == b"y"
        ownership.remove_owned(io.join(root, "ours"))
        assert not io.exists(io.join(root, "ours", "x.txt"))
    finally:
        if tf.io.gfile.exists(root):
            tf.io.gfile.rmtree(root)


def test_cache_folders_are_recognised_by_their_content(tmp_path):
    from pipeline.cache.build import _only_cache_files

    cache = tmp_path / "abc.building"
    cache.mkdir()
    (cache / "train-00000.partial").write_bytes(b"x")
    (cache / "manifest.json").write_text("{}")
    assert _only_cache_files(str(cache))
    (cache / "thesis.tex").write_text("mine")
    with pytest.raises(ownership.OwnershipError):
        ownership.remove_owned(str(cache), recognise=_only_cache_files)
    assert (cache / "thesis.tex").read_text() == "mine"


def test_blend_never_clears_a_folder_it_did_not_write(tmp_path):
    from pipeline.blend.stage import _clear

    blend = user_folder(tmp_path / "blend", ("scores.json", "my_weights.json"))
    before = snapshot(tmp_path)
    with pytest.raises(ownership.OwnershipError):
        _clear(str(blend))
    assert snapshot(tmp_path) == before
    old = tmp_path / "old_blend"  # an earlier version's blend folder: its own files only
    user_folder(old, ("scores.json", "submission.csv"))
    _clear(str(old))
    assert sorted(os.listdir(old)) == [layout.MARKER]


# ----------------------------------------------------------------------------- synthetic generators


def test_synthetic_generator_never_replaces_a_user_folder(tmp_path):
    from pipeline.errors import DataError
    from pipeline.data.synthetic import ensure_synthetic_whale
    from pipeline.data.synthetic_rfcx import ensure_synthetic_rfcx

    mine = user_folder(tmp_path / "mine")
    # Even a synthetic.json does not make a folder the generator's unless it names the generator.
    (mine / "synthetic.json").write_text('{"params": {}}')
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match="not a synthetic dataset written by"):
        ensure_synthetic_whale(str(mine), n_train=2, n_test=0, positive_fraction=0.5, seed=0)
    with pytest.raises(DataError, match="not a synthetic dataset written by"):
        ensure_synthetic_rfcx(str(mine), n_train=4, n_test=0, duration=2.0, sample_rate=8000)
    (tmp_path / "afile").write_text("mine\n")
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        ensure_synthetic_rfcx(str(tmp_path / "afile"), n_train=4, n_test=0, duration=2.0, sample_rate=8000)
    assert snapshot(tmp_path) == before


def test_a_generated_dataset_with_a_user_file_added_is_not_replaced(tmp_path):
    from pipeline.errors import DataError
    from pipeline.data.synthetic import ensure_synthetic_whale

    root = tmp_path / "syn"
    ensure_synthetic_whale(str(root), n_train=2, n_test=1, positive_fraction=0.5, seed=0)
    assert ownership.is_owned(str(root))
    ensure_synthetic_whale(str(root), n_train=3, n_test=1, positive_fraction=0.5, seed=0)  # ours: replaced
    assert len(os.listdir(root / "train")) == 3
    (root / "train" / "my_recording.aiff").write_bytes(b"mine")
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match="train/my_recording.aiff"):
        ensure_synthetic_whale(str(root), n_train=2, n_test=1, positive_fraction=0.5, seed=0)
    assert snapshot(tmp_path) == before


def test_a_dataset_of_an_earlier_version_without_marker_is_still_replaced(tmp_path):
    from pipeline.data.synthetic import ensure_synthetic_whale

    root = tmp_path / "syn"
    ensure_synthetic_whale(str(root), n_train=2, n_test=1, positive_fraction=0.5, seed=0)
    os.remove(root / layout.MARKER)  # as written before the marker existed
    ensure_synthetic_whale(str(root), n_train=3, n_test=1, positive_fraction=0.5, seed=0)
    assert len(os.listdir(root / "train")) == 3


@pytest.mark.parametrize("output", ['"out\\n"', '"out\\tx"'])
def test_an_output_path_with_a_control_character_is_refused(tmp_path, capsys, output):
    path = quick_queue(tmp_path, output)
    before = snapshot(tmp_path)
    refused(capsys, [path], "output: ", "control character")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("output", ["output/a", "output/a/deeper", "output/blend", "link/new", "output/cache/x"])
def test_an_output_inside_a_folder_the_pipeline_made_is_refused(tmp_path, capsys, output):
    """Another run's output folder, or one of its experiment / blend / cache folders, is not an output folder:
    that run writes its oof.csv, summary.csv, ... by the same names (an experiment folder as output had its
    oof.csv replaced by the queue-level one, and the other run kept reporting it as done)."""
    out = tmp_path / "output"
    for folder in (out, out / "a", out / "blend", out / "cache"):
        ownership.make_owned_dir(str(folder))
    (out / "a" / "oof.csv").write_text("id,fold,pred\nx,0,0.5\n")
    (tmp_path / "link").symlink_to(out)
    path = quick_queue(tmp_path, output)
    before = snapshot(tmp_path)
    for args in ([path], [path, "--dry-run"], [path, "--force"]):
        refused(capsys, args, f"output: {tmp_path / output} lies inside {out}, a folder the pipeline made")
    assert snapshot(tmp_path) == before


def test_exported_predictions_are_not_written_inside_a_folder_the_pipeline_made(tmp_path, capsys):
    from pipeline.exported import main as exported_main

    export = tmp_path / "export"
    export.mkdir()
    (export / "export.json").write_text(json.dumps({"version": 2, "experiments": ["a"], "blend": None,
                                                    "checksums": {"a": "0" * 64}}))
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "song.wav").write_bytes(b"")
    for folder in (tmp_path / "output", tmp_path / "output" / "a"):  # an experiment's folder of another run
        ownership.make_owned_dir(str(folder))
    before = snapshot(tmp_path)
    assert exported_main([str(export), str(tmp_path / "audio"), "--out", str(tmp_path / "output" / "a")]) == 2
    err = capsys.readouterr().err
    assert f"--out: {tmp_path / 'output' / 'a'} lies inside {tmp_path / 'output'}" in err, err
    assert snapshot(tmp_path) == before


def test_a_users_file_inside_an_experiment_folder_stops_its_deletion(tmp_path, capsys):
    """Ownership is per folder, but a user's notebook or notes put into an experiment folder (or one of its fold
    folders) are not the pipeline's: --force (or a config change) fails that experiment, naming them, instead of
    deleting them with the folder."""
    path = write(tmp_path, f"""
        defaults:
          data: {{name: synthetic_whale, n_train: 60, n_test: 10, seed: 0, root: {tmp_path / 'data'}}}
          folds: {{n_splits: 2}}
          features: {{name: mel, n_fft: 256, hop_length: 64, n_mels: 32}}
          model: logreg
        experiments: [{{name: a}}]
        output: {tmp_path / 'out'}
    """)
    assert main([path]) == 0
    exp = tmp_path / "out" / "a"
    (exp / "analysis.ipynb").write_text("{}")
    (exp / "fold0" / "notes.txt").write_text("mine")
    capsys.readouterr()
    before = snapshot(exp)
    assert main([path, "--force"]) == 1
    out = capsys.readouterr().out
    assert f"{exp}: holds 'analysis.ipynb', 'fold0/notes.txt', which the pipeline did not write" in out, out
    assert snapshot(exp) == before
    (exp / "analysis.ipynb").unlink()
    (exp / "fold0" / "notes.txt").unlink()
    assert main([path, "--force"]) == 0
    # A --predict run folder is replaced by the same --predict-name, but not over a file of the user's.
    predict = [path, "--predict", str(tmp_path / "data" / "test"), "--predict-name", "p"]
    assert main(predict) == 0
    (tmp_path / "out" / "predict" / "p" / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(predict) == 2
    assert "p: holds 'notes.txt', which the pipeline did not write" in capsys.readouterr().err
    assert (tmp_path / "out" / "predict" / "p" / "notes.txt").read_text() == "mine"


def test_a_file_that_cannot_be_deleted_is_named_and_the_folder_stays_the_pipelines(tmp_path, monkeypatch):
    folder = tmp_path / "exp"
    ownership.make_owned_dir(str(folder))
    for name in ("a.csv", "b.csv", "z.csv"):
        (folder / name).write_text("x")
    real_remove = os.remove

    def remove(path, *args, **kwargs):
        if str(path).endswith("b.csv"):
            raise PermissionError(1, "Operation not permitted", str(path))
        return real_remove(path, *args, **kwargs)

    monkeypatch.setattr(os, "remove", remove)
    with pytest.raises(ownership.OwnershipError, match=f"could not delete {folder / 'b.csv'}: Operation not permitted"):
        ownership.remove_owned(str(folder))
    assert ownership.is_owned(str(folder)) and (folder / "b.csv").exists()
