"""The feature worker pool: processes that decode untrusted audio, so that a bad file costs a clip, never the run.

Extraction decodes, featurises and serialises chunks of clips in a process
pool (:func:`start_method`: forked while TensorFlow is not loaded, else
forked from a clean fork server, so workers never inherit TensorFlow's
threads), with one worker too: a decoder that crashes on a hostile file
costs that clip, never the queue (:func:`run_jobs`). Each worker is bounded
in CPU time per clip and in address space (:class:`WorkerLimits`), dies with
its parent (``PR_SET_PDEATHSIG``) and keeps freed memory for reuse
(:func:`tune_allocator`).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
from concurrent.futures.process import BrokenProcessPool
import ctypes
import dataclasses
import functools
import logging
import multiprocessing
import os
import signal
import sys
from typing import Optional, Sequence

from pipeline.cache.featurise import CPU_SECONDS_PER_AUDIO_SECOND, featurise_chunk

log = logging.getLogger(__name__)


def start_method() -> str:
    """How feature workers are started: ``fork`` while TensorFlow is not loaded here, else ``forkserver``.

    A forked worker starts in milliseconds with numpy, scipy and the pipeline
    already imported; a spawned one re-imports them (1-4 s per worker on a
    busy 2-core machine, as long as featurising thousands of whale clips).
    Forking a process that has loaded TensorFlow is unsafe (its thread pools
    and locks are not fork-aware), so then workers are forked from a fork
    server: a clean process (no TensorFlow, no threads) started once per run
    with the feature modules preloaded, which forks each worker in
    milliseconds. That matters since every cache build, even with one worker,
    decodes in child processes, and a crashed worker is replaced
    (:func:`run_jobs`). ``spawn`` where neither exists.
    """
    methods = multiprocessing.get_all_start_methods()
    if "tensorflow" not in sys.modules and "fork" in methods:
        return "fork"
    if "forkserver" in methods:
        return "forkserver"
    return "spawn"


def _context(method: str):
    """The multiprocessing context for ``method``; a fork server preloads the feature worker's modules."""
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        # librosa.filters (the mel bank; it imports numba) alone takes ~3 s to import.
        context.set_forkserver_preload(["pipeline.cache.workers", "pipeline.data.audio", "pipeline.features",
                                        "librosa.filters"])
    return context


# glibc mallopt parameters (malloc.h) and the values feature workers use.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
_TRIM_THRESHOLD = 256 << 20


def tune_allocator() -> bool:
    """Let this process's C allocator reuse freed memory instead of returning it to the kernel.

    The arithmetic allocates arrays of 0.25-4 MB per block (FFT output,
    power, mel, work arrays: scipy's FFT has no ``out=``). With glibc's
    defaults, arrays above 128 KB are fresh ``mmap``s and a freed heap top is
    trimmed, so nearly every block starts with page faults on memory the
    kernel must zero: measured 27 faults and ~75 us of system time per 2 s
    whale clip, a third of the arithmetic. With allocations up to 32 MB kept
    in the heap and the heap trimmed only above 256 MB, a worker reuses the
    same pages chunk after chunk (1 fault per clip; the whole feature stage
    in one process on 5,000 whale clips: 1,810 -> 3,400 clips/s; tested in
    tests/test_records.py). The cost is that a worker keeps
    up to ~256 MB of freed memory for reuse. Used in feature workers (and the
    benchmark's floor), not in the queue's main process. Returns False where
    the C library is not glibc (nothing changed).
    """
    import ctypes

    try:
        # The C library is already loaded: look mallopt up in the process's own symbols
        # (ctypes.util.find_library would run `ldconfig -p`, ~3 ms per worker).
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def die_with_parent() -> None:
    """Have the kernel SIGKILL this worker when its parent dies (Linux ``PR_SET_PDEATHSIG``).

    A pool worker waits for tasks on a pipe whose write end it also holds, so
    it never sees EOF: without this, the workers of a SIGKILLed runner (power
    cut of the parent, OOM killer) would wait forever, holding memory.
    Under a fork server the parent is the server, which ends with the runner.
    """
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the pipe's EOF ends the solo processes; pool workers may linger
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(0)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _init_worker(limits: Optional["WorkerLimits"] = None) -> None:
    die_with_parent()
    # A forked worker inherits the queue's SIGTERM handler (which raises in the
    # main loop); a worker should just end, as a spawned one does.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # SIGPROF ends the process: the per-clip CPU limit of featurise_chunk.
    signal.signal(signal.SIGPROF, signal.SIG_DFL)
    tune_allocator()
    if limits is not None and limits.memory_bytes:
        limit_address_space(limits.memory_bytes)
    # No BLAS / OpenMP thread limits here: the feature arithmetic calls no BLAS (pocketfft,
    # a sparse mel product, elementwise numpy), so a worker never starts such threads
    # (tests/test_records.py checks it stays at one thread). Setting a limit in a forked
    # worker with threadpoolctl made OpenBLAS start its thread pool there: 2 more threads and
    # ~50 ms more system time in the first task (measured), plus ~30 ms to find the libraries.


@dataclasses.dataclass(frozen=True)
class WorkerLimits:
    """What a feature worker may spend, so that one bad file cannot take the machine or the run down.

    Attributes
    ----------
    clip_cpu_seconds : float
        CPU time for decoding one clip; a worker past it is ended by SIGPROF
        and the clip is skipped (after a retry on its own).
    memory_bytes : int
        Address space a worker may add to what it had when it started
        (``RLIMIT_AS``); beyond it allocations fail (``MemoryError``: the clip
        is skipped as too large) instead of the OOM killer picking a process.
    """

    clip_cpu_seconds: float
    memory_bytes: int


def worker_limits(audio, workers: int, read_seconds: float) -> WorkerLimits:
    """The limits of :class:`WorkerLimits` for clips of ``audio`` (an ``AudioSettings``) and ``workers`` processes.

    ``read_seconds``: the longest audio a worker reads from one file
    (``max(audio.duration, predict.max_seconds)``: long clips are read
    further for their extra windows, :mod:`pipeline.cache.featurise`).

    CPU: 30 s + 2 s per second of ``audio.duration`` per clip (a long clip's
    second read gets 2 s per second it reads on top). Decoding and
    resampling the window of even a 768 kHz file takes well under a second
    per second of audio, so a normal clip never gets near it, while a decoder
    caught in a loop is stopped within a minute for whale-sized clips.

    Memory: 2 GiB (a worker's steady state is a few hundred MB: a task's
    audio is capped at ~64 MB, plus features, records and the allocator's
    reuse pool of up to 256 MB) plus 6 copies of the largest window a
    plausible file can need for ``read_seconds``
    (:func:`pipeline.data.audio.window_frames` at ``MAX_FILE_RATE``, capped
    by ``MAX_WINDOW_BYTES``: raw samples, the mixed window and the
    resampler's buffers), but at most this machine's RAM divided among the
    workers and the queue's own process, and at least 1 GiB.
    """
    from pipeline.data.audio import MAX_FILE_RATE, MAX_WINDOW_BYTES, window_frames

    window = min(MAX_WINDOW_BYTES, 4 * window_frames(MAX_FILE_RATE, sample_rate=audio.sample_rate,
                                                     duration=max(audio.duration, read_seconds)))
    memory = (2 << 30) + 6 * window
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = max(1 << 30, min(memory, ram // (workers + 1)))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        pass
    return WorkerLimits(clip_cpu_seconds=30.0 + CPU_SECONDS_PER_AUDIO_SECOND * audio.duration,
                        memory_bytes=int(memory))


def limit_address_space(extra_bytes: int) -> bool:
    """Let this process's address space grow by at most ``extra_bytes`` from now on (soft ``RLIMIT_AS``).

    Relative to the current size (``/proc/self/statm``), because a forked
    worker starts with its parent's mappings. Returns False where this
    cannot be set (no ``/proc`` or no ``resource`` module): nothing changed.
    """
    try:
        import resource

        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = size + extra_bytes
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        return True
    except (ImportError, OSError, ValueError):
        return False


def _pool(workers: int, limits: Optional[WorkerLimits] = None) -> cf.ProcessPoolExecutor:
    method = start_method()
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=_context(method),
                                  initializer=_init_worker, initargs=(limits,))
    if method == "fork":
        # Fork every worker now, before this process starts threads (tqdm's monitor, TensorFlow).
        for f in [pool.submit(int) for _ in range(workers)]:
            f.result()
    log.debug("feature pool: %d workers (%s)", workers, method)
    return pool


class Workers:
    """The feature worker pool; :meth:`renew` replaces it with a fresh one after a worker died.

    Even ``cache.workers: 1`` decodes in a child process: a decoder that
    crashes (a segfault in a C library on a hostile file) must cost one clip,
    never the queue's own process.
    """

    def __init__(self, workers: int, limits: Optional[WorkerLimits]):
        self.workers, self.limits = workers, limits
        self.executor = _pool(workers, limits)
        self.generation = 0  # counts renewals
        self.task = functools.partial(featurise_chunk, clip_cpu_seconds=limits.clip_cpu_seconds if limits else None)
        self.solo: Optional[_Solo] = None

    def submit(self, fn, job):
        return self.executor.submit(fn, job)

    def job_seconds(self, job) -> Optional[float]:
        """Wall time a pool task of ``job`` may take once awaited (:func:`solo_wall_seconds` per clip), or None."""
        wall = solo_wall_seconds(self.limits)
        return None if wall is None else wall * max(1, len(job[0]))

    def kill(self) -> None:
        """End the pool's worker processes (one is stuck): the pool breaks, its unfinished tasks fail."""
        for process in list((getattr(self.executor, "_processes", None) or {}).values()):
            try:
                process.kill()
            except (OSError, ValueError, AttributeError):  # already gone
                pass

    def renew(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.executor = _pool(self.workers, self.limits)
        self.generation += 1

    def one_by_one(self, job) -> dict:
        """Run ``job``'s clips one at a time, each alone in a child process (:class:`_Solo`).

        A clip whose process dies is skipped with the reason (the signal);
        the results of the others are merged in order into one job result.
        """
        if self.solo is None:
            self.solo = _Solo(self.limits)
        rows, rest = job[0], tuple(job[1:])
        merged = {"ids": [], "records": [], "sizes": [], "skipped": [], "notes": [],
                  "window_ids": [], "window_records": [], "window_sizes": [], "window_notes": []}
        for row in rows:
            result = self.solo.run(((row,), *rest))
            if isinstance(result, str):
                log.warning("feature worker died on %s (%s): %s", row[0], row[1], result)
                merged["skipped"].append((row[0], row[1], result))
                continue
            for key, value in result.items():
                if isinstance(value, bytes):
                    merged[key].append(value)  # joined below
                else:
                    merged[key].extend(value)
        for key in ("records", "window_records"):
            merged[key] = b"".join(merged[key])
        return merged

    def shutdown(self, **kwargs) -> None:
        self.executor.shutdown(**kwargs)
        if self.solo is not None:
            self.solo.close()


def _solo_main(conn, limits: Optional[WorkerLimits], parent_end=None) -> None:
    """The loop of a :class:`_Solo` process: receive a job, acknowledge it, send its result (or ``("error", text)``).

    Ends on ``None``, or when the parent is gone. That is seen as EOF on
    ``conn``: the copy of the parent's end ``parent_end`` that a forked child
    inherits is closed first. Not from the parent's pid: under a fork server
    this process is the server's child, not the queue's. As a second sign
    (a sibling forked later may also hold the parent's end), this process
    being reparented ends it too: its parent, the queue or the fork server
    (which ends with the queue), died.
    """
    if parent_end is not None:
        parent_end.close()
    _init_worker(limits)
    cpu = limits.clip_cpu_seconds if limits else None
    born_of = os.getppid()
    while True:
        try:
            while not conn.poll(1.0):
                if os.getppid() != born_of:
                    return
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:  # the parent is done
            return
        try:
            conn.send(_SOLO_ACK)  # the job arrived: from now on a death is this job's doing
            conn.send(featurise_chunk(job, clip_cpu_seconds=cpu))
        except (EOFError, OSError):  # the parent is gone
            return
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


_SOLO_ACK = "received"


def solo_wall_seconds(limits: Optional[WorkerLimits]) -> Optional[float]:
    """Wall time one clip may take alone (:class:`_Solo`): 4 x its CPU limit + 60 s, None without limits.

    Generous: it only stops a decoder blocked on I/O (a hung network mount),
    which the CPU limit never does.
    """
    if limits is None or not limits.clip_cpu_seconds:
        return None
    return 4 * limits.clip_cpu_seconds + 60.0


class _Solo:
    """One child process that runs jobs one at a time and says how it died when it does.

    Used to retry clips one by one after a worker died: a clip whose process
    dies (or takes more than :func:`solo_wall_seconds`) is the culprit. The
    process is restarted for the next clip. A process found dead before it
    acknowledged a job (it died idle, e.g. its parent check misfired) is no
    culprit: it is restarted once and the job sent again.
    """

    def __init__(self, limits: Optional[WorkerLimits]):
        self.limits = limits
        self.wall = solo_wall_seconds(limits)
        self.context = _context(start_method())
        self.process = self.conn = None

    def _start(self) -> None:
        self.conn, child = self.context.Pipe()
        self.process = self.context.Process(target=_solo_main, args=(child, self.limits, self.conn), daemon=True,
                                            name="feature-solo")
        self.process.start()
        child.close()

    def _deliver(self, job) -> bool:
        """Send ``job`` and wait for its acknowledgement; False when the process died without it."""
        if self.process is not None and not self.process.is_alive():
            self.close()
        if self.process is None:
            self._start()
        try:
            self.conn.send(job)
            if not self.conn.poll(self.wall):
                return False
            return self.conn.recv() == _SOLO_ACK
        except (EOFError, OSError):
            return False

    def run(self, job):
        """The job's result dict, or a skip reason (str) when the process died running it (or hung)."""
        if not self._deliver(job):
            self._kill()  # died idle, not running this job: a fresh process gets it
            if not self._deliver(job):
                self._kill()
                return "decoder process could not be started or died before receiving the clip"
        try:
            if not self.conn.poll(self.wall):
                self._kill()
                return (f"decoding took more than {self.wall:g} s of wall time (blocked I/O?); stopped")
            result = self.conn.recv()
        except (EOFError, OSError):
            self.process.join()
            reason = _death_reason(self.process.exitcode, self.limits)
            self.close()
            return reason
        if isinstance(result, tuple):
            raise RuntimeError(f"feature extraction failed: {result[1]}")
        return result

    def _kill(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.kill()
        self.close()

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.send(None)
            except OSError:  # it died
                pass
            self.conn.close()
        if self.process is not None:
            self.process.join(timeout=5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        self.process = self.conn = None


def _death_reason(exitcode: Optional[int], limits: Optional[WorkerLimits]) -> str:
    """Why a clip was skipped when the process decoding it alone died with ``exitcode``."""
    if exitcode is not None and exitcode < 0:
        number = -exitcode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown signal"
        if number == signal.SIGPROF and limits is not None:
            return (f"decoding took more than {limits.clip_cpu_seconds:g} s of CPU time; stopped "
                    f"(signal {number}, {name})")
        if number == signal.SIGKILL:
            return f"decoder process was killed (signal {number}, {name}; out of memory?)"
        return f"decoder crashed (signal {number}, {name})"
    return f"decoder process exited unexpectedly (exit status {exitcode})"


def run_jobs(jobs: Sequence, pool, window: int, task=featurise_chunk):
    """Yield job results in order with at most ``window`` jobs in flight (bounded memory).

    ``pool``: a :class:`Workers` (or anything with ``submit``), None to run
    here. When a worker dies (a segfault in a decoder, the OOM killer,
    ``os._exit``), the pool breaks and every unfinished job fails with
    ``BrokenProcessPool``: each such job is rerun clip by clip, every clip
    alone in a child process (:meth:`Workers.one_by_one`), so only a clip
    that kills its process again is lost, skipped with the signal named; the
    pool is replaced and the remaining jobs go on. The results, and so the
    shards, are those of a build without the culprit. A task awaited for
    longer than ``pool.job_seconds(job)`` (a worker blocked on I/O) is
    treated the same way: the pool's workers are killed, and a clip alone
    past :func:`solo_wall_seconds` is skipped.
    """
    if pool is None:
        for job in jobs:
            yield task(job)
        return
    task = getattr(pool, "task", task)
    pending: collections.deque = collections.deque()  # (job, future, pool generation), in job order
    it = iter(jobs)
    done = object()

    def renew(generation):
        if generation == pool.generation:  # the first sign that this pool broke: replace it once
            log.warning("a feature worker process died; retrying the clips of its unfinished tasks one by one")
            pool.renew()

    def submit_more():
        while len(pending) < window:
            job = next(it, done)
            if job is done:
                return
            generation = getattr(pool, "generation", 0)
            try:
                future = pool.submit(task, job)
            except BrokenProcessPool:  # a worker died since the last result was collected
                renew(generation)
                generation, future = pool.generation, pool.submit(task, job)
            pending.append((job, future, generation))

    submit_more()
    while pending:
        job, future, generation = pending.popleft()
        seconds = pool.job_seconds(job) if hasattr(pool, "job_seconds") else None
        try:
            result = future.result() if seconds is None else future.result(timeout=seconds)
        except BrokenProcessPool:
            renew(generation)
            result = pool.one_by_one(job)
        except cf.TimeoutError:  # a worker blocked (I/O on a hung mount uses no CPU): stop the pool
            log.warning("a feature task took more than %g s of wall time; stopping the pool and retrying "
                        "its clips one by one", seconds)
            pool.kill()
            renew(generation)
            result = pool.one_by_one(job)
        submit_more()
        yield result
