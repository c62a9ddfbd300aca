"""The rfcx path: source, synthetic data, crops and box targets, folds, metrics, raw TFRecords, a tiny queue."""

import json
import os
import textwrap

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import label_ranking_average_precision_score

from pipeline import crops, metrics
from pipeline.config import ConfigError, parse_queue
from pipeline.data import load_dataset, schema
from pipeline.data.rfcx import MASKS, TARGETS, boxes_of, frame_defaults, read_kaggle_rfcx
from pipeline.data.synthetic_rfcx import ensure_synthetic_rfcx, species_bands
from pipeline.errors import DataError
from pipeline.folds import make_folds

pytestmark = pytest.mark.usefixtures("no_report")  # the report: tests/test_report.py

HEADER = "recording_id,species_id,songtype_id,t_min,f_min,t_max,f_max\n"


def write_layout(root, tp_rows, fp_rows, train_ids=(), test_ids=()):
    os.makedirs(root / "train", exist_ok=True)
    os.makedirs(root / "test", exist_ok=True)
    (root / "train_tp.csv").write_text(HEADER + "".join(r + "\n" for r in tp_rows))
    (root / "train_fp.csv").write_text(HEADER + "".join(r + "\n" for r in fp_rows))
    for rid in train_ids:
        (root / "train" / f"{rid}.flac").write_bytes(b"")
    for rid in test_ids:
        (root / "test" / f"{rid}.flac").write_bytes(b"")


# ----------------------------------------------------------------------------- source


@pytest.mark.parametrize("unknown", ["mask", "negative"])
def test_kaggle_rfcx_targets_masks_and_boxes(tmp_path, unknown):
    write_layout(tmp_path, ["a,3,1,1.0,100,2.0,200", "a,5,1,0,10,1,20", "b,3,4,4.5,300,5.0,900"],
                 ["a,7,1,3.0,10,4.0,20", "b,5,1,0,1,1,2", "b,3,1,7,1,8,2"], ["a", "b"], ["t1", "t2"])
    ds = read_kaggle_rfcx(str(tmp_path), unknown=unknown)
    assert ds.task == "multilabel" and ds.submission == "rfcx" and ds.targets == TARGETS
    train = ds.train.set_index("id")
    assert list(ds.test["id"]) == ["t1", "t2"]
    assert train.loc["a", ["s3", "s5", "s7"]].tolist() == [1, 1, 0]
    assert train.loc["b", ["s3", "s5", "s7"]].tolist() == [1, 0, 0]
    assert train.loc["a", list(TARGETS)].sum() == 2
    if unknown == "mask":
        # tp -> known positive, fp -> known negative, everything else unknown
        assert train.loc["a", ["mask:s3", "mask:s5", "mask:s7", "mask:s0"]].tolist() == [1, 1, 1, 0]
        assert train.loc["b", ["mask:s3", "mask:s5", "mask:s7"]].tolist() == [1, 1, 0]
    else:
        assert (train[list(MASKS)] == 1).all().all()
    assert (ds.manifest["group"] == ds.manifest["id"]).all()
    boxes = dict(zip(ds.train["id"], boxes_of(ds.train)))
    assert boxes["b"].tolist()[0] == [3, 4.5, 5.0, 300, 900, 1]  # frequency bounds kept
    defaults = dict(zip(ds.train["id"], frame_defaults(ds.train)))
    if unknown == "mask":
        assert defaults["a"][7] == 0 and np.isnan(defaults["a"][3]) and np.isnan(defaults["a"][0])
    else:  # a tp species is unknown outside its boxes; every species without a tp box is 0
        assert np.isnan(defaults["a"][[3, 5]]).all() and (np.delete(defaults["a"], [3, 5]) == 0).all()


def test_kaggle_rfcx_reads_recordings_whose_suffix_is_upper_case(tmp_path):
    """A listed test00001.FLAC was rebuilt as test00001.flac: "missing file", and a readable recording got the
    mean prediction."""
    write_layout(tmp_path, ["a,3,1,1.0,100,2.0,200", "b,3,1,1.0,100,2.0,200"], [], ["a"], ["t1"])
    (tmp_path / "train" / "b.FLAC").write_bytes(b"")
    (tmp_path / "test" / "t2.Flac").write_bytes(b"")
    ds = read_kaggle_rfcx(str(tmp_path))
    assert dict(zip(ds.train["id"], ds.train["path"])) == {"a": str(tmp_path / "train" / "a.flac"),
                                                           "b": str(tmp_path / "train" / "b.FLAC")}
    assert dict(zip(ds.test["id"], ds.test["path"])) == {"t1": str(tmp_path / "test" / "t1.flac"),
                                                         "t2": str(tmp_path / "test" / "t2.Flac")}
    assert all(os.path.exists(p) for p in ds.manifest["path"])


def test_kaggle_rfcx_without_tp_boxes_is_refused_at_the_folds_stage(tmp_path):
    # A header-only train_tp.csv: only known negatives (fp boxes) and unknowns, so every fold's LWLRAP is undefined.
    from pipeline.config import parse_queue
    from pipeline.folds import FoldError, ensure_folds

    ids = [f"r{i}" for i in range(6)]
    write_layout(tmp_path / "rfcx", [], [f"{r},{i},1,0,10,1,20" for i, r in enumerate(ids)], ids, ["t1"])
    exp = parse_queue({"experiments": [{"name": "e", "data": {"name": "kaggle_rfcx", "root": "rfcx"},
                                        "audio": {"sample_rate": 8000, "duration": 4.0}, "features": "mel",
                                        "model": "sed", "loss": "sed", "folds": {"n_splits": 2}}]},
                      source="q.yaml", base_dir=str(tmp_path)).experiments[0]
    ds = read_kaggle_rfcx(str(tmp_path / "rfcx"))
    with pytest.raises(FoldError, match=r"data \(kaggle_rfcx\): the 6 training clips have no positive label"):
        ensure_folds(ds, exp.data, exp.folds, str(tmp_path / "folds"))


@pytest.mark.parametrize("tp_rows, message", [
    (["a,24,1,0,1,1,2"], "species_id must be an integer in 0..23"),
    (["a,x,1,0,1,1,2"], "column 'species_id' needs finite numbers"),
    (["a,1,1,3,1,1,2"], "t_min <= t_max"),
])
def test_kaggle_rfcx_bad_csv_names_file_and_row(tmp_path, tp_rows, message):
    write_layout(tmp_path, tp_rows, [], ["a"])
    with pytest.raises(DataError, match=message) as err:
        read_kaggle_rfcx(str(tmp_path))
    assert "train_tp.csv" in str(err.value) and "row(s) [2]" in str(err.value)


def test_kaggle_rfcx_a_box_in_both_csvs_is_a_true_positive_with_a_warning(tmp_path, caplog):
    """The same box in train_tp.csv and train_fp.csv was accepted in silence, its frames labelled 1 and 0."""
    write_layout(tmp_path, ["a,3,1,1.0,100,2.0,200"], ["a,5,1,0,10,1,20", "a,3,1,1.0,100,2.0,200"], ["a"])
    ds = read_kaggle_rfcx(str(tmp_path))
    assert boxes_of(ds.train)[0].tolist() == [[3, 1.0, 2.0, 100, 200, 1], [5, 0.0, 1.0, 10, 20, 0]]
    assert "1 box(es) of train_fp.csv (row(s) [3]) are also in train_tp.csv" in caplog.text


def test_kaggle_rfcx_a_column_named_twice_is_refused(tmp_path):
    write_layout(tmp_path, ["a,3,1,1.0,100,2.0,200"], [], ["a"])
    (tmp_path / "train_tp.csv").write_text(HEADER.strip() + ",species_id\na,3,1,1.0,100,2.0,200,5\n")
    with pytest.raises(DataError, match=r"train_tp\.csv: column\(s\) \['species_id'\] appear more than once"):
        read_kaggle_rfcx(str(tmp_path))


def test_kaggle_rfcx_missing_csv(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="train_tp.csv not found"):
        read_kaggle_rfcx(str(tmp_path))


def test_schema_errors_name_the_key(tmp_path):
    raw = {"defaults": {"data": {"name": "synthetic_rfcx", "unknwn": "mask", "duration": 1.0},
                        "features": "mel", "model": "sed", "crops": {"aggregate": "median"}},
           "experiments": [{"name": "a"}, {"name": "b", "data": {"name": "kaggle_rfcx", "root": "nowhere"}}]}
    with pytest.raises(ConfigError) as err:
        parse_queue(raw, source="q.yaml", base_dir=str(tmp_path))
    text = str(err.value)
    assert "defaults.data.unknwn: unknown key" in text
    assert "defaults.data.duration: must be >= 2.0" in text
    assert "defaults.crops.aggregate: 'median' (a string) is not allowed" in text
    assert "experiments[1].data.root: folder not found" in text
    assert "input/rfcx" not in text  # the default root is not checked when a root is given


# ----------------------------------------------------------------------------- synthetic data


def test_synthetic_rfcx_layout_and_planted_bands(tmp_path):
    root = tmp_path / "syn"
    ensure_synthetic_rfcx(str(root), n_train=12, n_test=3, duration=4.0, sample_rate=8000, seed=1)
    stamp = os.path.getmtime(root / "synthetic.json")
    ensure_synthetic_rfcx(str(root), n_train=12, n_test=3, duration=4.0, sample_rate=8000, seed=1)
    assert os.path.getmtime(root / "synthetic.json") == stamp  # not rewritten
    ds = load_dataset("synthetic_rfcx", schema.SyntheticRfcxParams(root=str(root), n_train=12, n_test=3,
                                                                 duration=4.0, sample_rate=8000, seed=1))
    assert len(ds.train) == 12 and len(ds.test) == 3
    tp = pd.read_csv(root / "train_tp.csv")
    bands = species_bands(8000)
    # every box lies in its species' band and inside the recording
    for row in tp.itertuples():
        low, high = bands[row.species_id]
        assert low <= row.f_min <= row.f_max <= high
        assert 0 <= row.t_min < row.t_max <= 4.0
    answers = pd.read_csv(root / "test_labels.csv")
    assert len(answers) == 3 and list(answers.columns[1:]) == list(TARGETS)
    import soundfile as sf

    info = sf.info(str(root / "train" / "train00000.flac"))
    assert info.samplerate == 8000 and info.frames == 32000


def test_synthetic_rfcx_60s_48k(tmp_path):
    root = tmp_path / "long"
    ensure_synthetic_rfcx(str(root), n_train=4, n_test=0, duration=60.0, sample_rate=48000, seed=0)
    import soundfile as sf

    assert sf.info(str(root / "train" / "train00003.flac")).frames == 60 * 48000


# ----------------------------------------------------------------------------- crops and box targets


def test_framewise_targets_line_up_with_a_planted_box():
    sr, hop = 8000, 80  # 100 frames per second: frame i is centred at i / 100 s
    boxes = [np.array([[5, 1.205, 1.5, 100, 200, 1], [2, 0.5, 0.8, 10, 20, 0]])]
    table = crops.box_table(boxes, sample_rate=sr, hop_length=hop)
    assert table[0, 0, 1:3].tolist() == [121, 151]  # frames 121..150 have their centre in [1.205, 1.5]
    defaults = np.full(24, np.nan, np.float32)
    defaults[2] = 0.0
    fw = crops.framewise_targets(table[0], 100, 100, defaults).numpy()  # crop covers 1.0-2.0 s
    assert fw.shape == (100, 24)
    assert (fw[21:51, 5] == 1).all() and np.isnan(fw[:21, 5]).all() and np.isnan(fw[51:, 5]).all()
    assert (fw[:, 2] == 0).all()  # known absent species
    clip = crops.clipwise_targets(fw).numpy()
    assert clip[5] == 1 and clip[2] == 0 and np.isnan(clip[0])
    # a crop before the box: the tp species is unknown there, the fp box counts as 0
    early = crops.framewise_targets(table[0], 0, 100, defaults).numpy()
    assert np.isnan(early[:, 5]).all() and (early[50:81, 2] == 0).all()


def _crops_of(table, defaults, *, n_frames, length, p, n, seed=3, framewise=True):
    import tensorflow as tf

    packed = crops.pack_labels(defaults[None], table)
    x = np.arange(n_frames, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    ds = tf.data.Dataset.from_tensors((x, packed[0])).repeat(n)
    return list(crops.crop_examples(ds, n_frames=n_frames, length=length, positive_probability=p, seed=seed,
                                    n_classes=24, framewise=framewise).as_numpy_iterator())


def test_crop_bias_is_honoured_statistically():
    n_frames, length, first, end = 1000, 100, 700, 720
    table = np.array([[[4, first, end, 0, 0, 1]]], np.float32)
    defaults = np.zeros(24, np.float32)
    n, p = 1500, 0.3
    out = _crops_of(table, defaults, n_frames=n_frames, length=length, p=p, n=n)
    starts = np.array([int(x[0, 0]) for x, _ in out])
    contains = (starts <= first) & (starts + length >= end)
    # uniform starts contain the box when start in [end - length, first]
    chance = (first - (end - length) + 1) / (n_frames - length + 1)
    expected = p + (1 - p) * chance
    assert abs(contains.mean() - expected) < 4 * np.sqrt(expected * (1 - expected) / n)
    # targets follow the crop: the clipwise target is 1 exactly when the crop touches the box
    for (x, y), s in zip(out[:200], starts[:200]):
        touches = s < end and s + length > first
        assert y[0, 4] == float(touches)
        assert (y[1:, 4] == ((x[:, 0] >= first) & (x[:, 0] < end))).all()


def test_crops_always_contain_a_box_at_probability_one():
    table = np.array([[[1, 300, 340, 0, 0, 1], [9, 10, 400, 0, 0, 1], [-1, 0, 0, 0, 0, 0]]], np.float32)
    out = _crops_of(table, np.zeros(24, np.float32), n_frames=500, length=50, p=1.0, n=200, framewise=False)
    for x, y in out:
        assert y[1] == 1 or y[9] == 1
        assert y.shape == (24,)
        assert x.shape == (50, 2)


def test_window_pseudo_labels_fill_the_unknown_frames_of_their_segment_only():
    """A student's crop: each unknown frame takes its own window's pseudo-label; boxes and known labels win."""
    import tensorflow as tf

    n_frames, length, c = 100, 30, 24
    segments = (np.arange(n_frames) >= 50).astype(np.int32)  # frames 0-49: window 0, 50-99: window 1
    table = np.array([[[3, 60, 70, 0, 0, 1], [4, 10, 20, 0, 0, 0]]], np.float32)  # tp of 3, fp of 4
    defaults = np.full(c, np.nan, np.float32)
    defaults[7] = 0.0  # known absent
    values = np.full((2, c), np.nan, np.float32)
    values[:, 4] = [0.2, 0.6]
    values[:, 5] = [0.1, 0.9]
    values[:, 7] = [0.8, 0.8]  # never used: species 7 is known
    packed = np.concatenate([crops.pack_labels(defaults[None], table)[0], values.reshape(-1)])
    x = np.arange(n_frames, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    ds = tf.data.Dataset.from_tensors((x, packed)).repeat(60)
    out = list(crops.crop_examples(ds, n_frames=n_frames, length=length, positive_probability=0.0, seed=1,
                                   n_classes=c, framewise=True, segments=segments, n_segments=2).as_numpy_iterator())
    starts = set()
    for x, y in out:
        frame = x[:, 0]
        starts.add(int(frame[0]))
        fw = y[1:]
        np.testing.assert_allclose(fw[:, 5], np.where(frame < 50, 0.1, 0.9))
        in_fp = (frame >= 10) & (frame < 20)
        np.testing.assert_allclose(fw[:, 4], np.where(in_fp, 0.0, np.where(frame < 50, 0.2, 0.6)))
        in_tp = (frame >= 60) & (frame < 70)
        assert (fw[in_tp, 3] == 1).all() and np.isnan(fw[~in_tp, 3]).all()  # no window value for species 3
        assert (fw[:, 7] == 0).all()
        np.testing.assert_allclose(y[0, 5], 0.9 if frame[-1] >= 50 else 0.1)  # the crop's largest window value
    assert min(starts) < 20 and max(starts) > 50  # crops on both sides of the segment boundary


def test_window_starts_cover_the_recording():
    from pipeline.predict import window_starts

    assert window_starts(100, 30, 15) == [0, 15, 30, 45, 60, 70]
    assert window_starts(20, 30, 15) == [0]


# ----------------------------------------------------------------------------- folds


def test_multilabel_folds_grouped_and_every_species_in_every_fold(rng):
    n, k = 150, 4
    y = (rng.random((n, 24)) < rng.uniform(0.02, 0.2, 24)).astype(float)
    y[np.arange(n), rng.integers(0, 24, n)] = 1
    ids = [f"r{i}" for i in range(n)]
    manifest = pd.DataFrame({"id": ids, "path": "x", "split": "train", "group": ids})
    manifest[list(TARGETS)] = y
    from pipeline.data.base import Dataset

    ds = Dataset(manifest=manifest, task="multilabel", targets=TARGETS, submission="rfcx")
    folds = make_folds(ds, n_splits=k, seed=0)
    assert folds["id"].is_unique and set(folds["id"]) == set(ids)
    assert set(folds["fold"]) == set(range(k))
    fold = folds.set_index("id").loc[ids, "fold"].to_numpy()
    for c in range(24):
        if y[:, c].sum() >= k:
            assert {int(f) for f in fold[y[:, c] > 0]} == set(range(k)), f"species {c}"


def test_multilabel_folds_keep_groups_together(rng):
    n = 60
    groups = [f"g{i // 3}" for i in range(n)]
    manifest = pd.DataFrame({"id": [f"c{i}" for i in range(n)], "path": "x", "split": "train", "group": groups})
    manifest[list(TARGETS)] = (rng.random((n, 24)) < 0.2).astype(float)
    from pipeline.data.base import Dataset

    folds = make_folds(Dataset(manifest=manifest, task="multilabel", targets=TARGETS, submission="rfcx"),
                       n_splits=3, seed=1)
    assert (folds.groupby(manifest["group"])["fold"].nunique() == 1).all()


# ----------------------------------------------------------------------------- metrics and losses


def test_lwlrap_equals_weighted_sklearn_lrap(rng):
    for _ in range(20):
        n, c = rng.integers(2, 40), rng.integers(2, 30)
        y = (rng.random((n, c)) < 0.2).astype(float)
        y[0, 0] = 1
        p = np.round(rng.random((n, c)), 1)  # ties
        weights = y.sum(1)
        keep = weights > 0
        expected = label_ranking_average_precision_score(y[keep], p[keep], sample_weight=weights[keep])
        assert metrics.lwlrap(y, p) == pytest.approx(expected)


def test_keras_lwlrap_accumulates_to_the_numpy_value(rng):
    from pipeline.keras_metrics import LWLRAP

    y = (rng.random((64, 24)) < 0.15).astype(np.float32)
    p = rng.random((64, 24)).astype(np.float32)
    y_nan = np.where(rng.random(y.shape) < 0.3, np.nan, y).astype(np.float32)
    metric = LWLRAP()
    for b in range(0, 64, 16):  # batch by batch, unknown labels NaN, packed SED rows
        packed_true = np.concatenate([y_nan[b: b + 16, None], np.zeros((16, 5, 24), np.float32)], 1)
        packed_pred = np.concatenate([p[b: b + 16, None], np.zeros((16, 5, 24), np.float32)], 1)
        metric.update_state(packed_true, packed_pred)
    assert float(metric.result()) == pytest.approx(metrics.lwlrap(np.nan_to_num(y_nan), p), abs=1e-5)


def test_scores_include_lwlrap_and_per_species_ap(rng):
    y = (rng.random((50, 24)) < 0.2).astype(float)
    s = metrics.score("multilabel", y, rng.random((50, 24)))
    assert set(s) == {"auc", "lwlrap", "lwlrap_random", "ap"} and len(s["ap"]) == 24
    assert 0.1 < s["lwlrap_random"] < s["lwlrap"] + 0.2  # a random ranking of random scores


@pytest.mark.parametrize("loss_name", ["sed", "masked_bce"])
def test_masked_entries_have_no_gradient(loss_name):
    import tensorflow as tf

    from pipeline.losses import make_loss

    params = schema.LOSSES[loss_name].params()
    loss = make_loss(loss_name, params, "multilabel")
    rng = np.random.default_rng(0)
    shape = (4, 6, 24) if loss_name == "sed" else (4, 24)
    y = (rng.random(shape) < 0.3).astype(np.float32)
    unknown = rng.random(shape) < 0.5
    y[unknown] = np.nan
    p = tf.Variable(rng.uniform(0.05, 0.95, shape).astype(np.float32))
    with tf.GradientTape() as tape:
        value = loss(tf.constant(y), p)
    grad = tape.gradient(value, p).numpy()
    assert np.isfinite(float(value)) and np.isfinite(grad).all()
    assert (grad[unknown] == 0).all()
    assert (grad[~unknown] != 0).all()


# ----------------------------------------------------------------------------- raw-audio TFRecords


def _example(rid, audio_bytes, label_info=None, is_tp=None):
    import tensorflow as tf

    feature = {"recording_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[rid.encode()])),
               "audio_wav": tf.train.Feature(bytes_list=tf.train.BytesList(value=[audio_bytes]))}
    if label_info is not None:
        feature["label_info"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[label_info.encode()]))
    if is_tp is not None:
        feature["is_tp"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[is_tp]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_raw_audio_tfrecords_are_decoded_in_the_graph(tmp_path):
    import io as pyio

    import soundfile as sf
    import tensorflow as tf

    from pipeline.data.rfcx_records import export_layout, read_raw_audio_records

    pcm = (np.sin(np.arange(32000) / 5.0) * 20000).astype("<i2")  # 4 s at 8 kHz: every box lies inside
    wav = pyio.BytesIO()
    sf.write(wav, pcm, 8000, format="WAV", subtype="PCM_16")
    path = str(tmp_path / "train.tfrec")
    with tf.io.TFRecordWriter(path) as w:
        w.write(_example("r1", pcm.tobytes(), "3,1,0.5,100.0,1.5,900.0;11,2,2.0,10,3.0,20", is_tp=1))
        w.write(_example("r2", wav.getvalue(), "4,1,0.1,1,0.2,2,0; 5,1,1,1,2,2,1", is_tp=1))
    test_path = str(tmp_path / "test.tfrec")
    with tf.io.TFRecordWriter(test_path) as w:
        w.write(_example("t1", pcm.tobytes()))
    out = list(read_raw_audio_records([path]).as_numpy_iterator())
    assert [o["recording_id"] for o in out] == [b"r1", b"r2"]
    for o in out:
        np.testing.assert_allclose(o["audio"], pcm / 32768.0, atol=1e-6)
    np.testing.assert_allclose(out[0]["boxes"], [[3, 0.5, 1.5, 100, 900, 1], [11, 2, 3, 10, 20, 1]])
    np.testing.assert_allclose(out[1]["boxes"][:, [0, 5]], [[4, 0], [5, 1]])  # per-box is_tp wins
    assert out[0]["target"][[3, 11]].tolist() == [1, 1] and out[0]["target"].sum() == 2
    assert out[1]["target"].sum() == 1 and out[1]["target"][5] == 1
    test = list(read_raw_audio_records([test_path]).as_numpy_iterator())
    assert test[0]["boxes"].shape == (0, 6) and test[0]["target"].sum() == 0
    # exported to the kaggle_rfcx layout, the source reads the same labels
    counts = export_layout([path], [test_path], str(tmp_path / "layout"), sample_rate=8000)
    assert counts == {"train": 2, "test": 1, "skipped": 0}
    ds = read_kaggle_rfcx(str(tmp_path / "layout"))
    train = ds.train.set_index("id")
    assert train.loc["r1", ["s3", "s11"]].tolist() == [1, 1] and train.loc["r2", "s4"] == 0
    assert train.loc["r2", "mask:s4"] == 1 and list(ds.test["id"]) == ["t1"]
    with pytest.raises(FileNotFoundError, match="not found"):
        read_raw_audio_records([str(tmp_path / "nope.tfrec")])


# ----------------------------------------------------------------------------- a tiny queue end to end

QUEUE = """
defaults:
  data: {name: synthetic_rfcx, n_train: 24, n_test: 5, duration: 4.0, sample_rate: 8000, seed: 2}
  audio: {sample_rate: 8000, duration: 4.0}
  features: {name: mel, n_fft: 256, hop_length: 128, n_mels: 32}
  cache: {workers: 1}
  folds: {n_splits: 2, seed: 0}
  crops: {crop_seconds: 1.5, positive_probability: 0.8, window_hop_seconds: 1.0}
  train: {epochs: 1, batch_size: 8, monitor: val_lwlrap}
experiments:
  - name: sed_tiny
    model: {name: sed, widths: [4, 8]}
    loss: sed
  - name: inceptiontime_tiny
    model: {name: inceptiontime, filters: 4, depth: 2, bottleneck: 4}
    loss: masked_bce
blend: {method: mean, metric: lwlrap}
"""


@pytest.mark.slow
def test_tiny_rfcx_queue(tmp_path):
    from pipeline.cli import main

    path = tmp_path / "queue.yaml"
    path.write_text(textwrap.dedent(QUEUE))
    assert main([str(path)]) == 0
    out = tmp_path / "output"
    oof = pd.read_csv(out / "oof.csv")
    train_ids = sorted(f[:-5] for f in os.listdir(tmp_path / "input" / "synthetic_rfcx" / "train"))
    assert sorted(oof["id"]) == train_ids
    for name in ("sed_tiny", "inceptiontime_tiny"):
        cols = [f"{name}:s{k}" for k in range(24)]
        assert set(cols) <= set(oof.columns) and oof[cols].notna().all().all()
        scores = json.loads((out / name / "scores.json").read_text())
        assert 0 <= scores["oof"]["lwlrap"] <= 1 and set(scores["folds"]) == {"0", "1"}
        assert "lwlrap" in scores["folds"]["0"] and len(scores["oof"]["ap"]) == 24
        done = json.loads((out / name / "fold0" / "done.json").read_text())
        assert done["metric"] == "lwlrap" and done["score"] == done["lwlrap"]
    test_ids = sorted(f[:-5] for f in os.listdir(tmp_path / "input" / "synthetic_rfcx" / "test"))
    for sub_path in (out / "sed_tiny" / "submission.csv", out / "blend" / "submission.csv"):
        sub = pd.read_csv(sub_path)
        assert list(sub.columns) == ["recording_id"] + [f"s{k}" for k in range(24)]
        assert sorted(sub["recording_id"]) == test_ids
    # the queue never reads the answer keys (they exist but nothing in output names them)
    assert (tmp_path / "input" / "synthetic_rfcx" / "test_labels.csv").exists()
