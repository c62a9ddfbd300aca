"""One runner per output folder.

Two runners on one output folder overwrite each other's checkpoints, status
files and summary. :func:`acquire` takes an exclusive ``flock`` on
``output/.queue.lock`` for the whole run and writes the holder (pid, host,
start time, output) into it as text. A second runner gets :class:`LockBusy`
at once, whose message names the holder; ``run_queue.py`` exits with status
3 (``EXIT_BUSY``), distinct from 2 (an invalid queue file), so a script can
tell "try again later" from "fix the file".

The kernel releases a ``flock`` when its process dies, however it dies
(SIGKILL, OOM killer, power cut of a local disk), so a lock left by a killed
runner is never stale: the next runner takes it and says whose it was. The
lock file itself is never deleted or replaced (a new inode would let two
runners each hold "the" lock); a runner that ends normally empties it.

A remote output (``gs://...``) cannot be locked with ``flock``: its lock is
a local file keyed by the output URL (in the temporary folder), which
guards against a second runner on the same machine only.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

from pipeline import io, layout
from pipeline.errors import OutputError

EXIT_BUSY = 3


# Descriptors of the locks this process holds. A forked child (a feature
# worker) inherits them, and a flock lives as long as any descriptor of it:
# a worker that outlived a SIGKILLed runner would keep the output folder
# locked. Each forked child closes its copies at once (the parent's lock is
# unaffected: it holds its own descriptor).
_HELD_FDS: set = set()


def _close_inherited_locks() -> None:
    for fd in list(_HELD_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_FDS.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


class LockBusy(OutputError):
    """Another live runner holds the output folder's lock."""


@dataclass
class RunnerLock:
    """A held lock: release it with :meth:`release` (or use it as a context manager)."""

    path: str
    fd: int
    previous: Optional[dict]  # the holder recorded by a runner that died holding the lock, else None

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            os.ftruncate(self.fd, 0)  # "nobody": a non-empty file at the next start means its writer died
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            _HELD_FDS.discard(self.fd)
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "RunnerLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_path(output_dir: str) -> str:
    """The lock file of an output folder (a local file also for a remote output)."""
    if io.is_remote(output_dir):
        digest = hashlib.sha256(output_dir.rstrip("/").encode()).hexdigest()[:24]
        return os.path.join(tempfile.gettempdir(), "audio-pipeline-locks", f"{digest}.lock")
    return os.path.join(output_dir, layout.LOCK)


def acquire(output_dir: str) -> RunnerLock:
    """Take the output folder's lock, or raise :class:`LockBusy` naming the runner that holds it.

    ``output_dir`` must exist when local. Never waits: a queue runs for
    hours, so the second runner is better told at once.
    """
    path = lock_path(output_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise
        holder = _read_holder(fd, wait=1.0)
        os.close(fd)
        raise LockBusy(busy_message(output_dir, holder)) from None
    previous = _read_holder(fd)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
          "output": output_dir}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    os.fsync(fd)
    _HELD_FDS.add(fd)
    return RunnerLock(path=path, fd=fd, previous=previous)


def busy(output_dir: str) -> Optional[str]:
    """:func:`busy_message` when another runner holds the output folder's lock now, else None; takes nothing and
    creates nothing (for a command that found the outputs half written and should say why)."""
    try:
        fd = os.open(lock_path(output_dir), os.O_RDWR | os.O_CLOEXEC)
    except OSError:  # no lock file: no runner ever held it
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return busy_message(output_dir, _read_holder(fd, wait=1.0))
    finally:
        os.close(fd)  # closing releases a lock taken here
    return None


def busy_message(output_dir: str, holder: Optional[dict]) -> str:
    if holder:
        who = (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}")
    else:
        who = "a runner that has not recorded itself yet"
    return (f"output: {output_dir} is in use by another runner ({who}; lock file {lock_path(output_dir)}). "
            f"Wait for it to finish or stop it, or choose another output folder")


def takeover_message(holder: dict) -> str:
    """The log line when a dead runner's lock is taken over."""
    return (f"previous runner pid {holder.get('pid')} on host {holder.get('host')} (started "
            f"{holder.get('started')}) is gone; taking over its output folder")


def _read_holder(fd: int, wait: float = 0.0) -> Optional[dict]:
    """The holder recorded in the lock file; waits up to ``wait`` s for a runner that has just taken it."""
    deadline = time.monotonic() + wait
    while True:
        try:
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            holder = json.loads(text) if text else None
        except ValueError:  # half-written by a runner that is writing it right now, or not ours
            holder = None
        if isinstance(holder, dict) or time.monotonic() >= deadline:
            return holder if isinstance(holder, dict) else None
        time.sleep(0.05)
