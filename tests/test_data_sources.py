"""Data sources: the registry, the kaggle_whale and table readers, submission formats."""

import logging
import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipeline import schema
from pipeline.data import format_submission, load_dataset, submission_frame
from pipeline.data.audio import load_clip
from pipeline.data.base import Dataset
from pipeline.data.table import read_table
from pipeline.data.whale import read_kaggle_whale
from pipeline.errors import DataError
from pipeline.registry import UnknownNameError

SR = 2000


def write_aiff(path, rng, n=4000):
    """A 2 kHz 16-bit AIFF of noise, like the Kaggle clips."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, (0.1 * rng.standard_normal(n)).astype(np.float32), SR, format="AIFF", subtype="PCM_16")


def write_csv(path, text):
    with open(path, "w") as fh:
        fh.write(text)
    return str(path)


# ----------------------------------------------------------------------------- registry


def test_unknown_source_lists_the_choices():
    with pytest.raises(UnknownNameError, match="'kaggle_wale' is not a data source; choose one of: kaggle_rfcx, kaggle_whale"):
        load_dataset("kaggle_wale", schema.KaggleWhaleParams())


def test_wrong_parameter_class_is_a_type_error(tmp_path):
    with pytest.raises(TypeError, match="takes TableParams"):
        load_dataset("table", schema.KaggleWhaleParams(root=str(tmp_path)))


def test_synthetic_source_needs_a_resolved_root():
    with pytest.raises(ValueError, match="root=None"):
        load_dataset("synthetic_whale", schema.SyntheticWhaleParams())


def test_synthetic_source_through_the_registry(tmp_path):
    params = schema.SyntheticWhaleParams(
        root=str(tmp_path / "syn"), n_train=10, n_test=4, positive_fraction=0.3, seed=1
    )
    ds = load_dataset("synthetic_whale", params)
    assert (ds.task, ds.targets, ds.submission) == ("binary", ("label",), "whale")
    assert len(ds.train) == 10 and len(ds.test) == 4
    assert ds.train["label"].sum() == 3


# ----------------------------------------------------------------------------- kaggle_whale


@pytest.fixture
def whale_root(tmp_path, rng):
    """A Kaggle-whale layout with good, 0-byte, truncated, non-audio and missing train clips."""
    root = tmp_path / "whale"
    train = root / "train"
    for name in ("train1.aiff", "train2.aiff", "train3.aiff", "train5.aiff"):
        write_aiff(str(train / name), rng)
    (train / "train4.aiff").write_bytes(b"")
    data = (train / "train5.aiff").read_bytes()
    (train / "train5.aiff").write_bytes(data[: len(data) // 2])
    (train / "train6.aiff").write_text("<html>not audio</html>\n" * 30)
    (train / "extra.aiff").write_bytes(data)  # on disk but not in train.csv: ignored
    write_csv(
        root / "train.csv",
        "clip_name,label\ntrain1.aiff,1\ntrain2.aiff,0\ntrain3.aiff,0\ntrain4.aiff,1\n"
        "train5.aiff,0\ntrain6.aiff,1\ntrain7.aiff,0\n",
    )
    for name in ("test2.aiff", "test10.aiff", "test1.aiff"):
        write_aiff(str(root / "test" / name), rng)
    (root / "test" / "notes.txt").write_text("not a clip")
    return root


def test_whale_manifest(whale_root):
    ds = read_kaggle_whale(str(whale_root))
    assert isinstance(ds, Dataset)
    assert (ds.task, ds.targets, ds.submission) == ("binary", ("label",), "whale")
    train, test = ds.train, ds.test
    assert list(train["id"]) == [f"train{i}.aiff" for i in range(1, 8)]  # csv order, missing file kept
    assert list(train["label"]) == [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert train["label"].dtype == np.float64
    assert list(test["id"]) == ["test1.aiff", "test10.aiff", "test2.aiff"]  # sorted, .aiff only
    assert test["label"].isna().all()
    assert all(os.path.isabs(p) for p in ds.manifest["path"])
    assert train["path"][0] == os.path.join(str(whale_root), "train", "train1.aiff")
    assert test["path"][0] == os.path.join(str(whale_root), "test", "test1.aiff")


def test_whale_bad_clips_are_reported_by_the_decoder(whale_root):
    ds = read_kaggle_whale(str(whale_root))
    reasons = {
        row.id: load_clip(row.path, sample_rate=SR, duration=2.0).reason for row in ds.train.itertuples()
    }
    assert reasons["train1.aiff"] is None
    assert reasons["train4.aiff"] == "empty file (0 bytes)"
    assert reasons["train5.aiff"].startswith("truncated: read ") and reasons["train5.aiff"].endswith(" of 4000 frames")
    assert reasons["train6.aiff"].startswith("unreadable: ")
    assert reasons["train7.aiff"] == "missing file"


def test_whale_test_clips_that_cannot_be_read_are_listed_and_skipped_by_the_decoder(whale_root, caplog):
    """The test set is test/'s listing: a dangling link or a folder named like a clip stays in it (and so gets a
    submission row), and the decoder skips it with its reason; it was left out silently."""
    (whale_root / "test" / "test3.aiff").symlink_to(whale_root / "nowhere.aiff")
    (whale_root / "test" / "test4.aiff").mkdir()
    (whale_root / "test" / "test5.wav").write_bytes(b"RIFF")
    with caplog.at_level("WARNING"):
        test = read_kaggle_whale(str(whale_root)).test
    assert list(test["id"]) == ["test1.aiff", "test10.aiff", "test2.aiff", "test3.aiff", "test4.aiff"]
    # Other files are not clips of this layout, but a user who put them there hears of it.
    assert "test/ holds 2 entries that are not .aiff/.aif files" in caplog.text and "'test5.wav'" in caplog.text
    reasons = [load_clip(p, sample_rate=SR, duration=2.0).reason for p in test["path"]]
    assert reasons[:3] == [None, None, None]
    assert reasons[3] == "missing file" and reasons[4] == "unreadable: is a directory", reasons


def test_whale_through_the_registry(whale_root):
    ds = load_dataset("kaggle_whale", schema.KaggleWhaleParams(root=str(whale_root)))
    assert len(ds.train) == 7 and len(ds.test) == 3


def test_whale_without_test_folder_warns(whale_root, caplog):
    for f in (whale_root / "test").iterdir():
        f.unlink()
    (whale_root / "test").rmdir()
    with caplog.at_level(logging.WARNING, logger="pipeline.data.whale"):
        ds = read_kaggle_whale(str(whale_root))
    assert len(ds.test) == 0 and len(ds.train) == 7
    assert "no test/ folder" in caplog.text


@pytest.mark.parametrize(
    "csv_text,match",
    [
        (None, r"train\.csv: train\.csv not found"),
        ("", "train.csv: file is empty"),
        ("clip,label\ntrain1.aiff,1\n", r"train\.csv: missing column\(s\) \['clip_name'\]"),
        ("clip_name,target\ntrain1.aiff,1\n", r"train\.csv: missing column\(s\) \['label'\]"),
        ("clip_name,label\n", "has a header but no rows"),
        (
            "clip_name,label\ntrain1.aiff,1\ntrain2.aiff,2\n",
            r"column 'label' must be 0 or 1; found \['2'\] on row\(s\) \[3\]",
        ),
        ("clip_name,label\ntrain1.aiff,yes\n", r"must be 0 or 1; found \['yes'\]"),
        ("clip_name,label\ntrain1.aiff,\n", "must be 0 or 1"),
        ("clip_name,label\ntrain1.aiff,1\ntrain1.aiff,0\n", r"'clip_name' has duplicates: \['train1.aiff'\]"),
        # The second 'label' was renamed label.1 by pandas and ignored without a word.
        ("clip_name,label,label\ntrain1.aiff,0,1\n", r"column\(s\) \['label'\] appear more than once in the header"),
    ],
)
def test_whale_train_csv_errors_name_the_file(whale_root, csv_text, match):
    csv_path = whale_root / "train.csv"
    if csv_text is None:
        csv_path.unlink()
    else:
        csv_path.write_text(csv_text)
    with pytest.raises(DataError, match=match) as info:
        read_kaggle_whale(str(whale_root))
    assert str(whale_root) in str(info.value)


def test_whale_float_labels_are_accepted(whale_root):
    (whale_root / "train.csv").write_text("clip_name,label\ntrain1.aiff,1.0\ntrain2.aiff,0.0\n")
    assert list(read_kaggle_whale(str(whale_root)).train["label"]) == [1.0, 0.0]


def test_whale_missing_train_folder(whale_root):
    (whale_root / "train").rename(whale_root / "training")
    with pytest.raises(DataError, match=r"whale/train: train/ folder not found"):
        read_kaggle_whale(str(whale_root))


# ----------------------------------------------------------------------------- table


@pytest.fixture
def table_dir(tmp_path):
    """A folder for CSVs and an ``audio/`` folder (the readers never open the audio)."""
    (tmp_path / "audio").mkdir()
    return tmp_path


def read(table_dir, text, **kwargs):
    csv = write_csv(table_dir / "train.csv", text)
    kwargs = {"file_column": "file", "label_column": "label", **kwargs}
    return read_table(csv, str(table_dir / "audio"), **kwargs)


@pytest.mark.parametrize("labels", [("0", "1", "1"), ("0.0", "1.0", "1"), ('"0"', '"1"', '"1"')])
def test_table_binary(table_dir, labels):
    rows = "".join(f"{f},{lab}\n" for f, lab in zip(("a.wav", "b.wav", "c.wav"), labels))
    ds = read(table_dir, "file,label\n" + rows)
    assert (ds.task, ds.targets, ds.submission) == ("binary", ("label",), "table")
    assert list(ds.train["label"]) == [0.0, 1.0, 1.0]
    assert list(ds.train["id"]) == ["a.wav", "b.wav", "c.wav"]
    assert ds.train["path"][0] == str(table_dir / "audio" / "a.wav")
    assert len(ds.test) == 0 and not ds.has_groups


def test_table_multiclass_one_hot_sorted(table_dir):
    ds = read(table_dir, "file,label,notes\na.wav,dog,x\nb.wav,cat,y\nc.wav,bird,z\nd.wav,dog,w\n")
    assert ds.task == "multiclass"
    assert ds.targets == ("bird", "cat", "dog")
    np.testing.assert_array_equal(
        ds.train[list(ds.targets)].to_numpy(), [[0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 1]]
    )
    assert all(ds.train[t].dtype == np.float64 for t in ds.targets)
    assert "notes" not in ds.manifest.columns


def test_table_numeric_classes_beyond_binary_are_multiclass_strings(table_dir):
    ds = read(table_dir, "file,label\na.wav,0\nb.wav,2\nc.wav,10\n")
    assert ds.task == "multiclass" and ds.targets == ("0", "10", "2")


def test_table_groups_are_strings(table_dir):
    ds = read(table_dir, "file,label,site\na.wav,0,7\nb.wav,1,07\nc.wav,1,7\n", group_column="site")
    assert ds.has_groups
    assert list(ds.train["group"]) == ["7", "07", "7"]


def test_table_test_set(table_dir):
    (table_dir / "test_audio").mkdir()
    test_csv = write_csv(table_dir / "test.csv", "file\nt1.wav\nt2.wav\n")
    test_dir = str(table_dir / "test_audio")
    ds = read(table_dir, "file,label\na.wav,cat\nb.wav,dog\n", test_csv=test_csv, test_audio_dir=test_dir)
    assert list(ds.test["id"]) == ["t1.wav", "t2.wav"]
    assert ds.test[list(ds.targets)].isna().all().all()
    assert ds.test["path"][1] == str(table_dir / "test_audio" / "t2.wav")
    # test_audio_dir defaults to audio_dir
    ds = read(table_dir, "file,label\na.wav,0\nb.wav,1\n", test_csv=test_csv)
    assert ds.test["path"][0] == str(table_dir / "audio" / "t1.wav")


def test_table_test_set_with_groups(table_dir):
    test_csv = write_csv(table_dir / "test.csv", "file\nt1.wav\n")
    ds = read(table_dir, "file,label,site\na.wav,0,x\nb.wav,1,y\n", group_column="site", test_csv=test_csv)
    assert list(ds.manifest["group"]) == ["x", "y", ""]


@pytest.mark.parametrize(
    "text,kwargs,match",
    [
        ("", {}, r"train\.csv: csv is empty"),
        ("file,label\n", {}, r"train\.csv: csv is empty \(a header but no rows\)"),
        ("path,label\na.wav,0\n", {}, r"train\.csv: no column 'file'"),
        ("file,target\na.wav,0\n", {}, r"train\.csv: no column 'label'"),
        ("file,label\na.wav,0\nb.wav,1\n", {"group_column": "site"}, r"train\.csv: no column 'site'"),
        ("file,label,file\na.wav,0,b.wav\n", {}, r"train\.csv: column\(s\) \['file'\] appear more than once"),
        ("file,label\na.wav,0\na.wav,1\n", {}, r"train\.csv: column 'file' has duplicated ids: \['a.wav'\]"),
        ("file,label\na.wav,0\n,1\n", {}, r"train\.csv: column 'file' is empty on row\(s\) \[3\]"),
        ("file,label\na.wav,dog\nb.wav,dog\n", {}, r"train\.csv: column 'label' has a single class"),
        ("file,split\na.wav,0\nb.wav,1\n", {"label_column": "split"}, r"train\.csv: label column 'split' would become"),
        ("file,label\na.wav,fold\nb.wav,id\n", {}, r"train\.csv: column 'label' has class name\(s\) \['fold', 'id'\]"),
        ("file,label\na.wav,group\nb.wav,cat\n", {}, r"class name\(s\) \['group'\]"),
    ],
)
def test_table_errors_name_file_and_column(table_dir, text, kwargs, match):
    with pytest.raises(DataError, match=match):
        read(table_dir, text, **kwargs)


def test_table_test_csv_errors(table_dir):
    train = "file,label\na.wav,0\nb.wav,1\n"
    test_csv = write_csv(table_dir / "test.csv", "name\nt1.wav\n")
    with pytest.raises(DataError, match=r"test\.csv: no column 'file'"):
        read(table_dir, train, test_csv=test_csv)
    write_csv(table_dir / "test.csv", "file\nt1.wav\nt1.wav\n")
    with pytest.raises(DataError, match=r"test\.csv: column 'file' has duplicated ids"):
        read(table_dir, train, test_csv=test_csv)
    write_csv(table_dir / "test.csv", "file\nb.wav\n")
    with pytest.raises(DataError, match=r"test\.csv: column 'file' repeats ids of .*train\.csv: \['b.wav'\]"):
        read(table_dir, train, test_csv=test_csv)


def test_table_missing_files_and_folders(table_dir):
    with pytest.raises(DataError, match=r"nope\.csv: csv not found"):
        read_table(str(table_dir / "nope.csv"), str(table_dir / "audio"), "file", "label")
    csv = write_csv(table_dir / "train.csv", "file,label\na.wav,0\nb.wav,1\n")
    with pytest.raises(DataError, match="elsewhere: audio_dir not found"):
        read_table(csv, str(table_dir / "elsewhere"), "file", "label")


def test_table_through_the_registry(table_dir):
    csv = write_csv(table_dir / "train.csv", "clip,y\na.wav,0\nb.wav,1\n")
    params = schema.TableParams(csv=csv, audio_dir=str(table_dir / "audio"), file_column="clip", label_column="y")
    ds = load_dataset("table", params)
    assert ds.targets == ("y",) and list(ds.train["id"]) == ["a.wav", "b.wav"]


# ----------------------------------------------------------------------------- submissions


def dataset_with_test(submission, targets, test_ids=("t1", "t2", "t3")):
    rows = [{"id": i, "path": f"/x/{i}", "split": "test", **{t: np.nan for t in targets}} for i in test_ids]
    rows.append({"id": "a", "path": "/x/a", "split": "train", **{t: 0.0 for t in targets}})
    task = "binary" if len(targets) == 1 else "multiclass"
    return Dataset(manifest=pd.DataFrame(rows), task=task, targets=tuple(targets), submission=submission)


def test_whale_submission_rows_follow_the_test_manifest_whatever_the_prediction_order():
    ds = dataset_with_test("whale", ["label"])
    frame = submission_frame(ds, ["t2", "t1", "t3"], np.array([[0.2], [0.9], [0.5]]))
    assert list(frame.columns) == ["clip", "probability"]
    assert list(frame["clip"]) == ["t1", "t2", "t3"]
    assert list(frame["probability"]) == [0.9, 0.2, 0.5]


def test_table_submission():
    ds = dataset_with_test("table", ["bird", "cat"])
    frame = submission_frame(ds, ["t1", "t2", "t3"], np.full((3, 2), 0.5))
    assert list(frame.columns) == ["id", "bird", "cat"]


def test_rfcx_submission_columns():
    ds = dataset_with_test("rfcx", [f"species{k}" for k in range(24)])
    frame = submission_frame(ds, ["t1", "t2", "t3"], np.zeros((3, 24)))
    assert list(frame.columns) == ["recording_id"] + [f"s{k}" for k in range(24)]


@pytest.mark.parametrize("submission, targets", [("whale", ["label"]), ("table", ["bird", "cat"]),
                                                 ("rfcx", [f"species{k}" for k in range(3)])])
def test_a_skipped_test_clip_gets_the_mean_prediction_at_its_place(caplog, submission, targets):
    """One row per test clip in the manifest's order (test.csv, the test listing): the skipped clip's row at
    its own place, not appended at the end."""
    ds = dataset_with_test(submission, targets, test_ids=("t1", "t2", "t3", "t4"))
    given = np.array([[0.2, 0.1, 0.3], [0.6, 0.5, 0.7], [0.4, 0.3, 0.2]])[:, :len(targets)]
    with caplog.at_level(logging.WARNING, logger="pipeline.data"):
        frame = submission_frame(ds, ["t3", "t1", "t4"], given)
    assert list(frame.iloc[:, 0]) == ["t1", "t2", "t3", "t4"]
    values = frame.iloc[:, 1:].to_numpy()
    np.testing.assert_allclose(values[[0, 2, 3]], given[[1, 0, 2]])
    np.testing.assert_allclose(values[1], given.mean(axis=0))
    assert "1 of 4 test clips have no prediction" in caplog.text


def test_every_test_clip_skipped_gives_every_row_the_mean_oof_prediction(caplog):
    ds = dataset_with_test("table", ["bird", "cat"])
    with caplog.at_level(logging.WARNING, logger="pipeline.data"):
        frame = submission_frame(ds, [], np.zeros((0, 2)), oof_mean=np.array([0.25, 0.75]))
    assert list(frame["id"]) == ["t1", "t2", "t3"]
    np.testing.assert_allclose(frame[["bird", "cat"]].to_numpy(), [[0.25, 0.75]] * 3)
    assert "none of the 3 test clips has a prediction" in caplog.text
    assert "mean OOF prediction [0.25, 0.75]" in caplog.text


@pytest.mark.parametrize(
    "ids,predictions,match",
    [
        (["t1", "t2", "t3"], np.zeros((3, 2)), "predictions must have shape"),
        (["t1", "t2", "t3"], np.array([0.1, 1.2, 0.3]), r"probabilities in \[0, 1\]"),
        (["t1", "t2", "t3"], np.array([0.1, np.nan, 0.3]), r"probabilities in \[0, 1\]"),
        (["t1", "t1", "t3"], np.array([0.1, 0.2, 0.3]), r"ids must be unique. Received duplicates: \['t1'\]"),
        (["t1", "t2", "a"], np.array([0.1, 0.2, 0.3]), r"must be test ids of the dataset. Received 1 others"),
        ([], np.zeros((0, 1)), "no predictions for any of the 3 test clips"),
    ],
)
def test_submission_errors(ids, predictions, match):
    with pytest.raises(ValueError, match=match):
        submission_frame(dataset_with_test("whale", ["label"]), ids, predictions)


def test_format_submission_without_a_dataset():
    frame = format_submission("table", ("cat", "dog"), ["x", "y"], np.array([[0.1, 0.9], [0.4, 0.6]]))
    assert list(frame.columns) == ["id", "cat", "dog"]
    with pytest.raises(ValueError, match="whale format has one probability column"):
        format_submission("whale", ("cat", "dog"), ["x"], np.array([[0.1, 0.9]]))
    with pytest.raises(ValueError, match="submission must be one of"):
        format_submission("csv", ("label",), ["x"], np.array([0.1]))
