"""Wrong results without a warning (issue 14, classes 4, 5's --blend-only and 7).

Labels and predictions never share a column name; label values that would
silently change the task are refused with their rows; files outside the audio
folder are refused and one file under several ids is caught; the blend reads
only finite probabilities and never half-writes blend/; queue-level outputs
survive missing or edited files; predictions re-read on resume are the same
bits.
"""

import json
import logging
import os
import textwrap

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipeline import io, ownership, schema
from pipeline.blend.predictions import check_compatible
from pipeline.blend.stage import blend, write_blend
from pipeline.config import ConfigError, load_queue
from pipeline.data import load_dataset
from pipeline.data.base import Dataset
from pipeline.data.rfcx import read_kaggle_rfcx
from pipeline.data.table import read_table
from pipeline.data.whale import read_kaggle_whale
from pipeline.errors import BlendError, DataError
from test_blend import binary_problem, write_finished_queue


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def read(folder, text, **kwargs):
    (folder / "audio").mkdir(exist_ok=True)
    csv = write(folder / "train.csv", text)
    return read_table(csv, str(folder / "audio"), **{"file_column": "file", "label_column": "label", **kwargs})


# ----------------------------------------------------------------------------- reserved column names


@pytest.mark.parametrize("text,kwargs,match", [
    ("file,pred\na.wav,0\nb.wav,1\n", {"label_column": "pred"}, r"train\.csv: label column 'pred'"),
    ("file,label\na.wav,pred\nb.wav,cat\n", {}, r"train\.csv: column 'label' has class name\(s\) \['pred'\]"),
    ("file,label\na.wav,pred:x\nb.wav,cat\n", {}, r"class name\(s\) \['pred:x'\]"),
    ("file,label\na.wav,mask:s0\nb.wav,cat\n", {}, r"class name\(s\) \['mask:s0'\]"),
    ("file,label\na.wav,boxes\nb.wav,cat\n", {}, r"class name\(s\) \['boxes'\]"),
])
def test_targets_never_take_a_prediction_or_manifest_column_name(tmp_path, text, kwargs, match):
    with pytest.raises(DataError, match=match):
        read(tmp_path, text, **kwargs)


def test_dataset_contract_refuses_reserved_target_names():
    manifest = pd.DataFrame({"id": ["a"], "path": ["/a"], "split": ["train"], "pred": [1.0]})
    with pytest.raises(DataError, match=r"target name\(s\) \['pred'\] collide"):
        Dataset(manifest=manifest, task="binary", targets=("pred",), submission="table")


def test_experiment_named_like_a_target_is_refused_before_training():
    from pipeline.layout import queue_column_clash

    assert queue_column_clash("label", ("label",), "binary") == ["label"]
    assert queue_column_clash("a", ("b", "a:b"), "multiclass") == ["a:b"]
    assert queue_column_clash("dog", ("cat", "dog"), "multiclass") == ["dog"]
    assert queue_column_clash("good", ("label",), "binary") == []
    assert queue_column_clash("good", ("cat", "dog"), "multiclass") == []


def test_experiment_named_like_a_target_fails_at_its_data_stage(tmp_path, rng):
    from pipeline.cli import main

    (tmp_path / "audio").mkdir()
    for i in range(6):
        sf.write(str(tmp_path / "audio" / f"c{i}.wav"), rng.standard_normal(400).astype(np.float32) * 0.1, 2000)
    write(tmp_path / "train.csv", "file,dog\n" + "".join(f"c{i}.wav,{i % 2}\n" for i in range(6)))
    (tmp_path / "q.yaml").write_text(textwrap.dedent("""
        defaults:
          data: {name: table, csv: train.csv, audio_dir: audio, label_column: dog}
          features: complexity
          model: inceptiontime
        experiments:
          - name: dog
    """))
    assert main([str(tmp_path / "q.yaml")]) == 1
    status = json.loads((tmp_path / "output" / "dog" / "status.json").read_text())
    assert status["stage"] == "data" and "rename the experiment" in status["error"]
    assert not (tmp_path / "output" / "cache").exists()  # refused before any feature was computed


def test_queue_oof_keeps_the_labels_when_an_experiment_is_named_like_a_target(tmp_path, rng, caplog):
    from pipeline.queue import Paths, write_queue_oof

    path = write_finished_queue(tmp_path, rng, method="mean")
    queue = load_queue(path)
    write_queue_oof(queue, Paths(queue.output_dir))
    assert list(pd.read_csv(tmp_path / "output" / "oof.csv").columns) == ["id", "fold", "label", "good", "weak"]
    text = (tmp_path / "queue.yaml").read_text().replace("- name: weak", "- name: label")
    (tmp_path / "queue.yaml").write_text(text)
    os.rename(tmp_path / "output" / "weak", tmp_path / "output" / "label")
    queue = load_queue(path)
    status_path = tmp_path / "output" / "label" / "status.json"
    status_path.write_text(json.dumps(dict(json.loads(status_path.read_text()),
                                           config_hash=queue.experiments[1].config_hash())))
    labels = pd.read_csv(tmp_path / "output" / "good" / "oof.csv")["label"].to_numpy()
    with caplog.at_level(logging.WARNING):
        write_queue_oof(queue, Paths(queue.output_dir))
    table = pd.read_csv(tmp_path / "output" / "oof.csv")
    assert list(table.columns) == ["id", "fold", "label", "good"]
    np.testing.assert_array_equal(table["label"].to_numpy(), labels)
    assert "label" in caplog.text and "rename the experiment" in caplog.text


# ----------------------------------------------------------------------------- label values


@pytest.mark.parametrize("labels,match", [
    (["0", "1", "NaN", "1"], r"column 'label' needs a label on every training row; row\(s\) \[4\] have no label"),
    (["0", "1", "", "1"], r"row\(s\) \[4\] have no label"),
    (["0", "1", "n/a", "1"], r"row\(s\) \[4\] have no label"),
    (["0", "1", "01", "1", "0"], r"looks binary \(4 of 5 rows are 0 or 1\) but holds \['01'\] on row\(s\) \[4\]"),
    (["0", "1", "2", "1", "0"], r"looks binary .* holds \['2'\] on row\(s\) \[4\]"),
    (["1", "2", "3", "01", "2"], r"spells the number 1 in 2 ways .* \['01'\] on row\(s\) \[5\]"),
    (["a", "b", "b", "1.0", "1"], r"spells the number 1 in 2 ways"),
])
def test_table_refuses_labels_that_would_change_the_task(tmp_path, labels, match):
    rows = "".join(f"f{i}.wav,{lab}\n" for i, lab in enumerate(labels))
    with pytest.raises(DataError, match=match) as info:
        read(tmp_path, "file,label\n" + rows)
    assert "train.csv" in str(info.value)


def test_table_warns_about_likely_class_typos(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        ds = read(tmp_path, "file,label\na.wav,dog\nb.wav,cat\nc.wav,Dog\nd.wav,dog\ne.wav,cat\nf.wav,dgo\n")
    assert ds.targets == ("Dog", "cat", "dgo", "dog")
    assert "differ only in case are separate classes: [['Dog', 'dog']]" in caplog.text
    assert "class(es) ['Dog', 'dgo'] have a single row (row(s) [4, 7])" in caplog.text


def test_table_binary_spellings_and_spaces(tmp_path):
    ds = read(tmp_path, "file,label\na.wav, 1\nb.wav,0.0\nc.wav,1.0 \n")
    assert ds.task == "binary" and list(ds.train["label"]) == [1.0, 0.0, 1.0]


def test_table_declared_classes(tmp_path):
    text = "file,label\na.wav,0\nb.wav,1\nc.wav,2\nd.wav,1\ne.wav,0\n"
    with pytest.raises(DataError, match="looks binary"):
        read(tmp_path, text)
    ds = read(tmp_path, text, classes=("0", "1", "2"))
    assert ds.task == "multiclass" and ds.targets == ("0", "1", "2")
    np.testing.assert_array_equal(ds.train[["0", "1", "2"]].to_numpy().argmax(1), [0, 1, 2, 1, 0])
    with pytest.raises(DataError, match=r"labels outside data.classes \['0', '1'\]: \['2'\] on row\(s\) \[4\]"):
        read(tmp_path, text, classes=("0", "1"))
    ds = read(tmp_path, "file,label\na.wav,0\nb.wav,1\n", classes=("0", "1"))
    assert ds.task == "binary" and ds.targets == ("label",)


def test_a_declared_class_spelled_like_a_missing_value_is_a_label(tmp_path):
    text = "file,label\na.wav,dog\nb.wav,none\nc.wav,NA\nd.wav,dog\n"
    with pytest.raises(DataError, match=r"have no label .*declare the class list"):
        read(tmp_path, text)  # inferred: "none" and "NA" still read as missing, with a hint
    ds = read(tmp_path, text, classes=("dog", "none", "NA"))
    assert ds.task == "multiclass" and ds.targets == ("dog", "none", "NA")
    np.testing.assert_array_equal(ds.train[["dog", "none", "NA"]].to_numpy().argmax(1), [0, 1, 2, 0])
    with pytest.raises(DataError, match=r"row\(s\) \[3\] have no label"):
        read(tmp_path, "file,label\na.wav,dog\nb.wav,\nc.wav,none\n", classes=("dog", "none"))  # empty: missing


def test_data_classes_in_the_queue_file(tmp_path):
    (tmp_path / "audio").mkdir()
    write(tmp_path / "train.csv", "file,label\na.wav,0\n")
    queue = textwrap.dedent("""
        defaults:
          data: {name: table, csv: train.csv, audio_dir: audio, classes: CLASSES}
          features: complexity
          model: inceptiontime
        experiments:
          - name: a
    """)
    (tmp_path / "q.yaml").write_text(queue.replace("CLASSES", "[0, 1, dog]"))
    assert load_queue(str(tmp_path / "q.yaml")).experiments[0].data.params.classes == ("0", "1", "dog")
    for bad, problem in (("[0, 0]", "each class label once"), ("[0]", "expected at least two distinct"),
                         ("[true, 1]", "expected a list of class labels"),
                         ("dog", "expected a list of class labels")):
        (tmp_path / "q.yaml").write_text(queue.replace("CLASSES", bad))
        with pytest.raises(ConfigError, match=r"data\.classes: " + problem):
            load_queue(str(tmp_path / "q.yaml"))


def whale_layout(root, names, labels, rng):
    for name in {n.strip() for n in names}:
        p = root / "train" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(p), (0.1 * rng.standard_normal(400)).astype(np.float32), 2000, format="AIFF", subtype="PCM_16")
    rows = "".join(f"{n},{lab}\n" for n, lab in zip(names, labels))
    write(root / "train.csv", "clip_name,label\n" + rows)
    return str(root)


@pytest.mark.parametrize("label,match", [
    ("01", r"column 'label' must be 0 or 1; found \['01'\] on row\(s\) \[3\]"),
    ("1e0", r"found \['1e0'\] on row\(s\) \[3\]"),
    ("NaN", r"must be 0 or 1; row\(s\) \[3\] have no label"),
])
def test_whale_labels_are_exactly_0_or_1(tmp_path, rng, label, match):
    root = whale_layout(tmp_path / "whale", ["a.aiff", "b.aiff", "c.aiff"], ["0", label, "1"], rng)
    with pytest.raises(DataError, match=match):
        read_kaggle_whale(root)


# ----------------------------------------------------------------------------- paths


@pytest.mark.parametrize("name", ["../secret.wav", "sub/../../secret.wav", "/etc/passwd", "gs://bucket/x.wav", "."])
def test_table_refuses_files_outside_the_audio_folder(tmp_path, name):
    (tmp_path / "secret.wav").write_bytes(b"RIFF")
    with pytest.raises(DataError, match=r"train\.csv: column 'file': row\(s\) \[3\] name files outside"):
        read(tmp_path, f"file,label\na.wav,0\n{name},1\nc.wav,1\n")


def test_table_keeps_paths_inside_the_folder(tmp_path):
    (tmp_path / "audio" / "sub").mkdir(parents=True)
    ds = read(tmp_path, f"file,label\nsub/../a.wav,0\n{tmp_path}/audio/b.wav,1\n")
    assert list(ds.train["path"]) == [str(tmp_path / "audio" / "sub/../a.wav"), str(tmp_path / "audio" / "b.wav")]


def test_whale_and_rfcx_refuse_paths_outside_their_folders(tmp_path, rng):
    root = whale_layout(tmp_path / "whale", ["a.aiff", "../train.csv"], ["0", "1"], rng)
    with pytest.raises(DataError, match=r"column 'clip_name': row\(s\) \[3\] name files outside"):
        read_kaggle_whale(root)
    rfcx = rfcx_layout(tmp_path / "rfcx", "r1,0,1,0.5,100,1.0,400\n../../x,1,1,0.5,100,1.0,400\n")
    with pytest.raises(DataError, match=r"train_tp\.csv: column 'recording_id': row\(s\) \[3\] name files outside"):
        read_kaggle_rfcx(rfcx)


def test_file_names_are_kept_verbatim(tmp_path, caplog):
    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / " lead.wav").write_bytes(b"x")  # a name that really starts with a space
    (audio / "trail.wav").write_bytes(b"y")  # the CSV has a stray space after it
    with caplog.at_level(logging.WARNING):
        ds = read(tmp_path, "file,label\n lead.wav,0\ntrail.wav ,1\n gone.wav,1\nplain.wav,0\n")
    assert list(ds.train["id"]) == [" lead.wav", "trail.wav", " gone.wav", "plain.wav"]
    assert list(ds.train["path"][:2]) == [str(audio / " lead.wav"), str(audio / "trail.wav")]
    assert "row(s) [4]" in caplog.text and "neither that name nor the name without the spaces" in caplog.text


def test_whale_clip_with_a_leading_space_finds_its_file(tmp_path, rng):
    root = whale_layout(tmp_path / "whale", [" a.aiff", "b.aiff"], ["0", "1"], rng)
    ds = read_kaggle_whale(root)
    assert os.path.isfile(ds.train["path"][0]) and ds.train["id"][0] == "a.aiff"
    (tmp_path / "whale" / "train" / "a.aiff").rename(tmp_path / "whale" / "train" / " a.aiff")
    ds = read_kaggle_whale(root)
    assert os.path.isfile(ds.train["path"][0]) and ds.train["id"][0] == " a.aiff"


# ----------------------------------------------------------------------------- one file under several ids


def table_params(tmp_path, rows):
    csv = write(tmp_path / "train.csv", "file,label\n" + rows)
    return schema.TableParams(csv=csv, audio_dir=str(tmp_path / "audio"), file_column="file", label_column="label")


def test_identical_files_with_different_labels_are_named(tmp_path, rng, caplog):
    audio = tmp_path / "audio"
    (audio / "sub").mkdir(parents=True)
    for name in ("a.wav", "b.wav", "c.wav", "d.wav"):
        sf.write(str(audio / name), rng.standard_normal(200).astype(np.float32) * 0.1, 2000)
    (audio / "copy.wav").write_bytes((audio / "a.wav").read_bytes())
    with caplog.at_level(logging.WARNING):
        load_dataset("table", table_params(tmp_path, "a.wav,0\nb.wav,1\nc.wav,0\nd.wav,1\ncopy.wav,1\n"))
    assert "DIFFERENT labels" in caplog.text and "a.wav under ids ['a.wav', 'copy.wav']" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the same path twice
        load_dataset("table", table_params(tmp_path, "a.wav,0\nb.wav,1\nc.wav,0\nsub/../b.wav,0\n"))
    assert "DIFFERENT labels" in caplog.text and "under ids ['b.wav', 'sub/../b.wav']" in caplog.text


def test_identical_files_with_the_same_label_are_a_warning(tmp_path, rng, caplog):
    audio = tmp_path / "audio"
    audio.mkdir()
    for name in ("a.wav", "b.wav"):
        sf.write(str(audio / name), rng.standard_normal(200).astype(np.float32) * 0.1, 2000)
    (audio / "copy.wav").write_bytes((audio / "a.wav").read_bytes())
    (audio / "empty1.wav").write_bytes(b"")  # bad audio, reported by the decoder, not as a duplicate
    (audio / "empty2.wav").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("table", table_params(tmp_path, "a.wav,0\nb.wav,1\ncopy.wav,0\nempty1.wav,0\nempty2.wav,1\n"))
    assert len(ds.train) == 5
    assert "['a.wav', 'copy.wav']" in caplog.text and "empty1" not in caplog.text
    assert "DIFFERENT" not in caplog.text


def test_same_size_files_are_compared_by_their_ends_only(tmp_path, caplog, monkeypatch):
    # Every same-size file was hashed whole on every load: with fixed-length WAVs, the whole dataset.
    audio = tmp_path / "audio"
    audio.mkdir()
    size = 1 << 20
    ends = np.random.default_rng(0).bytes(size)
    (audio / "a.wav").write_bytes(ends)
    (audio / "b.wav").write_bytes(ends[: size // 2] + b"x" + ends[size // 2 + 1:])  # differs in the middle only
    (audio / "c.wav").write_bytes(ends[:-1] + b"y")  # differs in its last byte
    real_pread, read = os.pread, []

    def counting_pread(fd, n, offset):
        read.append(n)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", counting_pread)
    with caplog.at_level(logging.WARNING):
        load_dataset("table", table_params(tmp_path, "a.wav,0\nb.wav,0\nc.wav,1\n"))
    assert "['a.wav', 'b.wav']" in caplog.text and "c.wav" not in caplog.text
    assert "identical in size and in their first and last 64 KB" in caplog.text
    assert sum(read) <= 3 * 2 * (64 << 10)


def test_duplicate_check_never_blocks_on_a_pipe_swapped_in_after_the_stat(tmp_path, caplog, monkeypatch):
    import signal

    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / "a.wav").write_bytes(b"RIFF" + bytes(200))
    os.mkfifo(audio / "p.wav")
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: real_stat(str(audio / "a.wav") if str(p).endswith("p.wav")
                                                                  else p, *a, **k))
    fired = []

    def expire(signum, frame):
        fired.append(True)
        raise TimeoutError("blocked opening a named pipe")

    from pipeline.data.checks import check_duplicate_files

    manifest = pd.DataFrame({"id": ["a", "p"], "path": [str(audio / "a.wav"), str(audio / "p.wav")],
                             "split": ["train", "train"], "label": [0.0, 1.0]})
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, 5)
    try:
        check_duplicate_files(manifest, ["label"])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not fired


# ----------------------------------------------------------------------------- rfcx boxes


def rfcx_layout(root, tp_rows, seconds=2.0, rate=8000):
    header = "recording_id,species_id,songtype_id,t_min,f_min,t_max,f_max\n"
    write(root / "train_tp.csv", header + tp_rows)
    write(root / "train_fp.csv", header)
    (root / "train").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sf.write(str(root / "train" / "r1.flac"), 0.1 * rng.standard_normal(int(seconds * rate)), rate)
    return str(root)


@pytest.mark.parametrize("row,match", [
    ("r1,3,1,1.5,100,2.5,400", r"train_tp\.csv: row\(s\) \[3\] hold boxes ending after their recording"),
    ("r1,3,1,0.5,100,1.0,4500", r"train_tp\.csv: row\(s\) \[3\] hold boxes above .* \[4000\.0\] Hz"),
    ("r1,24,1,0.5,100,1.0,400", r"species_id must be an integer in 0..23; row\(s\) \[3\]"),
    ("r1,3,1,1.2,100,1.0,400", r"t_min <= t_max; row\(s\) \[3\]"),
    ("r1,3,1,nan,100,1.0,400", r"'t_min' needs finite numbers; row\(s\) \[3\]"),
])
def test_rfcx_refuses_boxes_that_cannot_be_in_the_recording(tmp_path, row, match):
    root = rfcx_layout(tmp_path / "rfcx", "r1,0,1,0.5,100,1.0,400\n" + row + "\n")
    with pytest.raises(DataError, match=match):
        read_kaggle_rfcx(root)


def test_rfcx_boxes_inside_the_recording_are_read(tmp_path):
    ds = read_kaggle_rfcx(rfcx_layout(tmp_path / "rfcx", "r1,0,1,0.5,100,2.0,4000\n"))
    assert ds.train["s0"].tolist() == [1.0]


def test_rfcx_box_check_reads_headers_in_python_never_libsndfile(tmp_path, monkeypatch):
    # sf.info decoded every recording's header in the queue's own process: a libsndfile crash
    # would kill the queue. The lengths now come from the header bytes, parsed in Python.
    def no_libsndfile(*args, **kwargs):
        raise AssertionError("libsndfile called in the queue's process")

    root = rfcx_layout(tmp_path / "rfcx", "r1,3,1,1.5,100,2.5,400\n")
    monkeypatch.setattr(sf, "info", no_libsndfile)
    monkeypatch.setattr(sf, "SoundFile", no_libsndfile)
    with pytest.raises(DataError, match=r"row\(s\) \[2\] hold boxes ending after their recording"):
        read_kaggle_rfcx(root)


@pytest.mark.parametrize("fmt,subtype", [("FLAC", "PCM_16"), ("FLAC", "PCM_24"), ("WAV", "PCM_16"),
                                         ("AIFF", "PCM_16"), ("ID3+FLAC", "PCM_16"), ("OGG", "VORBIS")])
def test_rfcx_recording_length_from_the_header_bytes(tmp_path, fmt, subtype):
    from pipeline.data.rfcx import recording_length

    path = tmp_path / "r.flac"
    x = np.full(3 * 44100 + 17, 0.1, np.float32)
    sf.write(str(path), x, 44100, format=fmt.replace("ID3+", ""), subtype=subtype)
    if fmt.startswith("ID3"):  # an ID3v2 tag (10-byte header + 300 bytes) before "fLaC"
        path.write_bytes(b"ID3\x04\x00\x00\x00\x00\x02\x2c" + b"\x00" * 300 + path.read_bytes())
    expected = None if fmt == "OGG" else (len(x), 44100)  # OGG: not parsed, left to the decoder
    assert recording_length(str(path)) == expected


def test_rfcx_named_pipe_among_recordings_does_not_block_loading(tmp_path):
    # sf.info opened a FIFO in train/ and waited forever for a writer.
    import signal

    root = rfcx_layout(tmp_path / "rfcx", "r1,0,1,0.5,100,1.0,400\n")
    os.unlink(os.path.join(root, "train", "r1.flac"))
    os.mkfifo(os.path.join(root, "train", "r1.flac"))

    fired = []

    def expire(signum, frame):  # the reader may swallow the error: remember it fired
        fired.append(True)
        raise TimeoutError("read_kaggle_rfcx blocked on a named pipe")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, 5)
    try:
        ds = read_kaggle_rfcx(root)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not fired
    assert ds.train["id"].tolist() == ["r1"]  # kept: the decoder reports it as not a regular file


# ----------------------------------------------------------------------------- blend inputs


@pytest.mark.parametrize("bad", [1.5, -0.1, np.nan, np.inf])
@pytest.mark.parametrize("where", ["oof", "test"])
def test_blend_refuses_predictions_that_are_not_probabilities(rng, bad, where):
    names, loaded = binary_problem(rng, n=40, n_test=6)
    loaded[1][where].loc[4, "pred"] = bad
    with pytest.raises(BlendError, match=rf"exp1/{where}\.csv column 'pred' line 6 holds {bad}"):
        check_compatible(names, loaded)


def test_blend_refuses_edited_labels_and_columns(rng):
    names, loaded = binary_problem(rng, n=40, n_test=6)
    loaded[0]["oof"]["label"] = loaded[0]["oof"]["label"].astype(object)
    loaded[0]["oof"].loc[2, "label"] = "yes"
    with pytest.raises(BlendError, match=r"exp0/oof\.csv label column 'label' line 4 holds 'yes'"):
        check_compatible(names, loaded)
    names, loaded = binary_problem(rng, n=40, n_test=6)
    loaded[1]["test"] = loaded[1]["test"].rename(columns={"pred": "prediction"})
    with pytest.raises(BlendError, match=r"exp1/test\.csv needs the columns id, pred"):
        check_compatible(names, loaded)


def test_write_blend_never_half_writes_the_folder(tmp_path, rng):
    names, loaded = binary_problem(rng, n=40, n_test=6)
    write_blend(str(tmp_path), blend(names, loaded, "mean"))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    result = blend(names, loaded, "mean")
    result["test"].loc[0, "pred"] = 1.5  # a value that only the submission's own check sees
    with pytest.raises(BlendError, match="submission cannot be written"):
        write_blend(str(tmp_path), result)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# ----------------------------------------------------------------------------- --blend-only on damaged files


def blend_only(path, capsys):
    from pipeline.cli import main

    status = main([path, "--blend-only"])
    return status, capsys.readouterr().out


def test_blend_only_with_nan_in_a_test_csv(tmp_path, rng, capsys):
    path = write_finished_queue(tmp_path, rng, method="mean")
    assert blend_only(path, capsys)[0] == 0
    test_csv = tmp_path / "output" / "weak" / "test.csv"
    test = pd.read_csv(test_csv)
    test.loc[3, "pred"] = np.nan
    test.to_csv(test_csv, index=False)
    status, out = blend_only(path, capsys)
    assert status == 0
    folder = tmp_path / "output" / "blend"
    assert sorted(p.name for p in folder.iterdir() if p.name != ownership.MARKER) == ["error.json"]  # no stale or half-written blend
    error = json.loads((folder / "error.json").read_text())["error"]
    assert "weak/test.csv column 'pred' line 5 holds nan" in error
    assert "blend: refused" in out


def test_blend_only_with_a_deleted_oof_csv(tmp_path, rng, capsys, caplog):
    path = write_finished_queue(tmp_path, rng, method="mean")
    (tmp_path / "output" / "weak" / "oof.csv").unlink()
    with caplog.at_level(logging.WARNING):
        status, out = blend_only(path, capsys)
    assert status == 0
    table = pd.read_csv(tmp_path / "output" / "oof.csv")
    assert "good" in table.columns and "weak" not in table.columns
    assert "weak/oof.csv: missing" in caplog.text
    error = json.loads((tmp_path / "output" / "blend" / "error.json").read_text())["error"]
    assert "weak/oof.csv: missing" in error
    assert len(pd.read_csv(tmp_path / "output" / "summary.csv")) == 2


@pytest.mark.parametrize("file,content", [
    ("scores.json", '{"oof": {"auc": 0.8'),  # truncated
    ("scores.json", '{"metric": "auc"}'),  # edited: keys gone
    ("scores.json", "[1, 2]"),
    ("oof.csv", "id,fold\n"),
    ("oof.csv", ""),
    ("test.csv", "id,pred\nt0.aiff,abc\n"),
    ("status.json", "[]"),
    ("fold0/done.json", "{"),
])
def test_blend_only_survives_damaged_files(tmp_path, rng, capsys, caplog, file, content):
    path = write_finished_queue(tmp_path, rng, method="weights")
    target = tmp_path / "output" / "weak" / file
    target.parent.mkdir(exist_ok=True)
    target.write_text(content)
    with caplog.at_level(logging.WARNING):
        status, out = blend_only(path, capsys)
    assert status == 0
    summary = pd.read_csv(tmp_path / "output" / "summary.csv")
    assert list(summary["experiment"]) == ["good", "weak"]
    folder = tmp_path / "output" / "blend"
    names = sorted(p.name for p in folder.iterdir() if p.name != ownership.MARKER)
    assert names in (["error.json"], ["oof.csv", "scores.json", "submission.csv", "test.csv", "weights.json"])
    if names == ["error.json"]:
        assert f"weak/{file}" in json.loads((folder / "error.json").read_text())["error"]
    elif file != "fold0/done.json":  # a broken done.json only costs the epochs column
        assert "weak" not in json.loads((folder / "scores.json").read_text())["experiments"]


# ----------------------------------------------------------------------------- exact round trip (class 7)


def test_fold_predictions_round_trip_exactly(tmp_path, rng):
    """What a resumed run re-reads equals, bit for bit, what an uninterrupted run keeps in memory."""
    from pipeline.predict import collect_folds

    n = 2000
    preds = rng.random((n, 2)).astype(np.float32).astype(np.float64)  # a model's float32 output, as written
    preds[:5] = [[1e-30, 1 - 1e-7], [0.1, 1 / 3], [np.float32(0.1), 0.5], [5e-324, 1.0], [0.0, 2 ** -24]]
    frame = pd.DataFrame({"id": [f"t{i}" for i in range(n)], "pred:a": preds[:, 0], "pred:b": preds[:, 1]})
    io.write_csv(str(tmp_path / "test.csv"), frame)
    again = io.read_csv(str(tmp_path / "test.csv"), dtype={"id": str})
    assert again[["pred:a", "pred:b"]].to_numpy().tobytes() == preds.tobytes()
    ids = list(frame["id"])
    _, kept = collect_folds([frame.assign(fold=0)], [frame, frame.copy()], ids, ids,
                            ["pred:a", "pred:b"])
    _, resumed = collect_folds([again.assign(fold=0)], [again, frame.copy()], ids, ids, ["pred:a", "pred:b"])
    assert resumed[["pred:a", "pred:b"]].to_numpy().tobytes() == kept[["pred:a", "pred:b"]].to_numpy().tobytes()
