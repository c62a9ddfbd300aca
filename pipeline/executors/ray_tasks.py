"""Fold jobs as Ray tasks: on a Ray instance started for the run, or on an existing Ray cluster.

Each job is one Ray task that runs :func:`pipeline.executors.base.run_in_worker`
in a fresh worker process (``max_calls=1``: TensorFlow's thread pools and
devices can only be set before its runtime starts, so a worker never runs a
second job). A task asks Ray for ``num_cpus`` cores and ``num_gpus`` GPUs;
Ray sets ``CUDA_VISIBLE_DEVICES`` for a task with GPUs itself, which is why
:meth:`RayExecutor.resources` leaves the GPUs alone.

A worker that dies (SIGKILL, the OOM killer, a lost machine) is started again
up to ``execution.retries`` times, and the job resumes after its last finished
epoch (:func:`pipeline.train.train_fold`); a job that raises is not retried:
the same settings would fail the same way.

A job reads the feature cache and writes its fold folder by path, so on a
cluster those paths must mean the same on every machine: a folder mounted at
the same path everywhere (NFS) or a ``gs://`` URL (:mod:`pipeline.io`); the
code and Python environment must be installed at the same path too (workers
import ``pipeline`` from the driver's folder).

Ray is imported here only, and only when an executor is made: a run with the
local backend never imports or starts it.
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib.util
import logging
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Tuple

from pipeline import io
from pipeline.errors import OutputError, PipelineError, QueueError, TrainingError
from pipeline.executors.base import JobResources, machine_cores, run_in_worker

log = logging.getLogger(__name__)

# The folder that holds the `pipeline` package: Ray workers add it to their sys.path to import the jobs' code.
CODE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class TaskShape:
    """What one fold job asks Ray for, and how many jobs to keep in flight."""

    capacity: int  # jobs in flight at once
    num_cpus: int  # cores per job (also its TensorFlow intra-op threads)
    num_gpus: float  # GPUs per job (0: none; a fraction: several jobs share a GPU)


def task_shape(settings, nodes: List[Tuple[float, float]]) -> TaskShape:
    """One job's share of the cluster from ``settings`` (:class:`pipeline.schema.ExecutionSettings`).

    nodes : ``(cpus, gpus)`` of each live machine of the cluster.

    GPUs: ``gpus_per_job`` each (one when not given and the cluster has GPUs); ``jobs: auto`` keeps as many
    jobs in flight as fit on the GPUs. On CPU ``auto`` is one job per core. The cores are split evenly
    between the jobs in flight, at least one and at most one machine's cores per job (a task runs on one
    machine).

    Raises QueueError when no machine has the GPUs one job asks for (its tasks would wait forever).
    """
    total_cpus = int(sum(cpus for cpus, _ in nodes))
    total_gpus = sum(gpus for _, gpus in nodes)
    gpus = settings.gpus_per_job if settings.gpus_per_job is not None else (1.0 if total_gpus else 0.0)
    if gpus and max(g for _, g in nodes) < gpus:
        raise QueueError(f"execution.gpus_per_job: a job asks for {gpus:g} GPU(s), but the largest machine of the "
                         f"Ray cluster has {max(g for _, g in nodes):g}")
    if gpus:
        fit = sum(math.floor(g / gpus + 1e-9) for _, g in nodes)
    else:
        fit = total_cpus
    capacity = max(1, fit if settings.jobs == "auto" else int(settings.jobs))
    largest = int(max(cpus for cpus, _ in nodes))
    return TaskShape(capacity=capacity, num_cpus=max(1, min(largest, total_cpus // capacity)), num_gpus=gpus)


def check_paths(job) -> None:
    """Raise OutputError unless the job's cache and output folders are absolute paths or URLs.

    A relative path would be resolved against each Ray worker's own working folder, not the runner's.
    """
    for key, path in (("cache_dir", job.cache_dir), ("exp_dir", job.exp_dir)):
        if not (io.is_remote(path) or os.path.isabs(path)):
            raise OutputError(f"{job.name} fold {job.fold}: the {key} {path!r} is a relative path; a Ray task needs "
                              f"an absolute path on storage every machine sees (the same mount everywhere) or a "
                              f"gs:// URL")


class RayExecutor:
    """Runs fold jobs as Ray tasks (``execution: {backend: ray}``).

    ``address`` None starts a Ray instance on this machine for the run (all its cores, no dashboard) and
    stops it in :meth:`close`; ``"auto"`` or ``"host:port"`` connects to an existing cluster, which
    :meth:`close` leaves running.

    Raises QueueError when Ray is not installed, the cluster cannot be reached or has no room for a job.
    """

    def __init__(self, settings):
        if importlib.util.find_spec("ray") is None:
            raise QueueError("execution.backend: 'ray' needs the ray package; install the pinned stack with "
                             "`pip install -r requirements.txt`")
        import ray

        self.settings = settings
        self._started = settings.address is None
        options = {"logging_level": logging.WARNING, "log_to_driver": False,
                   "job_config": ray.job_config.JobConfig(code_search_path=[CODE_ROOT])}
        if self._started:
            # "local": a new instance even when another one runs on this machine (None would join that one).
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a run never reports to the network
            options.update(address="local", num_cpus=machine_cores(), include_dashboard=False)
        else:
            options.update(address=settings.address)
        try:
            ray.init(**options)
        except ConnectionError as err:
            raise QueueError(f"execution.address: no Ray cluster answers at {settings.address!r} ({err}); start "
                             f"one with `ray start --head`, and when it uses token authentication give this runner "
                             f"the same RAY_AUTH_MODE and token (README, 'Running on a Ray cluster')") from None
        try:
            nodes = [(n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0)) for n in ray.nodes()
                     if n["Alive"]]
            self.shape = task_shape(settings, nodes)
        except BaseException:
            ray.shutdown()
            raise
        self._task = ray.remote(num_cpus=self.shape.num_cpus, num_gpus=self.shape.num_gpus, max_calls=1,
                                max_retries=settings.retries, retry_exceptions=False)(run_in_worker)
        self._in_flight: Dict[object, concurrent.futures.Future] = {}
        log.info("Ray: %s; %d job(s) in flight, %d core(s)%s each", "a local instance for this run"
                 if self._started else f"the cluster at {settings.address}", self.shape.capacity,
                 self.shape.num_cpus, f" and {self.shape.num_gpus:g} GPU(s)" if self.shape.num_gpus else "")

    @property
    def capacity(self) -> int:
        """Jobs to keep in flight: the cluster's cores (or GPUs) divided by one job's share, or ``execution.jobs``."""
        return self.shape.capacity

    def resources(self) -> JobResources:
        """One job's share: TensorFlow threads None (every core of its machine, as the local executor and the
        runner use: the same fold files on any executor); GPUs None (Ray gives each task its own). Ray still
        schedules each task by its ``num_cpus``."""
        return JobResources(threads=None, gpus=None)

    def idle_memory(self, resources: JobResources) -> Tuple[int, int]:
        """(0, 0): every task runs in a fresh Ray worker (``max_calls=1``), which Ray ends after it."""
        return 0, 0

    def submit(self, job, resources: JobResources) -> concurrent.futures.Future:
        """Start ``job`` (a FoldJob) as a Ray task; the future resolves to :func:`run_fold_job`'s (oof, test).

        The future's error is the job's own (a PipelineError says what to fix), or a TrainingError when its
        worker died more often than ``execution.retries`` allows. Raises OutputError for a relative path.
        """
        check_paths(job)
        ref = self._task.options(name=f"{job.name} fold {job.fold}").remote(job, resources)
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._in_flight[ref] = future
        ref.future().add_done_callback(functools.partial(self._settle, ref, job))
        return future

    def _settle(self, ref, job, done: concurrent.futures.Future) -> None:
        """Pass the task's outcome to the future :meth:`submit` returned (runs on a Ray thread)."""
        from ray.exceptions import RayError, RayTaskError, TaskCancelledError

        future = self._in_flight.pop(ref, None)
        if future is None or future.done():  # cancelled by close()
            return
        try:
            result = done.result()
        except TaskCancelledError:
            future.cancel()
        except RayTaskError as err:
            # The job raised. A PipelineError's message says what to fix: it goes on without Ray's wrapping;
            # anything else (a bug) keeps the wrapping, which carries the worker's traceback.
            future.set_exception(err.cause if isinstance(err.cause, PipelineError) else err)
        except RayError as err:  # the worker or its machine died, retries used up
            future.set_exception(TrainingError(
                f"{job.name} fold {job.fold}: its Ray worker died {self.settings.retries + 1} time(s) "
                f"({type(err).__name__}); run the queue again to resume after the fold's last finished epoch"))
        else:
            future.set_result(result)

    def close(self) -> None:
        """Cancel the jobs still in flight and leave Ray: a Ray instance this executor started stops with it."""
        import ray

        for ref, future in list(self._in_flight.items()):
            ray.cancel(ref, force=True)
            future.cancel()
        self._in_flight.clear()
        ray.shutdown()
