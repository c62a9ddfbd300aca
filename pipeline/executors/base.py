"""What every executor shares: the resources one fold job may use, and how a worker process runs a job.

A worker process (a local worker or a Ray worker) runs one job at a time:
TensorFlow's thread pools and visible GPUs are fixed before its runtime
starts, which is why :func:`run_in_worker` must be the first thing the process
does with TensorFlow (a later job on the same resources finds them set).

The executor interface (registered in :data:`pipeline.schema.EXECUTORS`; the
scheduler, :mod:`pipeline.scheduler`, is its only caller)::

    executor = Executor(settings)        # settings: pipeline.schema.ExecutionSettings
    executor.capacity -> int             # jobs to keep in flight
    executor.resources() -> JobResources # the share of the machine for the next job
    executor.idle_memory(resources) -> (int, int)
        # resident bytes of its idle worker processes, and of the one among them a job on ``resources``
        # would run in (0: it would start a new worker); the pool counts both against the memory available
    executor.submit(job, resources) -> concurrent.futures.Future
        # resolves to run_fold_job(job)'s (oof, test), or raises the job's exception;
        # WorkerDied when the worker process ended without an answer (killed, out of memory)
    executor.close()                     # stops running jobs (Ctrl-C, SIGTERM) and frees the workers

Every executor runs a job in its worker through :func:`run_in_worker`, so the
fold's ``job.log`` and ``progress.json`` are written the same way everywhere.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Optional, Tuple

from pipeline.machine import machine_cores, pin_process  # the executors import machine_cores from here too


@dataclass(frozen=True)
class JobResources:
    """The share of the machine one job runs on.

    ``threads``: TensorFlow intra-op threads (the cores the job's kernels use);
    inter-op threads are ``min(2, threads)``; None: every core of the machine
    the job runs on (:func:`machine_cores`, TensorFlow's default: the thread
    count changes the last bits of some models' predictions, so a fold gives
    the same files on any executor of one machine). ``gpus``: indices of the GPUs the
    job sees, ``()`` for none; ``None`` leaves the process's view as it is
    (Ray sets ``CUDA_VISIBLE_DEVICES`` for a task itself). ``cores``: the ids
    of the CPU cores the job's process runs on (every thread of it, pinned
    with Linux's CPU affinity), ``None`` for every core; the thread count
    stays ``threads`` whatever the cores (the same bytes).
    """

    threads: Optional[int]
    gpus: Optional[Tuple[int, ...]] = None
    cores: Optional[Tuple[int, ...]] = None


class WorkerDied(RuntimeError):
    """A job's worker process ended without an answer (SIGKILL, out of memory): the job may be run again,
    and resumes after its last finished epoch."""


# Thread pools of the numeric libraries besides TensorFlow's own (NumPy's BLAS, OpenMP in oneDNN).
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def configure_process(resources: JobResources) -> None:
    """Fix this process's visible GPUs, its cores and the thread pools of TensorFlow and BLAS/OpenMP.

    Call before TensorFlow runs anything.

    A worker runs one job after another: a second call with the same resources
    does nothing.

    Raises RuntimeError when TensorFlow's runtime already started in this
    process on other resources (its thread pools and devices can no longer change).
    """
    global _configured
    if _configured == resources:
        return
    if resources.gpus is not None:
        if "tensorflow" in sys.modules:
            raise RuntimeError("configure_process: TensorFlow was imported before the job's GPUs were chosen")
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in resources.gpus)
    threads = resources.threads or machine_cores()  # counted before the process is pinned to fewer cores
    if resources.cores and not pin_process(resources.cores):  # before TensorFlow's thread pools: they inherit it
        logging.getLogger(__name__).warning("could not pin this worker to core(s) %s; it runs on every core",
                                            ",".join(map(str, resources.cores)))
    if "tensorflow" not in sys.modules:  # read when the libraries load
        for name in THREAD_ENV_VARS:
            os.environ[name] = str(threads)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    _configured = resources


_configured: Optional[JobResources] = None  # what configure_process fixed in this process
_jobs_run = 0  # jobs this worker process has started (run_in_worker)


def run_in_worker(job, resources: JobResources):
    """Run ``job`` (a FoldJob) in this worker process on ``resources``; returns :func:`run_fold_job`'s (oof, test).

    The job logs to its fold's ``job.log`` and reports every finished epoch in
    its ``progress.json``; a last ``progress.json`` (``finished: true``) holds
    the process's peak resident memory, which the scheduler records in the
    experiment's ``status.json``.
    """
    import dataclasses

    from pipeline import io, layout

    configure_process(resources)
    from pipeline.fold_job import run_fold_job
    from pipeline.train import write_progress

    io.makedirs(layout.fold_dir(job.exp_dir, job.fold))
    handler = io.log_handler(layout.fold_file(job.exp_dir, job.fold, layout.JOB_LOG))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for noisy in ("tensorflow", "absl", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        global _jobs_run
        _jobs_run += 1
        logging.getLogger(__name__).info("%s fold %d: started on %s in worker process %d (its job %d)", job.name,
                                         job.fold, resources, os.getpid(), _jobs_run)
        result = run_fold_job(dataclasses.replace(job, progress=True))
        write_progress(layout.fold_file(job.exp_dir, job.fold, layout.PROGRESS), finished=True)
        return result
    except BaseException:
        logging.getLogger(__name__).exception("%s fold %d: failed", job.name, job.fold)
        raise
    finally:
        root.removeHandler(handler)
        handler.close()
