"""Input, feature cache and output on a non-local tf.io.gfile filesystem (TensorFlow's built-in ``ram://``).

``ram://`` is an in-memory filesystem private to this process, so it also
proves that nothing reaches these files through plain ``open`` / ``os`` (which
cannot see them) and that feature workers, which are separate processes, get
the audio bytes from the parent.
"""

import os
import textwrap
import uuid

import numpy as np
import pandas as pd
import pytest

from pipeline import io
from pipeline.data.synthetic import ensure_synthetic_whale


@pytest.fixture
def ram_root():
    import tensorflow as tf

    root = f"ram://pipeline-{uuid.uuid4().hex[:8]}"
    tf.io.gfile.makedirs(root)
    yield root
    tf.io.gfile.rmtree(root)


def upload(local: str, remote: str) -> None:
    import tensorflow as tf

    for folder, _, names in os.walk(local):
        target = remote if folder == local else io.join(remote, os.path.relpath(folder, local))
        tf.io.gfile.makedirs(target)
        for name in names:
            tf.io.gfile.copy(os.path.join(folder, name), io.join(target, name), overwrite=True)


def test_io_helpers_on_ram(ram_root):
    path = io.join(ram_root, "a", "b.json")
    io.write_json(path, {"x": 1})
    assert io.isfile(path) and io.isdir(io.join(ram_root, "a")) and not io.isfile(io.join(ram_root, "a"))
    assert io.read_json(path) == {"x": 1}
    assert io.listdir(io.join(ram_root, "a")) == ["b.json"]  # no temporary file is left behind
    io.write_csv(io.join(ram_root, "t.csv"), pd.DataFrame({"id": ["1", "2"], "p": [0.5, 0.25]}))
    assert io.read_csv(io.join(ram_root, "t.csv"), dtype={"id": str})["p"].tolist() == [0.5, 0.25]
    assert io.glob(io.join(ram_root, "*.csv")) == [io.join(ram_root, "t.csv")]
    with pytest.raises(FileNotFoundError):
        io.read_json(io.join(ram_root, "missing.json"))
    io.rmtree(io.join(ram_root, "a"))
    assert not io.exists(path)


def test_clips_decode_from_ram_like_from_disk(tmp_path, ram_root):
    from pipeline.data.audio import load_clip

    local = tmp_path / "whale"
    ensure_synthetic_whale(str(local), n_train=12, n_test=0, positive_fraction=0.5, seed=1)
    upload(str(local), io.join(ram_root, "whale"))
    for name in ("train1.aiff", "train2.aiff"):
        a = load_clip(str(local / "train" / name), sample_rate=2000, duration=2.0)
        b = load_clip(io.join(ram_root, "whale", "train", name), sample_rate=2000, duration=2.0)
        np.testing.assert_array_equal(a.samples, b.samples)
    missing = load_clip(io.join(ram_root, "whale", "train", "nope.aiff"), sample_rate=2000, duration=2.0)
    assert missing.samples is None and missing.reason == "missing file"


QUEUE = """
defaults:
  data: {{name: kaggle_whale, root: {root}/input/whale}}
  features: {{name: mel, n_fft: 128, hop_length: 64, n_mels: 16}}
  cache: {{workers: 2, chunk_size: 8}}
  folds: {{n_splits: 2, seed: 1}}
  # Mixed precision through the whole pipeline too (saved, reloaded, predicted).
  train: {{epochs: 2, batch_size: 16, precision: mixed_bfloat16}}
experiments:
  - name: cnn
    model: {{name: cnn1d, filters: 4, depth: 2}}
blend: {{method: mean}}
output: {root}/output
"""


@pytest.mark.slow
def test_queue_with_input_cache_and_output_on_ram(tmp_path, ram_root):
    """A whole queue (two feature workers) reads and writes only ram://; the local folder stays empty."""
    from pipeline.cli import main

    local = tmp_path / "whale"
    ensure_synthetic_whale(str(local), n_train=40, n_test=8, positive_fraction=0.5, seed=2)
    upload(str(local), io.join(ram_root, "input", "whale"))
    # A truncated clip in the bucket is skipped with its reason, as on disk.
    io.remove(io.join(ram_root, "input", "whale", "train", "train3.aiff"))
    with io.open_file(io.join(ram_root, "input", "whale", "train", "train3.aiff"), "wb") as f:
        f.write(b"FORM\x00\x00")
    queue_dir = tmp_path / "queue"
    queue_dir.mkdir()
    (queue_dir / "queue.yaml").write_text(textwrap.dedent(QUEUE.format(root=ram_root)))

    assert main([str(queue_dir / "queue.yaml")]) == 0
    assert sorted(os.listdir(queue_dir)) == ["queue.yaml"]  # nothing written beside the queue file

    out = io.join(ram_root, "output")
    manifests = io.glob(io.join(out, "cache", "features", "*", "manifest.json"))
    assert len(manifests) == 1
    manifest = io.read_json(manifests[0])
    assert [s["id"] for s in manifest["skipped"]] == ["train3.aiff"]
    assert manifest["splits"]["train"]["count"] == 39 and manifest["splits"]["test"]["count"] == 8
    cache_dir = os.path.dirname(manifests[0])
    shards = [n for n in io.listdir(cache_dir) if n.endswith(".tfrecord")]
    assert shards and not [n for n in io.listdir(cache_dir) if n.endswith((".partial", ".tmp"))]
    assert io.glob(io.join(out, "folds", "*.csv"))

    exp = io.join(out, "cnn")
    assert io.read_json(io.join(exp, "status.json"))["state"] == "done"
    oof = io.read_csv(io.join(exp, "oof.csv"), dtype={"id": str})
    assert len(oof) == 39 and oof["pred"].between(0, 1).all()
    sub = io.read_csv(io.join(exp, "submission.csv"))
    assert list(sub.columns) == ["clip", "probability"] and len(sub) == 8
    for k in range(2):
        fold = io.join(exp, f"fold{k}")
        assert io.isfile(io.join(fold, "model.keras")) and io.isfile(io.join(fold, "history.csv"))
        assert not io.exists(io.join(fold, "state"))
    with io.open_file(io.join(exp, "run.log"), "r") as f:
        log = f.read()
    assert "strategy default" in log and "devices: CPU" in log and "skipped train3.aiff" in log
    assert "precision mixed_bfloat16; jit_compile False" in log
    for name in ("oof.csv", "summary.csv", "queue.log", "report.html"):
        assert io.isfile(io.join(out, name)), name
    assert io.isfile(io.join(out, "blend", "scores.json"))

    # The model saved on ram:// loads back (Keras reads :// paths through tf.io.gfile).
    import keras

    model = keras.models.load_model(io.join(exp, "fold0", "model.keras"))
    assert model.output.dtype == "float32"

    # A rerun finds everything finished on ram:// and skips it.
    assert main([str(queue_dir / "queue.yaml")]) == 0
    with io.open_file(io.join(out, "queue.log"), "r") as f:
        assert "cnn: finished earlier with the same config; skipped" in f.read()


def test_table_source_and_config_accept_remote_paths(tmp_path, ram_root):
    from pipeline.config import ConfigError, parse_queue
    from pipeline.data import load_dataset

    local = tmp_path / "whale"
    ensure_synthetic_whale(str(local), n_train=10, n_test=0, positive_fraction=0.5, seed=1)
    upload(str(local / "train"), io.join(ram_root, "audio"))
    table = pd.read_csv(local / "train.csv").rename(columns={"clip_name": "file"})
    io.write_csv(io.join(ram_root, "train.csv"), table)
    raw = {
        "defaults": {"features": "mel", "model": "cnn1d"},
        "experiments": [{"name": "a", "data": {"name": "table", "csv": io.join(ram_root, "train.csv"),
                                                "audio_dir": io.join(ram_root, "audio")}}],
    }
    exp = parse_queue(raw, source="q.yaml", base_dir=str(tmp_path)).experiments[0]
    assert exp.data.params.csv == io.join(ram_root, "train.csv")  # not resolved against the queue folder
    ds = load_dataset("table", exp.data.params)
    assert len(ds.train) == 10 and ds.train["path"].iloc[0] == io.join(ram_root, "audio", table["file"][0])

    raw["experiments"][0]["data"] = {"name": "synthetic_whale", "root": io.join(ram_root, "synth")}
    exp = parse_queue(raw, source="q.yaml", base_dir=str(tmp_path)).experiments[0]
    from pipeline.errors import DataError

    with pytest.raises(DataError, match=r"data.root: synthetic_whale generates its clips in a local folder"):
        load_dataset("synthetic_whale", exp.data.params)


def test_local_feature_cache_never_loads_tensorflow(tmp_path):
    """Local paths keep the fast path: no tf.io.gfile, so forked workers and no TensorFlow import."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "queue.yaml").write_text(textwrap.dedent("""
        defaults:
          data: {name: synthetic_whale, n_train: 12, n_test: 0}
          features: {name: mel, n_fft: 128, hop_length: 64, n_mels: 16}
          cache: {workers: 2, chunk_size: 4}
          folds: {n_splits: 4}  # 12 clips x 0.3 = 4 positives: the config is validated before the cache is built
          model: cnn1d
        experiments: [{name: a}]
    """))
    code = textwrap.dedent("""
        import sys
        from pipeline.config import load_queue
        from pipeline.data import load_dataset
        from pipeline.cache.build import ensure_features
        from pipeline.cache.workers import start_method
        exp = load_queue("queue.yaml").experiments[0]
        assert start_method() == "fork"
        cache = ensure_features(load_dataset(exp.data.name, exp.data.params), "out/cache", data=exp.data,
                                audio=exp.audio, features=exp.features, cache=exp.cache, predict=exp.predict,
                                progress=False)
        assert cache.count("train") == 12
        assert "tensorflow" not in sys.modules, "the local feature stage imported TensorFlow"
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=root),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


# A scheme no file system plugin implements (s3:// is one once tensorflow-io is imported, and then reaching an
# unreachable bucket retries for minutes: not a unit test).
@pytest.mark.parametrize("output,words", [
    ("nosuchfs://bucket/run", "cannot use nosuchfs://bucket/run (nosuchfs:// with TensorFlow's file systems here): "
                              "File system scheme 'nosuchfs' not implemented")])
def test_an_output_on_a_file_system_that_cannot_be_used_here_is_refused_naming_it(tmp_path, capsys, output, words):
    """An unknown scheme (or an unreachable bucket) ended in TensorFlow's traceback from the output check."""
    import tensorflow_io  # noqa: F401  (its file systems registered, as in a run that augmented audio before)

    from pipeline.cli import main

    path = tmp_path / "queue.yaml"
    path.write_text(textwrap.dedent(f"""
        defaults:
          data: {{name: synthetic_whale, n_train: 40, n_test: 10, root: {tmp_path / 'data'}}}
          features: mel
          model: logreg
        experiments: [{{name: a}}]
        output: {output}
    """))
    for args in ([str(path)], [str(path), "--dry-run"]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"output: {words}" in err and "Traceback" not in err, err
    assert sorted(os.listdir(tmp_path)) == ["queue.yaml"]


def test_a_file_url_output_is_the_local_folder(tmp_path):
    from pipeline.config import load_queue

    path = tmp_path / "queue.yaml"
    path.write_text("experiments: [{name: a, data: synthetic_whale, features: mel, model: logreg}]\n"
                    f"output: file://{tmp_path / 'out'}\n")
    assert load_queue(str(path)).output_dir == str(tmp_path / "out")
