"""Run a command and measure its whole process tree: wall time, CPU time, peak resident memory.

``run_measured(cmd)`` starts ``cmd`` and samples ``/proc`` every ``interval``
seconds: the sum of the resident set sizes (RSS) of the process and all its
descendants (feature workers, fold-job children) at each sample; the peak
of that sum is reported. A sample can miss a spike shorter than the interval.
CPU time is ``resource.getrusage(RUSAGE_CHILDREN)`` of this process around the
run: user + system time of the command and of every descendant. This process
becomes a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``) so that
descendants orphaned by their parent - a multiprocessing forkserver and the
feature workers it started outlive the runner's Python - are reparented here
and waited for (up to ``reap_seconds`` after the command ends), and their CPU
time is counted too.
"""

from __future__ import annotations

import ctypes
import os
import resource
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Measured:
    returncode: int
    wall: float  # s
    cpu: float  # s, user + system of the tree
    peak_rss: int  # bytes, the largest sum over the tree at one sample
    peak_processes: int  # processes in the tree at that sample
    timeline: list  # [(seconds since start, bytes)] of the tree's RSS, one sample per second


def _children() -> Dict[int, List[int]]:
    """parent pid -> child pids, for every process now."""
    tree: Dict[int, List[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(name))
    return tree


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of ``root`` and of every descendant alive now, each with the children it has
    waited for (``/proc/<pid>/stat`` utime, stime, cutime, cstime). A feature worker of a forkserver is the
    forkserver's child, not ours: ``getrusage(RUSAGE_CHILDREN)`` misses it until the forkserver is reaped."""
    tree, total, todo = _children(), 0, [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime (stat fields 14-17)
        except (OSError, ValueError):
            pass
        todo.extend(tree.get(pid, ()))
    return total / TICKS


def tree_rss(root: int) -> tuple:
    """(bytes resident in ``root`` and its descendants now, number of processes)."""
    tree, total, seen, todo = _children(), 0, 0, [root]
    while todo:
        pid = todo.pop()
        total += _rss(pid)
        seen += 1
        todo.extend(tree.get(pid, ()))
    return total, seen


PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: orphans' CPU time is not counted
        pass


def _reap_orphans(seconds: float) -> None:
    """Wait for the children reparented to this process (orphaned descendants of the command)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)


def run_measured(cmd: List[str], *, interval: float = 0.25, log: Optional[str] = None, cwd: Optional[str] = None,
                 env: Optional[dict] = None, reap_seconds: float = 30.0) -> Measured:
    """Run ``cmd`` (output to the file ``log``, else inherited) and measure its process tree."""
    _become_subreaper()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = open(log, "w") if log else None
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None, cwd=cwd, env=env)
    peak = [0, 0]
    timeline = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            rss, n = tree_rss(proc.pid)
            if rss > peak[0]:
                peak[:] = [rss, n]
            t = time.perf_counter() - started
            if not timeline or t - timeline[-1][0] >= 1.0:
                timeline.append((round(t, 1), rss))
            stop.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        code = proc.wait()
    finally:
        stop.set()
        sampler.join()
        if out:
            out.close()
    wall = time.perf_counter() - started
    _reap_orphans(reap_seconds)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Measured(returncode=code, wall=wall, cpu=cpu, peak_rss=peak[0], peak_processes=peak[1], timeline=timeline)


def machine_memory() -> int:
    """Bytes of physical memory."""
    return os.sysconf("SC_PHYS_PAGES") * PAGE
