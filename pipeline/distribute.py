"""Devices, tf.distribute strategy, mixed precision and XLA for one experiment.

``train.strategy`` picks TensorFlow's own distribution engine:

- ``default``: the default (single-device) strategy.
- ``mirrored``: MirroredStrategy over the visible GPUs, or over the logical CPU
  devices when there is no GPU and more than one logical CPU is configured
  (used by the tests; real machines gain nothing from it).
- ``multiworker``: MultiWorkerMirroredStrategy; the cluster comes from the
  ``TF_CONFIG`` environment variable, which must be set on every worker.
- ``tpu``: TPUStrategy on the TPU found by ``TPUClusterResolver`` (Kaggle and
  Colab set ``TPU_NAME`` / ``COLAB_TPU_ADDR``; a TPU VM is found as ``local``).
- ``auto``: a TPU when one is reachable, else MirroredStrategy when more than
  one GPU is visible, else the default strategy. ``multiworker`` is never
  chosen automatically: it needs every worker started with its own TF_CONFIG.

``train.batch_size`` is per replica: a step consumes
``batch_size * num_replicas_in_sync`` examples (the *global* batch), so the
per-device memory use stays the same when replicas are added.

A strategy is created once per process and kind (TensorFlow allows one
multi-worker or TPU strategy per process, and the collective ops must be set
up before anything else runs), so experiments of a queue share it.

``train.precision`` sets the global Keras dtype policy while the experiment's
models are built and is restored afterwards, so one experiment never leaks its
policy into the next. Classifier heads are float32 layers
(:func:`pipeline.models.heads.classifier_head`), so predictions and losses
stay float32 under any policy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Iterator, List, Optional

from pipeline.errors import TrainingError

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT_CHOICES = ("auto", "true", "false")

# One strategy per kind per process (see the module docstring).
_STRATEGIES: dict = {}


class DistributeError(TrainingError):
    """The configured strategy or precision cannot be used on this machine; the message names the key."""


@dataclass(frozen=True)
class Runtime:
    """What an experiment trains with: the strategy and the resolved settings."""

    strategy: object  # tf.distribute.Strategy
    kind: str  # resolved strategy: default / mirrored / multiworker / tpu
    precision: str  # resolved dtype policy name
    jit_compile: bool
    devices: str  # human-readable device list

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    def global_batch(self, per_replica: int) -> int:
        """Examples per step: ``per_replica * num_replicas_in_sync``."""
        return int(per_replica) * self.replicas

    @property
    def is_chief(self) -> bool:
        """True on the worker that should write shared outputs (always true off multi-worker)."""
        return is_chief()

    def describe(self) -> str:
        return (f"devices: {self.devices}; strategy {self.kind} ({type(self.strategy).__name__}, "
                f"{self.replicas} replica(s) in sync); precision {self.precision}; jit_compile {self.jit_compile}")


def device_summary() -> str:
    """The logical devices TensorFlow sees, e.g. ``CPU x2, GPU x1 (/device:GPU:0)``."""
    import tensorflow as tf

    parts = []
    for kind in ("CPU", "GPU", "TPU"):
        found = tf.config.list_logical_devices(kind)
        if found:
            parts.append(f"{kind} x{len(found)} ({', '.join(d.name for d in found)})")
    return "; ".join(parts) or "none"


def is_chief() -> bool:
    """Whether this process is the chief of a TF_CONFIG cluster (or not in a cluster at all).

    The chief is the task of type ``chief``, or worker 0 when the cluster has no chief.
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    try:
        cfg = json.loads(raw)
        task = cfg.get("task", {})
        kind, index = task.get("type", "worker"), int(task.get("index", 0))
    except (ValueError, AttributeError, TypeError):
        return True
    if kind == "chief":
        return True
    return kind == "worker" and index == 0 and "chief" not in cfg.get("cluster", {})


def worker_output(output: str) -> str:
    """Where this process writes the queue's outputs: ``output`` on the chief, else ``output/workers/<task>``.

    Under MultiWorkerMirroredStrategy every worker runs the same queue (the
    collectives need all of them); only the chief's files are the results.
    The other workers keep their own checkpoints and files apart, so that they
    never overwrite the chief's and resume in step with it after a kill.
    """
    if is_chief():
        return output
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    from pipeline.layout import WORKERS

    return os.path.join(output, WORKERS, f"{task.get('type', 'worker')}-{int(task.get('index', 0))}")


def _tpu_resolver(required: bool):
    """A connected TPUClusterResolver, or None when no TPU is reachable (raises when ``required``)."""
    import tensorflow as tf

    hint = os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR")
    candidates = [hint] if hint else []
    if not candidates and (required or os.environ.get("TPU_ACCELERATOR_TYPE") or os.path.exists("/dev/accel0")):
        candidates = ["local", None]
    if not candidates:
        if required:
            raise DistributeError("train.strategy: 'tpu' was requested but no TPU is reachable (no TPU_NAME or "
                                  "COLAB_TPU_ADDR, no TPU VM); use 'auto' or 'default'")
        return None
    last = None
    for name in candidates:
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=name)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            return resolver
        except Exception as err:  # noqa: BLE001 - any failure means "no TPU here"
            last = err
    if required:
        raise DistributeError(f"train.strategy: 'tpu' was requested but the TPU could not be reached "
                              f"({type(last).__name__}: {str(last).splitlines()[0] if str(last) else ''}); "
                              f"use 'auto' or 'default'")
    log.warning("a TPU was advertised but could not be reached (%s); not using it", last)
    return None


def _check_tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise DistributeError("train.strategy: 'multiworker' needs the TF_CONFIG environment variable on every "
                              "worker, e.g. {\"cluster\": {\"worker\": [\"host1:12345\", \"host2:12345\"]}, "
                              "\"task\": {\"type\": \"worker\", \"index\": 0}}")
    try:
        cfg = json.loads(raw)
        workers = cfg["cluster"]["worker"]
        cfg["task"]["type"], int(cfg["task"]["index"])
    except (ValueError, KeyError, TypeError) as err:
        raise DistributeError(f"train.strategy: 'multiworker': TF_CONFIG is not valid ({type(err).__name__}: "
                              f"{err}); expected JSON with cluster.worker (a list of host:port) and task.type / "
                              f"task.index. Received: TF_CONFIG={raw!r}") from None
    if not isinstance(workers, list) or not workers:
        raise DistributeError(f"train.strategy: 'multiworker': TF_CONFIG cluster.worker must be a non-empty list "
                              f"of host:port. Received: TF_CONFIG={raw!r}")
    return cfg


def make_strategy(kind: str):
    """The tf.distribute strategy for a resolved or ``auto`` kind. Returns (strategy, resolved kind)."""
    import tensorflow as tf

    if kind not in STRATEGIES:
        raise DistributeError(f"train.strategy: {kind!r} is not a strategy; choose one of: {', '.join(STRATEGIES)}")
    if kind == "auto":
        if "tpu" in _STRATEGIES or _tpu_resolver(required=False) is not None:
            return make_strategy("tpu")
        if len(tf.config.list_logical_devices("GPU")) > 1:
            return make_strategy("mirrored")
        return make_strategy("default")
    if kind in _STRATEGIES:
        return _STRATEGIES[kind], kind
    if kind == "default":
        strategy = tf.distribute.get_strategy()
    elif kind == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
    elif kind == "multiworker":
        _check_tf_config()
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except (RuntimeError, ValueError) as err:
            raise DistributeError(f"train.strategy: 'multiworker' could not start ({err}); MultiWorkerMirrored"
                                  f"Strategy must be created before TensorFlow runs anything else in the "
                                  f"process, so run one worker process per machine with its TF_CONFIG") from None
        _reduce_leaf_by_leaf(strategy)
    else:  # tpu
        resolver = _tpu_resolver(required=True)
        strategy = tf.distribute.TPUStrategy(resolver)
    _STRATEGIES[kind] = strategy
    return strategy, kind


def _reduce_leaf_by_leaf(strategy) -> None:
    """Let ``strategy.reduce`` take a nested structure of per-replica values, as MirroredStrategy's does.

    Keras 3.6 ``fit`` reduces the first distributed batch, an ``(x, y)`` tuple,
    with one ``strategy.reduce`` call to learn its shapes, and the per-step
    logs (scalars) with ``axis=0``; the collective strategy's reduce accepts
    neither a tuple nor an axis on a scalar. The instance's method is wrapped
    to reduce leaf by leaf, scalars across replicas only (every worker makes
    the same calls, so the collectives stay matched).
    """
    import tensorflow as tf

    single = strategy.reduce

    def reduce_one(reduce_op, v, axis):
        parts = getattr(v, "values", None) or (v,)
        if axis is not None and getattr(getattr(parts[0], "shape", None), "rank", None) == 0:
            axis = None  # a scalar log (loss, metric): the mean over replicas
        return single(reduce_op, v, axis)

    def reduce(reduce_op, value, axis=None):
        return tf.nest.map_structure(lambda v: reduce_one(reduce_op, v, axis), value)

    strategy.reduce = reduce


def resolve_precision(precision: str, kind: str) -> str:
    """The Keras dtype policy for ``train.precision`` on this machine (``auto``: by accelerator)."""
    import tensorflow as tf

    if precision not in PRECISIONS:
        raise DistributeError(f"train.precision: {precision!r} is not a precision; choose one of: "
                              f"{', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if kind == "tpu":
        return "mixed_bfloat16"
    if tf.config.list_logical_devices("GPU"):
        return "mixed_float16"
    return "float32"


def resolve_jit(jit_compile, kind: str) -> bool:
    """``train.jit_compile`` as a bool: ``auto`` is on with a GPU or TPU and off on CPU (XLA rarely helps there)."""
    import tensorflow as tf

    value = str(jit_compile).lower()
    if value not in JIT_CHOICES:
        raise DistributeError(f"train.jit_compile: expected auto, true or false. Received: jit_compile={jit_compile!r}")
    if value != "auto":
        return value == "true"
    return kind == "tpu" or bool(tf.config.list_logical_devices("GPU"))


@contextlib.contextmanager
def experiment_runtime(train, *, name: str = "experiment") -> Iterator[Runtime]:
    """Resolve strategy, precision and XLA for ``train`` (schema.TrainSettings) and log them.

    While the context is open the global Keras dtype policy is the resolved
    precision; on exit the previous policy is restored, whatever happened.
    """
    import keras

    strategy, kind = make_strategy(train.strategy)
    precision = resolve_precision(train.precision, kind)
    jit = resolve_jit(train.jit_compile, kind)
    rt = Runtime(strategy=strategy, kind=kind, precision=precision, jit_compile=jit, devices=device_summary())
    log.info("%s: %s; global batch %d (train.batch_size %d per replica x %d)", name, rt.describe(),
             rt.global_batch(train.batch_size), train.batch_size, rt.replicas)
    if jit:
        log.info("%s: jit_compile: op determinism is off (XLA has no deterministic kernel for some gradients, "
                 "e.g. max pooling), so reruns and resumed runs are not bit-for-bit identical", name)
    previous = keras.config.dtype_policy()
    deterministic = _op_determinism()
    try:
        keras.config.set_dtype_policy(precision)
        _set_op_determinism(not jit)
        yield rt
    finally:
        keras.config.set_dtype_policy(previous)
        _set_op_determinism(deterministic)


def _op_determinism() -> bool:
    from tensorflow.python.framework import config  # the getter is not exported in TF 2.17

    return bool(config.is_op_determinism_enabled())


def _set_op_determinism(on: bool) -> None:
    """Switch TensorFlow's op determinism on (reproducible CPU runs) or off (needed by XLA)."""
    import tensorflow as tf
    from tensorflow.python.framework import config  # disable_op_determinism is not exported in TF 2.17

    if on:
        tf.config.experimental.enable_op_determinism()
    else:
        config.disable_op_determinism()


def shard_policy(n_files: int, n_workers: int):
    """Auto-shard policy for a dataset read from ``n_files`` TFRecord files on ``n_workers`` workers.

    FILE (each worker reads its own shards: no wasted reads) when every worker
    gets at least one file, else DATA (every worker reads everything and keeps
    its share of the examples).
    """
    import tensorflow as tf

    policy = tf.data.experimental.AutoShardPolicy
    return policy.FILE if n_workers > 1 and n_files >= n_workers else policy.DATA


def with_shard_policy(ds, n_files: int, rt: Optional[Runtime]):
    """``ds`` with the auto-shard policy for the runtime's workers (see :func:`shard_policy`)."""
    import tensorflow as tf

    if ds is None:
        return None
    workers = 1
    if rt is not None:
        resolver = getattr(rt.strategy, "cluster_resolver", None)
        spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
        workers = max(1, len(spec.get("worker", [])) + len(spec.get("chief", [])))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = shard_policy(n_files, workers)
    return ds.with_options(options)


def logical_cpus(n: int) -> List[str]:
    """Split the physical CPU into ``n`` logical devices (must run before TensorFlow initialises devices).

    For testing MirroredStrategy without GPUs. Returns the logical device names.
    """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def prediction_model(model, rt: Optional[Runtime]):
    """A model that :func:`pipeline.predict.predict_examples` can call batch by batch.

    Keras runs ``predict_on_batch`` of a model built under a multi-replica
    strategy on every replica with the whole batch and concatenates the
    results (each row repeated once per replica), so such a model is cloned
    outside the strategy with the same weights and dtype policies. Prediction
    then runs on one device; a single-replica model is returned as it is.
    """
    import keras

    if rt is None or rt.replicas == 1:
        return model
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def average_non_trainable(model, strategy) -> None:
    """Average the model's non-trainable variables (BatchNormalization statistics) over the workers.

    Under MultiWorkerMirroredStrategy Keras 3.6 all-reduces the gradients, so
    the trainable weights agree, but each worker updates the moving
    statistics from its own share of the data. Called after every epoch on a
    multi-worker strategy so that every worker saves and predicts with the
    same model. A no-op elsewhere.
    """
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    variables = [v for v in model.non_trainable_variables if "float" in str(v.dtype)]
    if not variables:
        return
    values = [tf.convert_to_tensor(v.value) for v in variables]
    per_replica = strategy.experimental_distribute_values_from_function(lambda ctx: values)
    reduced = strategy.reduce("MEAN", per_replica, axis=None)
    for var, value in zip(variables, reduced):
        var.assign(value)
