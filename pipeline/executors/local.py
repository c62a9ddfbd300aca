"""The local executor: fold jobs side by side on this machine, one fresh child process per job.

A fresh process per job (``multiprocessing`` "spawn") because TensorFlow fixes
its thread pools and visible GPUs when its runtime starts
(:func:`pipeline.executors.base.configure_process`), and because a job that
is killed (out of memory) then costs only itself. A child dies with the runner
(``PR_SET_PDEATHSIG``), so a SIGKILLed runner leaves no job writing into a
fold folder that the next run resumes.

How many jobs (``execution.jobs``, ``--jobs``) and how each is placed:

- with GPUs (``nvidia-smi -L``, limited by ``CUDA_VISIBLE_DEVICES``): a job
  sees only its GPU(s). ``jobs: auto`` keeps every GPU slot busy: ``1 /
  gpus_per_job`` jobs per GPU (``gpus_per_job: 0.5``: two folds per GPU), or
  ``n_gpus // gpus_per_job`` jobs of ``gpus_per_job`` whole GPUs each;
- on CPU, ``jobs: auto`` runs one job per core: small audio models keep only
  about one core busy each (a 2-core machine ran the default queue at 114 %
  CPU with one job), so separate jobs use the cores better than one job's
  threads.

Threads: every job gets as many TensorFlow intra-op threads (and OpenMP/BLAS
threads) as the machine has cores - TensorFlow's own default, i.e. what a fold
gets in the runner with ``jobs: 1`` - and not ``cores // jobs``. TensorFlow's
CPU kernels split a sum between threads by the thread count, so the count
changes the results: measured on this machine, one epoch of the default
queue's InceptionTime, SED and Xception gave predictions that differ by up to
7e-5 between 1 and 2 intra-op threads, while 2 threads set explicitly matched
TensorFlow's default exactly. With the same count everywhere
a fold writes the same bytes in the runner or in a child, with any ``jobs``.
The price is more threads than cores when several jobs run; small models
rarely split an op, so those threads mostly wait.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import threading
import traceback
from concurrent.futures import Future
from typing import Dict, List, Optional, Tuple

from pipeline.executors.base import JobResources, WorkerDied, run_in_worker
from pipeline.executors.base import machine_cores as cpu_cores

log = logging.getLogger(__name__)

STOP_SECONDS = 10  # how long close() waits for a terminated child before killing it


def visible_gpus() -> Tuple[int, ...]:
    """Indices of the GPUs jobs may use, without starting TensorFlow or CUDA in the runner.

    ``CUDA_VISIBLE_DEVICES`` (when set) limits them, as it would limit TensorFlow.
    """
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return tuple(int(g) for g in listed.split(",") if g.strip().isdigit())
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(range(sum(1 for line in out.splitlines() if line.startswith("GPU "))))


def gpu_slots(gpus: Tuple[int, ...], gpus_per_job: Optional[float]) -> List[Tuple[int, ...]]:
    """The GPU set of each job slot: ``1 / gpus_per_job`` slots per GPU for a fraction, else
    ``len(gpus) // gpus_per_job`` slots of that many whole GPUs (at least one slot of all GPUs)."""
    per_job = 1.0 if gpus_per_job is None else gpus_per_job
    if per_job <= 1:
        per_gpu = max(1, int(round(1 / per_job, 6)))
        return [(g,) for _ in range(per_gpu) for g in gpus]
    size = int(per_job)
    return [tuple(gpus[i:i + size]) for i in range(0, len(gpus) - size + 1, size)] or [tuple(gpus)]


class LocalExecutor:
    """Runs each fold job in a fresh child process of this machine (see the module doc)."""

    def __init__(self, settings):
        self.settings = settings
        gpus = visible_gpus()
        self._slots = gpu_slots(gpus, settings.gpus_per_job) if gpus else []
        if settings.jobs == "auto":
            self.capacity = len(self._slots) if self._slots else cpu_cores()
        else:
            self.capacity = int(settings.jobs)
        self.threads = cpu_cores()  # the same count as in the runner: see the module doc
        self._on_gpus: Dict[Future, Tuple[int, ...]] = {}  # a running job's future -> its GPUs
        self._running: Dict[int, multiprocessing.Process] = {}  # pid -> child
        self._lock = threading.Lock()
        self._context = multiprocessing.get_context("spawn")

    def resources(self) -> JobResources:
        """The next job's share: ``threads`` cores, and the GPU slot with the fewest running jobs (``()``: no GPU)."""
        if not self._slots:
            return JobResources(threads=self.threads, gpus=())
        with self._lock:
            running = list(self._on_gpus.values())
        gpus = min(dict.fromkeys(self._slots), key=running.count)  # ties: the first slot
        return JobResources(threads=self.threads, gpus=gpus)

    def submit(self, job, resources: JobResources) -> Future:
        """Start ``job`` in a new child process now; the future resolves to its (oof, test)."""
        future: Future = Future()
        future.set_running_or_notify_cancel()
        receive, send = self._context.Pipe(duplex=False)
        # Started from the caller's thread: PR_SET_PDEATHSIG fires when the thread that forked the child ends.
        child = self._context.Process(target=_child_main, args=(job, resources, send, os.getpid()),
                                      name=f"{job.name}-fold{job.fold}")
        child.start()
        send.close()
        with self._lock:
            self._running[child.pid] = child
            self._on_gpus[future] = resources.gpus
        threading.Thread(target=self._wait, args=(child, receive, future), daemon=True,
                         name=f"wait-{child.name}").start()
        return future

    def _wait(self, child, receive, future: Future) -> None:
        """Wait for the child's answer, then for its end, and resolve ``future``."""
        try:
            answer = receive.recv()
        except (EOFError, OSError):
            answer = None
        finally:
            receive.close()
        child.join()
        with self._lock:
            self._running.pop(child.pid, None)
            self._on_gpus.pop(future, None)
        if answer is None:
            code = child.exitcode
            how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
            future.set_exception(WorkerDied(f"the worker process of {child.name} {how} before it finished"))
        elif answer[0] == "ok":
            future.set_result(answer[1])
        else:
            error = answer[1]
            error.worker_traceback = answer[2]
            future.set_exception(error)

    def close(self) -> None:
        """Terminate every running child (SIGTERM, then SIGKILL after a few seconds) and wait for it."""
        with self._lock:
            children = list(self._running.values())
        for child in children:
            if child.is_alive():
                child.terminate()
        for child in children:
            child.join(STOP_SECONDS)
            if child.is_alive():
                child.kill()
                child.join()


def _child_main(job, resources: JobResources, send, parent: int) -> None:
    """A job's child process: run the job and send ``("ok", result)`` or ``("error", exception, traceback)``."""
    from pipeline.cache.workers import die_with_parent

    die_with_parent()
    if os.getppid() != parent:
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the runner stops jobs
    try:
        answer = ("ok", run_in_worker(job, resources))
    except BaseException as err:  # noqa: BLE001 - every failure is the runner's to report
        answer = ("error", _picklable(err), traceback.format_exc())
    send.send(answer)
    send.close()


def _picklable(err: BaseException) -> BaseException:
    """``err`` itself when it is an Exception that survives pickling (the runner tells a user's mistake from a bug
    by its type), else a RuntimeError with its text."""
    import pickle

    if not isinstance(err, Exception):  # SystemExit and the like would end the runner
        return RuntimeError(f"{type(err).__name__}: {err}")
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(err).__name__}: {err}")
