"""tf.distribute strategies, mixed precision and XLA (pipeline/distribute.py) on CPU.

Strategies that need a device layout (2 logical CPUs) or a cluster (TF_CONFIG)
run in subprocesses: TensorFlow fixes both when it first initialises.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from pipeline.config import ConfigError, parse_queue

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str, *, env=None, timeout=240, cwd=None):
    full_env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=full_env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=240):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"subprocess timed out:\n{out[-4000:]}")
    assert proc.returncode == 0, out[-4000:]
    return out


# ----------------------------------------------------------------------------- configuration


def queue_with_train(train):
    raw = {
        "defaults": {"data": {"name": "synthetic_whale", "n_train": 20}, "features": "mel", "model": "cnn1d"},
        "experiments": [{"name": "a", "train": train}],
    }
    return parse_queue(raw, source="q.yaml", base_dir="/tmp")


def test_new_train_keys_default_to_auto():
    exp = queue_with_train({}).experiments[0]
    assert (exp.train.strategy, exp.train.precision, exp.train.jit_compile) == ("auto", "auto", "auto")
    exp = queue_with_train({"strategy": "mirrored", "precision": "mixed_bfloat16", "jit_compile": True}).experiments[0]
    assert (exp.train.strategy, exp.train.precision, exp.train.jit_compile) == ("mirrored", "mixed_bfloat16", True)


@pytest.mark.parametrize("key, value, expected", [
    ("strategy", "mirorred", "experiments[0].train.strategy: 'mirorred' (a string) is not allowed; choose one of: "
                             "auto, default, mirrored, multiworker, tpu"),
    ("precision", "float16", "experiments[0].train.precision: 'float16' (a string) is not allowed; choose one of: "
                             "auto, float32, mixed_float16, mixed_bfloat16"),
    ("jit_compile", 1, "experiments[0].train.jit_compile: 1 is not allowed; choose one of: auto, true, false"),
    ("jit_compile", "yes", "experiments[0].train.jit_compile: 'yes' (a string) is not allowed; choose one of: "
                           "auto, true, false"),
])
def test_bad_values_name_the_key(key, value, expected):
    with pytest.raises(ConfigError) as err:
        queue_with_train({key: value})
    assert err.value.problems == [expected]


def test_schema_stays_importable_without_tensorflow():
    code = """
        import sys
        import pipeline.config, pipeline.schema, pipeline.distribute
        assert "tensorflow" not in sys.modules, "importing the schema loaded TensorFlow"
    """
    finish(run_python(code), timeout=60)


# ----------------------------------------------------------------------------- pure helpers


def test_chief_is_the_chief_task_or_worker_zero(monkeypatch):
    from pipeline.distribute import is_chief

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert is_chief()
    cluster = {"worker": ["a:1", "b:2"]}
    for index, chief in ((0, True), (1, False)):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        assert is_chief() is chief
    with_chief = {"chief": ["c:3"], "worker": ["a:1"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}}))
    assert not is_chief()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": with_chief, "task": {"type": "chief", "index": 0}}))
    assert is_chief()


def test_shard_policy_is_file_only_with_a_file_per_worker():
    import tensorflow as tf

    from pipeline.distribute import shard_policy

    policy = tf.data.experimental.AutoShardPolicy
    assert shard_policy(8, 2) == policy.FILE
    assert shard_policy(2, 2) == policy.FILE
    assert shard_policy(1, 2) == policy.DATA
    assert shard_policy(8, 1) == policy.DATA


def test_multiworker_without_tf_config_is_a_clear_error(monkeypatch):
    from pipeline.distribute import DistributeError, make_strategy

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(DistributeError, match=r"train.strategy: 'multiworker' needs the TF_CONFIG"):
        make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(DistributeError, match=r"TF_CONFIG is not valid"):
        make_strategy("multiworker")


def test_tpu_without_a_tpu_is_a_clear_error(monkeypatch):
    from pipeline.distribute import DistributeError, make_strategy

    for var in ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(DistributeError, match=r"train.strategy: 'tpu' was requested but"):
        make_strategy("tpu")


def test_auto_on_this_cpu_is_default_float32_without_xla():
    import keras
    import tensorflow as tf

    from pipeline.distribute import experiment_runtime
    from pipeline.schema import TrainSettings

    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        pytest.skip("this machine has an accelerator; the test checks the CPU defaults")
    with experiment_runtime(TrainSettings()) as rt:
        assert (rt.kind, rt.precision, rt.jit_compile, rt.replicas) == ("default", "float32", False, 1)
        assert rt.global_batch(64) == 64
        assert "CPU" in rt.devices


# ----------------------------------------------------------------------------- mixed precision and XLA


def tiny_data(rng, n=32, shape=(16, 8)):
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    y = (x[:, :, 0].mean(axis=1, keepdims=True) > 0).astype(np.float32)
    return x, y


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("jit", [False, True])
def test_mixed_precision_and_xla_train_on_cpu_with_float32_outputs(precision, jit, rng):
    """Both policies and XLA train a small model on CPU; predictions stay float32; the policy is restored."""
    import keras
    import tensorflow as tf

    from pipeline.distribute import experiment_runtime
    from pipeline.models.build import build_model
    from pipeline.schema import CNN1DParams, InceptionTimeParams, TrainSettings

    from tensorflow.python.framework import config as tf_config

    x, y = tiny_data(rng)
    before = keras.config.dtype_policy().name
    # As in a queue run: op determinism on, which XLA cannot honour for max pooling's gradient.
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(0)
    settings = TrainSettings(strategy="default", precision=precision, jit_compile=jit, batch_size=8)
    with experiment_runtime(settings) as rt:
        assert keras.config.dtype_policy().name == precision
        assert tf_config.is_op_determinism_enabled() is (not jit)
        with rt.strategy.scope():
            model = build_model("inceptiontime", InceptionTimeParams(filters=4, depth=1, bottleneck=4),
                                input_shape=x.shape[1:], n_outputs=1, task="binary")
            model.compile(optimizer="adam", loss="binary_crossentropy", jit_compile=rt.jit_compile)
        assert model.layers[1].compute_dtype == precision.split("_")[1]  # the body runs in 16 bits
        hist = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        pred = model.predict_on_batch(x[:5])
    assert keras.config.dtype_policy().name == before
    assert tf_config.is_op_determinism_enabled()  # restored after the experiment
    assert np.isfinite(hist.history["loss"][0])
    assert np.asarray(pred).dtype == np.float32 and pred.shape == (5, 1)
    assert model.output.dtype == "float32"
    assert ((0 <= pred) & (pred <= 1)).all()


def test_policy_is_restored_when_the_experiment_fails():
    import keras

    from pipeline.distribute import experiment_runtime
    from pipeline.schema import TrainSettings

    before = keras.config.dtype_policy().name
    with pytest.raises(RuntimeError, match="boom"):
        with experiment_runtime(TrainSettings(strategy="default", precision="mixed_bfloat16")):
            raise RuntimeError("boom")
    assert keras.config.dtype_policy().name == before


# ----------------------------------------------------------------------------- MirroredStrategy, whole queue


MIRRORED_QUEUE = """
defaults:
  data: {name: synthetic_whale, n_train: 40, n_test: 8, seed: 3}
  features: {name: complexity, n_fft: 128, hop_length: 64, n_mels: 32}
  cache: {workers: 1}
  folds: {n_splits: 2, seed: 1}
  train: {epochs: 1, batch_size: 8}
  model: {name: inceptiontime, filters: 4, depth: 1, bottleneck: 4}
experiments:
  - name: plain
    train: {strategy: default}
  - name: mirrored
    train: {strategy: mirrored}
"""


@pytest.mark.slow
def test_mirrored_over_two_logical_cpus_matches_default_shapes(tmp_path):
    (tmp_path / "queue.yaml").write_text(textwrap.dedent(MIRRORED_QUEUE))
    code = """
        import logging
        from pipeline.distribute import logical_cpus
        assert len(logical_cpus(2)) == 2
        from pipeline.config import load_queue
        from pipeline.queue import Paths, run_experiment
        logging.getLogger().setLevel(logging.INFO)
        queue = load_queue("queue.yaml")
        states = [run_experiment(exp, Paths(queue.output_dir))["state"] for exp in queue.experiments]
        assert states == ["done", "done"], states
    """
    finish(run_python(code, cwd=str(tmp_path)), timeout=300)
    out = tmp_path / "output"
    log = (out / "mirrored" / "run.log").read_text()
    assert "strategy mirrored (MirroredStrategy, 2 replica(s) in sync)" in log
    assert "global batch 16 (train.batch_size 8 per replica x 2)" in log
    assert "CPU x2" in log
    assert "strategy default" in (out / "plain" / "run.log").read_text()
    for name in ("oof.csv", "test.csv", "submission.csv"):
        plain = pd.read_csv(out / "plain" / name)
        mirrored = pd.read_csv(out / "mirrored" / name)
        assert list(plain.columns) == list(mirrored.columns), name
        assert plain.shape == mirrored.shape, name
        assert sorted(plain.iloc[:, 0]) == sorted(mirrored.iloc[:, 0]), name
    oof = pd.read_csv(out / "mirrored" / "oof.csv")
    assert oof["pred"].between(0, 1).all() and oof["id"].is_unique
    for k in range(2):
        assert (out / "mirrored" / f"fold{k}" / "model.keras").is_file()


# ----------------------------------------------------------------------------- MultiWorkerMirroredStrategy


WORKER = """
    import json, os, sys
    import numpy as np
    from pipeline.distribute import make_strategy, with_shard_policy, Runtime, is_chief

    strategy, kind = make_strategy("multiworker")  # first: collectives are set up before any other op
    import keras
    import tensorflow as tf
    from pipeline.train import train_fold

    out = sys.argv[1]
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    rt = Runtime(strategy=strategy, kind=kind, precision="float32", jit_compile=False, devices="cpu")
    assert rt.replicas == 2, rt.replicas
    rng = np.random.default_rng(0)  # the same data on both workers; DATA sharding splits it
    x = rng.normal(size=(64, 16, 4)).astype(np.float32)
    y = (x[:, :, 0].mean(axis=1, keepdims=True) > 0).astype(np.float32)
    batch = rt.global_batch(8)

    def train_data(epoch):
        ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(64, seed=epoch).batch(batch)
        return with_shard_policy(ds, 1, rt)

    valid = with_shard_policy(tf.data.Dataset.from_tensor_slices((x, y)).batch(batch), 1, rt)

    def build():
        inp = keras.Input((16, 4))
        h = keras.layers.Conv1D(4, 3, activation="relu")(inp)
        # Moving statistics come from each worker's own data: averaged after every epoch.
        h = keras.layers.GlobalAveragePooling1D()(keras.layers.BatchNormalization()(h))
        return keras.Model(inp, keras.layers.Dense(1, activation="sigmoid", dtype="float32")(h))

    def compile_model(model):
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy",
                      metrics=[keras.metrics.AUC(name="auc")])

    # Every worker checkpoints into its own folder (the chief's is the real one).
    result = train_fold(build=build, compile_model=compile_model, train_data=train_data, valid_data=valid,
                        train_steps=64 // batch, valid_steps=64 // batch, fold_dir=os.path.join(out, f"w{index}"),
                        fold=0, epochs=2, patience=5, monitor="val_loss", seed=0, strategy=strategy)
    np.savez(os.path.join(out, f"weights{index}.npz"), *result.model.get_weights())
    print("worker", index, "chief", is_chief(), "epochs", result.epochs, "steps/epoch", 64 // batch)
"""


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_in_sync_and_agree_on_weights(tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(WORKER), str(tmp_path)],
            env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=tf_config),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [finish(p, timeout=240) for p in procs]
    assert "worker 0 chief True epochs 2" in outputs[0]
    assert "worker 1 chief False epochs 2" in outputs[1]
    w0 = np.load(tmp_path / "weights0.npz")
    w1 = np.load(tmp_path / "weights1.npz")
    assert len(w0.files) == len(w1.files) > 0
    for name in w0.files:
        np.testing.assert_allclose(w0[name], w1[name], rtol=1e-5, atol=1e-6)
    # They trained: the checkpoints record two epochs with finite losses.
    for index in range(2):
        state = json.loads((tmp_path / f"w{index}" / "state" / "state.json").read_text())
        assert state["epoch"] == 2 and all(np.isfinite(r["loss"]) for r in state["history"])


def test_non_chief_workers_write_apart(monkeypatch):
    from pipeline.distribute import worker_output

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert worker_output("gs://b/out") == "gs://b/out"
    cluster = {"worker": ["a:1", "b:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert worker_output("gs://b/out") == "gs://b/out"
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert worker_output("gs://b/out") == "gs://b/out/workers/worker-1"


def registry_cases():
    from pipeline import schema

    for entry in schema.MODELS.entries():
        if entry.kind == "keras":  # dtype policies apply to Keras families only
            yield entry.name, entry.preset_inputs[0]


@pytest.mark.parametrize("name, shape", list(registry_cases()))
def test_every_model_predicts_float32_under_mixed_precision(name, shape, rng):
    """Every registered family keeps float32 outputs under a 16-bit policy (heads are float32 layers)."""
    import keras

    from pipeline import schema
    from pipeline.distribute import experiment_runtime
    from pipeline.models import sed
    from pipeline.models.build import build_model

    params = schema.MODELS[name].tiny()
    with experiment_runtime(schema.TrainSettings(strategy="default", precision="mixed_bfloat16")):
        model = build_model(name, params, input_shape=shape, n_outputs=2, task="multilabel")
        if isinstance(model.output, dict):
            model = sed.training_view(model)
        pred = model.predict_on_batch(rng.normal(size=(2, *shape)).astype(np.float32))
    assert np.asarray(pred).dtype == np.float32 and pred.shape == (2, 2)
    assert np.isfinite(pred).all()
