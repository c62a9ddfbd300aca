"""What the machine offers a run: its cores and the memory available now (a container's limit included).

Kept apart from the executors and the fold loop, which both ask, so that
neither has to import the other.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple


def machine_core_ids() -> Tuple[int, ...]:
    """The ids of the cores this process may run on, ascending (``()`` where the OS does not say: not Linux)."""
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except AttributeError:
        return ()


def machine_cores() -> int:
    """The cores this process may run on (TensorFlow's default thread count)."""
    return len(machine_core_ids()) or os.cpu_count() or 1


def pin_process(cores: Tuple[int, ...]) -> bool:
    """Run every thread of this process on ``cores`` only; threads it starts later inherit that (Linux's CPU
    affinity). False when the OS refuses (not Linux, or cores this process may not use): it runs where it did."""
    if not hasattr(os, "sched_setaffinity"):
        return False
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
        except OSError:
            return False
    return True


def reset_peak_memory() -> None:
    """Start this process's peak resident memory (``ru_maxrss``, ``VmHWM``) again from its current size, so that
    a worker reports each job's own peak (Linux; elsewhere the peak stays the process's)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def resident_memory(pid: int) -> int:
    """Bytes of process ``pid``'s resident memory now (Linux ``VmRSS``; 0 when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def available_memory() -> int:
    """Bytes of memory available for new allocations now: Linux ``MemAvailable`` (else the free pages), at most
    what the process's cgroup (a container's memory limit) has left."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    left = _cgroup_left()
    return available if left is None else min(available, left)


def _cgroup_left(proc: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> Optional[int]:
    """Bytes the process's cgroup (v2, or v1's memory controller) may still allocate under its memory limit;
    None without a limit."""
    try:
        with open(proc) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for line in lines:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and not controllers:
            mount, limit_file, usage_file = root, "memory.max", "memory.current"
        elif "memory" in controllers.split(","):
            mount, limit_file, usage_file = (os.path.join(root, "memory"), "memory.limit_in_bytes",
                                             "memory.usage_in_bytes")
        else:
            continue
        folder = os.path.join(mount, path.lstrip("/"))
        try:
            with open(os.path.join(folder, limit_file)) as f:
                limit = f.read().strip()
            if limit == "max" or int(limit) >= physical:
                continue
            with open(os.path.join(folder, usage_file)) as f:
                return max(0, int(limit) - int(f.read().strip()))
        except (OSError, ValueError):
            continue
    return None
