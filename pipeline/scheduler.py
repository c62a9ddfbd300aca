"""The queue-wide pool of fold jobs: folds of every experiment side by side, on an executor.

The queue (:func:`pipeline.queue._run_pooled`) prepares each experiment in
the runner process (data, feature cache, fold table, fold plan) and adds its
unfinished fold jobs here; the pool keeps ``executor.capacity`` jobs in flight
(:mod:`pipeline.executors`), so folds of different experiments run at the same
time, and calls back when a job ends. What a job computes does not depend on
where or when it ran: the experiment gathers its folds in fold order
(:func:`pipeline.fold_loop.gather_folds`).

While jobs run, the pool prints one line per running job and finished epoch
(experiment, fold, epoch, monitored metric, the worker's peak memory) from the
job's ``progress.json``. A worker that dies (SIGKILL, the OOM killer) is
started again up to ``execution.retries`` times; the job resumes after its
last finished epoch.

Order: the pool starts the waiting job with the highest :func:`job_cost`
first (longest-processing-time-first), so that the longest folds do not
start last and train alone at the end of the queue; the queue doubles the
cost of a teacher's folds, whose student waits for all of them. A job that
is retried goes before all others. The order changes when a job runs, never
what it computes.

Memory: a job starts only when what the running jobs hold, what idle
workers hold and the job's own estimate fit in the memory available when the
pool started (one job always runs, with a warning when even it may not
fit). A running job holds its estimate or, once it has reported one, its
worker's peak so far if that is larger; an idle worker holds its resident
memory (:meth:`executor.idle_memory`); a job sent to a worker that already
ran jobs needs that worker's resident memory instead of ``WORKER_BASE``
(measured: reused workers peaked at 1.3-1.6 GiB on jobs estimated at
0.74-0.90 GiB for a fresh one). The estimate
(:func:`job_estimates`, logged per experiment) is deliberately rough:
``WORKER_BASE`` for a fresh TensorFlow process, plus the model's parameters x 4
bytes x ``OPTIMIZER_COPIES`` (weights, gradients and Adam's two moments), plus
a batch of inputs x 4 bytes x ``ACTIVATION_FACTOR`` (the layers' activations
kept for the backward pass), plus what the input holds (:mod:`pipeline.memory`:
the fold's examples when they are cached in memory, else the shuffle buffer,
and the input's buffers).
"""

from __future__ import annotations

import collections
import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, Optional, Set, Tuple

import numpy as np

from pipeline import io, layout, schema
from pipeline.executors.base import WorkerDied
from pipeline.machine import available_memory

log = logging.getLogger(__name__)

MIB = 2**20
WORKER_BASE = 700 * MIB  # a fresh process with TensorFlow and Keras loaded, before any model
OPTIMIZER_COPIES = 4
ACTIVATION_FACTOR = 64
POLL_SECONDS = 2.0  # how often running jobs' progress.json files are read


@dataclass(eq=False)
class _Task:
    job: object  # pipeline.fold_job.FoldJob
    memory: int  # estimated bytes in a fresh worker (job_estimates)
    done: Callable  # done(job, (oof, test), info: dict)
    failed: Callable  # failed(job, exception)
    cost: float = 0.0  # job_cost: the pool starts the costliest waiting job first
    attempts: int = 0
    started: float = 0.0
    seen: Optional[float] = None  # the last progress.json shown (its "updated")
    need: int = 0  # bytes counted for it since it started: its estimate in the worker it runs in
    peak: int = 0  # its worker's peak resident bytes so far (progress.json)


@dataclass
class JobPool:
    """Fold jobs of the whole queue on the executor that ``settings`` names (see the module doc)."""

    settings: schema.ExecutionSettings
    executor: object = field(init=False)
    memory: int = field(init=False)  # bytes available to jobs when the pool started
    pending: Deque[_Task] = field(init=False, default_factory=collections.deque)
    running: Dict[Future, _Task] = field(init=False, default_factory=dict)
    cancelled: Set[str] = field(init=False, default_factory=set)

    def __post_init__(self):
        self.executor = schema.EXECUTORS[self.settings.backend].load()(self.settings)
        _runner_off_gpus()
        self.memory = available_memory()
        log.info("fold jobs: up to %d at a time (%s executor, %s per job); %.1f GiB of memory available",
                 self.executor.capacity, self.settings.backend, self.executor.resources(), self.memory / 2**30)

    def add(self, job, memory: int, done: Callable, failed: Callable, cost: float = 0.0) -> None:
        """Queue ``job`` (estimated to need ``memory`` bytes, and ``cost``: :func:`job_cost`); ``done(job, result,
        info)`` or ``failed(job, error)`` is called from :meth:`wait` when it ends."""
        self.pending.append(_Task(job, memory, done, failed, cost))
        self._start()

    def cancel(self, name: str) -> None:
        """Start no more jobs of experiment ``name`` and ignore those running (it failed)."""
        self.cancelled.add(name)
        self.pending = collections.deque(t for t in self.pending if t.job.name != name)

    @property
    def busy(self) -> bool:
        return bool(self.pending or self.running)

    def wait(self, timeout: float = POLL_SECONDS) -> None:
        """Wait up to ``timeout`` s for a job to end, handle the ended ones, show progress, start more jobs."""
        if self.running:
            ended, _ = wait(list(self.running), timeout=timeout, return_when=FIRST_COMPLETED)
            for future in ended:
                self._ended(future, self.running.pop(future))
        self._show_progress()
        self._start()

    def close(self) -> None:
        """Stop every running job (Ctrl-C, SIGTERM, the end of the run)."""
        self.pending.clear()
        self.executor.close()

    def _start(self) -> None:
        while self.pending and len(self.running) < self.executor.capacity:
            # Longest first, so that no long job starts last and trains alone at the end; a retried job before all.
            task = max(self.pending, key=lambda t: (t.attempts > 0, t.cost))
            resources = self.executor.resources()
            idle, reused = self.executor.idle_memory(resources)
            need = task.memory + (reused - WORKER_BASE if reused else 0)
            in_use = sum(max(t.need, t.peak) for t in self.running.values()) + idle - reused
            if self.running and in_use + need > self.memory:
                return  # waits for a running job to end
            if not self.running and in_use + need > self.memory:
                log.warning("%s fold %d: estimated to need %.1f GiB (idle workers hold %.1f GiB more), more than "
                            "the %.1f GiB available; started alone", task.job.name, task.job.fold, need / 2**30,
                            (idle - reused) / 2**30, self.memory / 2**30)
            self.pending.remove(task)
            task.started, task.seen, task.need, task.peak = time.time(), None, need, 0
            self.running[self.executor.submit(task.job, resources)] = task
            log.info("%s fold %d/%d: started (%s)%s", task.job.name, task.job.fold + 1, task.job.n_folds,
                     _shown(resources), f", attempt {task.attempts + 1}" if task.attempts else "")

    def _ended(self, future: Future, task: _Task) -> None:
        job = task.job
        if job.name in self.cancelled:
            return
        error = future.exception()
        if isinstance(error, WorkerDied) and task.attempts < self.settings.retries:
            task.attempts += 1
            log.warning("%s fold %d/%d: %s; starting it again (retry %d of %d), from its last finished epoch",
                        job.name, job.fold + 1, job.n_folds, error, task.attempts, self.settings.retries)
            self.pending.appendleft(task)
            return
        if error is not None:
            task.failed(job, error)
            return
        progress = _read_progress(job)
        info = {"seconds": round(time.time() - task.started, 2), "attempts": task.attempts + 1,
                "peak_rss_mb": progress.get("peak_rss_mb"), "estimated_mb": round(task.need / MIB)}
        task.done(job, future.result(), info)

    def _show_progress(self) -> None:
        """One line per running job whose progress.json changed since it was last shown."""
        for task in self.running.values():
            progress = _read_progress(task.job)
            updated = progress.get("updated", 0)
            if "epoch" not in progress or updated < task.started:  # none yet, or an earlier attempt's
                continue
            task.peak = max(task.peak, int((progress.get("peak_rss_mb") or 0) * MIB))
            if updated == task.seen:  # shown already
                continue
            task.seen = progress["updated"]
            job = task.job
            log.info("%s fold %d/%d: epoch %d/%d, %s %.4f, peak memory %.0f MiB", job.name, job.fold + 1,
                     job.n_folds, progress["epoch"], progress["epochs"], progress["monitor"], progress["value"],
                     progress["peak_rss_mb"])


def _runner_off_gpus() -> None:
    """Keep TensorFlow in the runner off the GPUs: the jobs train there, and TensorFlow would otherwise reserve
    nearly all of every visible GPU's memory as soon as the runner touches it (the memory estimate builds each
    experiment's model once, on the CPU)."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow's runtime already started in this process (e.g. an earlier experiment)
        log.debug("the runner's TensorFlow had started; its GPU view is left as it is")


def _read_progress(job) -> dict:
    """The job's progress.json, or {} while there is none (or it cannot be read)."""
    try:
        progress = io.read_json(layout.fold_file(job.exp_dir, job.fold, layout.PROGRESS))
    except (OSError, ValueError):
        return {}
    return progress if isinstance(progress, dict) else {}


def _shown(resources) -> str:
    gpus = "no GPU" if not resources.gpus else f"GPU {','.join(map(str, resources.gpus))}"
    threads = "all cores" if resources.threads is None else f"{resources.threads} thread(s)"
    if resources.cores:
        threads += f" on core(s) {','.join(map(str, resources.cores))}"
    return f"{threads}, {gpus}"


def job_estimates(plan) -> Tuple[int, float]:
    """(estimated peak bytes, :func:`job_cost`) of one worker running a fold job of ``plan`` (a
    :class:`pipeline.fold_loop.FoldPlan`); see the module doc for the memory formula. Builds the model once in this
    process to count its parameters and their uses."""
    import keras

    from pipeline.cache.read import FeatureCache
    from pipeline.models.build import build_model

    exp = plan.exp
    strategy = schema.FOLD_STRATEGIES[plan.strategy].load()()
    shape = FeatureCache(plan.cache_dir).shape
    input_shape = strategy.input_shape(exp, shape)
    if schema.MODELS[exp.model.name].kind == "keras":
        model = build_model(exp.model.name, exp.model.params, input_shape=input_shape, n_outputs=len(plan.targets),
                            task=plan.task)
        params, uses = model.count_params(), weight_uses(model)
        keras.backend.clear_session(free_memory=True)
    else:  # a classical family holds its pooled features (counted as cached examples) and a small fitted model
        params = uses = 0
    batch = exp.train.batch_size * int(np.prod(input_shape)) * 4 * ACTIVATION_FACTOR
    cached = plan.memory.held  # the input's examples (cached, or the streamed shuffle buffer) and buffers
    total = WORKER_BASE + params * 4 * OPTIMIZER_COPIES + batch + cached
    cost = job_cost(uses, exp.train.epochs, len(plan.ids) * (1 - 1 / exp.folds.n_splits), exp.train.batch_size)
    log.info("%s: a fold job is estimated to need %.0f MiB (%.0f MiB worker, %d parameters, batch %d x %s, "
             "%.0f MiB input); cost %.0f", exp.name, total / MIB, WORKER_BASE / MIB, params, exp.train.batch_size,
             input_shape, cached / MIB, cost)
    return total, cost


# job_cost's terms, fitted on the default queue's per-fold times on a 2-core CPU (the pool needs only their order).
FOLD_COST = 29.0  # per fold: building, tracing, validation, predictions, checkpoints
STEP_COST = 0.067  # per training step, whatever the model (Python, the input pipeline)
USE_COST = 7.7e-11  # per weight use (weight_uses) of one training example


def job_cost(uses: int, epochs: int, examples: float, batch_size: int) -> float:
    """A fold job's relative cost, for ordering the pool (longest first): ``epochs`` of ``examples`` training
    examples in batches of ``batch_size`` through a model of ``uses`` weight uses per example (:func:`weight_uses`;
    0 for a classical family, which fits in seconds). In seconds of the CPU the terms were fitted on; early
    stopping, other data and other devices make it only a rank."""
    if not uses:
        return 0.0
    return FOLD_COST + epochs * (examples * uses * USE_COST + np.ceil(examples / batch_size) * STEP_COST)


def weight_uses(model) -> int:
    """Roughly the multiply-adds of one example through ``model``: each layer's weights times the positions of its
    output (a convolution's kernel is applied at every output position, a dense layer at every time step, a
    recurrent layer at every input step). Attention's own products and weightless layers are not counted."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):  # a nested backbone
            total += weight_uses(layer)
            continue
        params = layer.count_params()
        if not params:
            continue
        try:
            shape = layer.input.shape if isinstance(layer, keras.layers.RNN) else layer.output.shape
            positions = int(np.prod([d for d in shape[1:-1] if d is not None])) if len(shape) > 2 else 1
        except (AttributeError, ValueError, TypeError):  # a layer without one symbolic output (shared, nested)
            positions = 1
        total += params * positions
    return total
