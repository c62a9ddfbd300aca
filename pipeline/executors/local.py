"""The local executor: fold jobs side by side on this machine, in worker processes that run one job at a time.

Worker processes (``multiprocessing`` "spawn"), not threads of the runner,
because TensorFlow fixes its thread pools and visible GPUs when its runtime
starts (:func:`pipeline.executors.base.configure_process`), and because a job
that is killed (out of memory) then costs only itself. A worker is started
for a job slot (its GPUs) and runs one job after another, as the runner does
with ``jobs: 1``: a fresh process per job paid about 5 s of CPU time
(TensorFlow's import, the first traces) for each of them. A worker that dies
is not reused; its job is retried in a new one. A worker dies with the runner
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
The price is more threads than cores when several jobs run. On CPU each job
slot therefore gets cores of its own (:func:`core_slots`: the process and
every thread it starts are pinned to them with Linux's CPU affinity), so two
jobs' threads do not take turns on the same cores or each other's caches
(measured in the README, "Each job on its own cores"). The bytes do not
change (the thread count does not). With GPUs, or more jobs than cores, jobs
are not pinned.
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
from dataclasses import dataclass
from typing import List, Optional, Tuple

from pipeline.executors.base import JobResources, WorkerDied, run_in_worker
from pipeline.executors.base import machine_cores as cpu_cores
from pipeline.machine import machine_core_ids as core_ids
from pipeline.machine import resident_memory

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


def core_slots(cores: Tuple[int, ...], jobs: int) -> List[Tuple[int, ...]]:
    """The cores of each of ``jobs`` CPU job slots: ``cores`` split into that many disjoint runs (the first ones a
    core larger when they do not divide evenly); ``[]`` when there are fewer than two jobs or more jobs than cores."""
    if not 2 <= jobs <= len(cores):
        return []
    size, larger = divmod(len(cores), jobs)
    bounds = [i * size + min(i, larger) for i in range(jobs + 1)]
    return [tuple(cores[bounds[i]:bounds[i + 1]]) for i in range(jobs)]


@dataclass
class _Worker:
    """A worker process of this machine: it runs one job after another on ``resources``."""

    process: multiprocessing.Process
    conn: object  # the runner's end of a duplex pipe: jobs go out, answers come back
    resources: JobResources
    future: Optional[Future] = None  # the job it runs now (None: idle)


class LocalExecutor:
    """Runs fold jobs in worker processes of this machine, one job at a time each (see the module doc)."""

    def __init__(self, settings):
        self.settings = settings
        gpus = visible_gpus()
        gpu_sets = gpu_slots(gpus, settings.gpus_per_job) if gpus else []
        if settings.jobs == "auto":
            self.capacity = len(gpu_sets) if gpu_sets else cpu_cores()
        else:
            self.capacity = int(settings.jobs)
        self.threads = cpu_cores()  # the same count as in the runner: see the module doc
        # The share of each job slot: its GPUs, or on CPU its own cores (one shared slot when they cannot be split).
        self._slots = ([JobResources(threads=self.threads, gpus=g) for g in gpu_sets] if gpu_sets else
                       [JobResources(threads=self.threads, gpus=(), cores=c)
                        for c in core_slots(core_ids(), self.capacity)] or [JobResources(threads=self.threads, gpus=())])
        self._workers: List[_Worker] = []
        self._lock = threading.Lock()
        self._context = multiprocessing.get_context("spawn")

    def resources(self) -> JobResources:
        """The next job's share: ``threads`` threads, and the slot (GPUs, or cores on CPU) with the fewest running
        jobs."""
        with self._lock:
            running = [w.resources for w in self._workers if w.future is not None]
        return min(dict.fromkeys(self._slots), key=running.count)  # ties: the first slot

    def idle_memory(self, resources: JobResources) -> Tuple[int, int]:
        """(resident bytes of the idle workers, of the idle worker :meth:`submit` would give a job on ``resources``
        or 0 when it would start one): a worker that ran jobs keeps more than a fresh one (TensorFlow's caches,
        the C heap), and an idle one keeps it all while it waits."""
        with self._lock:
            idle = [w for w in self._workers if w.future is None and w.process.is_alive()]
            sizes = {id(w): resident_memory(w.process.pid) for w in idle}
        reused = next((sizes[id(w)] for w in idle if w.resources == resources), 0)
        return sum(sizes.values()), reused

    def submit(self, job, resources: JobResources) -> Future:
        """Send ``job`` to an idle worker on ``resources`` (started now if there is none); the future resolves to
        its (oof, test)."""
        future: Future = Future()
        future.set_running_or_notify_cancel()
        with self._lock:
            for gone in [w for w in self._workers if w.future is None and not w.process.is_alive()]:
                self._workers.remove(gone)  # died while idle (out of memory, killed): nothing of a job was lost
            worker = next((w for w in self._workers if w.future is None and w.resources == resources), None)
            if worker is None:
                idle = [w for w in self._workers if w.future is None]  # on other GPUs: one makes room
                if idle and len(self._workers) >= self.capacity:
                    self._stop_idle(idle[0])
                worker = self._start_worker(resources)
            worker.future = future
        try:
            worker.conn.send(job)
        except OSError:  # it died just now: _wait finds its pipe closed and reports WorkerDied
            pass
        threading.Thread(target=self._wait, args=(worker, future), daemon=True,
                         name=f"wait-{job.name}-fold{job.fold}").start()
        return future

    def _start_worker(self, resources: JobResources) -> _Worker:
        """A new worker process (call with the lock held, from the runner's main thread: PR_SET_PDEATHSIG fires
        when the thread that forked the child ends)."""
        mine, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(target=_worker_main, args=(resources, theirs, os.getpid()),
                                        name=f"fold-worker-{len(self._workers) + 1}")
        process.start()
        theirs.close()
        worker = _Worker(process, mine, resources)
        self._workers.append(worker)
        return worker

    def _stop_idle(self, worker: _Worker) -> None:
        """End an idle worker (call with the lock held): it leaves its loop when told, else it is killed."""
        self._workers.remove(worker)
        try:
            worker.conn.send(None)
        except OSError:
            pass
        worker.process.join(STOP_SECONDS)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()

    def _wait(self, worker: _Worker, future: Future) -> None:
        """Wait for the worker's answer and resolve ``future``; a worker that ended without one is dropped."""
        try:
            answer = worker.conn.recv()
        except (EOFError, OSError):
            answer = None
        with self._lock:
            worker.future = None
            if answer is None and worker in self._workers:
                self._workers.remove(worker)
        if answer is None:
            worker.process.join()
            worker.conn.close()
            code = worker.process.exitcode
            how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
            future.set_exception(WorkerDied(f"the worker process ({worker.process.name}, pid {worker.process.pid}) "
                                            f"{how} before the job finished"))
        elif answer[0] == "ok":
            future.set_result(answer[1])
        else:
            error = answer[1]
            error.worker_traceback = answer[2]
            future.set_exception(error)

    def close(self) -> None:
        """End every worker: idle ones when told, running ones by SIGTERM, then SIGKILL after a few seconds."""
        with self._lock:
            workers, self._workers = list(self._workers), []
        for worker in workers:
            if worker.future is None:
                try:
                    worker.conn.send(None)
                except OSError:
                    pass
            elif worker.process.is_alive():
                worker.process.terminate()
        for worker in workers:
            worker.process.join(STOP_SECONDS)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()


def _worker_main(resources: JobResources, conn, parent: int) -> None:
    """A worker process: run each job it is sent and answer ``("ok", result)`` or ``("error", exception,
    traceback)``; ``None`` (or the runner's end closing) ends it."""
    from pipeline.cache.workers import die_with_parent
    from pipeline.machine import reset_peak_memory

    die_with_parent()
    if os.getppid() != parent:
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the runner stops jobs
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        reset_peak_memory()  # the job's peak_rss_mb is its own, not an earlier job's
        try:
            answer = ("ok", run_in_worker(job, resources))
        except BaseException as err:  # noqa: BLE001 - every failure is the runner's to report
            answer = ("error", _picklable(err), traceback.format_exc())
        conn.send(answer)


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
