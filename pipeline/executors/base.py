"""What every executor shares: the resources one fold job may use, and how a worker process runs a job.

A worker process (a local child process or a Ray worker) is started for one
job: TensorFlow's thread pools and visible GPUs are fixed before its runtime
starts, which is why :func:`run_in_worker` must be the first thing the process
does with TensorFlow.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class JobResources:
    """The share of the machine one job runs on.

    ``threads``: TensorFlow intra-op threads (the cores the job's kernels use);
    inter-op threads are ``min(2, threads)``. ``gpus``: indices of the GPUs the
    job sees, ``()`` for none; ``None`` leaves the process's view as it is
    (Ray sets ``CUDA_VISIBLE_DEVICES`` for a task itself).
    """

    threads: int
    gpus: Optional[Tuple[int, ...]] = None


def configure_process(resources: JobResources) -> None:
    """Fix this process's visible GPUs and TensorFlow thread pools. Call before TensorFlow runs anything.

    Raises RuntimeError when TensorFlow's runtime already started in this
    process (its thread pools and devices can no longer change).
    """
    if resources.gpus is not None:
        if "tensorflow" in sys.modules:
            raise RuntimeError("configure_process: TensorFlow was imported before the job's GPUs were chosen")
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in resources.gpus)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(resources.threads)
    tf.config.threading.set_inter_op_parallelism_threads(min(2, resources.threads))


def run_in_worker(job, resources: JobResources):
    """Run ``job`` (a FoldJob) in this worker process on ``resources``; returns :func:`run_fold_job`'s (oof, test)."""
    configure_process(resources)
    from pipeline.fold_job import run_fold_job

    return run_fold_job(job)
