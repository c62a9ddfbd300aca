"""One runner per output folder (issue 14, class 6): a second runner is refused, a dead runner's lock taken over."""

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from pipeline import layout, lock, ownership
from pipeline.cli import main

pytestmark = pytest.mark.usefixtures("no_report")  # the report: tests/test_report.py

# A runner stand-in: takes the lock the way queue.run does, says so, then sleeps until it is killed.
HOLDER = textwrap.dedent("""
    import sys, time
    from pipeline import lock
    held = lock.acquire(sys.argv[1])
    print("held", flush=True)
    time.sleep(60)
""")


@pytest.fixture
def holder():
    """Start a process holding an output folder's lock; it is killed at the end of the test."""
    procs = []

    def start(output):
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(output)], stdout=subprocess.PIPE, text=True,
                                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_a_second_runner_is_refused_naming_the_first(tmp_path, holder):
    first = holder(tmp_path)
    with pytest.raises(lock.LockBusy) as err:
        lock.acquire(str(tmp_path))
    message = str(err.value)
    assert f"pid {first.pid}" in message and socket.gethostname() in message and str(tmp_path) in message
    assert "started 20" in message  # the first runner's start time


# A runner that forks a worker (as the feature stage does) and is then SIGKILLed: the worker lives on.
# The worker says "ready" once it runs its own code, i.e. after the fork handlers that close its copy of the lock.
# Both write their line in one os.write: with PYTHONUNBUFFERED set, print() writes the text and its newline apart,
# and the two processes' lines interleaved ("29635ready").
FORKING_HOLDER = textwrap.dedent("""
    import multiprocessing, os, sys, time
    from pipeline import lock

    def work():
        os.write(1, b"ready\\n")
        time.sleep(60)

    held = lock.acquire(sys.argv[1])
    worker = multiprocessing.get_context("fork").Process(target=work, daemon=False)
    worker.start()
    os.write(1, f"{worker.pid}\\n".encode())
    time.sleep(60)
""")


def test_a_worker_outliving_a_killed_runner_does_not_keep_its_lock(tmp_path):
    errors = tmp_path / "stderr.txt"
    with open(errors, "w") as stderr:
        runner = subprocess.Popen([sys.executable, "-c", FORKING_HOLDER, str(tmp_path)], stdout=subprocess.PIPE,
                                  stderr=stderr, text=True,
                                  cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    lines = {runner.stdout.readline().strip(), runner.stdout.readline().strip()}  # in either order
    assert "" not in lines, f"the runner ended early ({runner.wait()}): {errors.read_text()[-3000:]}"
    worker_pid = int((lines - {"ready"}).pop())
    try:
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait()
        os.kill(worker_pid, 0)  # the forked worker is still alive (an orphan, as after a power-cut of its parent)
        with lock.acquire(str(tmp_path)) as held:  # yet the next runner gets the lock
            assert held.previous["pid"] == runner.pid
    finally:
        os.kill(worker_pid, signal.SIGKILL)


def test_a_lock_left_by_a_killed_runner_is_taken_over(tmp_path, holder):
    first = holder(tmp_path)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert f'"pid": {first.pid}' in (tmp_path / layout.LOCK).read_text()  # its record is still there
    with lock.acquire(str(tmp_path)) as held:
        assert held.previous["pid"] == first.pid
        assert f"pid {first.pid}" in lock.takeover_message(held.previous)
        assert "is gone; taking over" in lock.takeover_message(held.previous)
        with pytest.raises(lock.LockBusy, match=f"pid {os.getpid()}"):
            lock.acquire(str(tmp_path))
    with lock.acquire(str(tmp_path)) as again:  # released normally: nobody to take over from
        assert again.previous is None


def test_a_remote_output_is_locked_by_a_local_file_keyed_by_its_url():
    url = "gs://bucket/run1"
    path = lock.lock_path(url)
    assert not lock.io.is_remote(path) and path == lock.lock_path(url + "/")
    assert path != lock.lock_path("gs://bucket/run2")
    with lock.acquire(url):
        with pytest.raises(lock.LockBusy, match="gs://bucket/run1"):
            lock.acquire(url)


# The data fails at once should a run ever start (a header-only train.csv): the refusal must come first.
QUEUE = """
defaults:
  data: {name: kaggle_whale, root: data}
  features: mel
  model: inceptiontime
experiments: [{name: a}]
"""


def test_the_runner_exits_3_while_another_holds_the_output(tmp_path, holder, capsys):
    (tmp_path / "queue.yaml").write_text(QUEUE)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("clip_name,label\n")
    out = tmp_path / "output"
    ownership.make_owned_dir(str(out))
    first = holder(out)
    before = sorted(os.listdir(out))
    assert main([str(tmp_path / "queue.yaml")]) == lock.EXIT_BUSY
    err = capsys.readouterr().err
    assert f"pid {first.pid}" in err and "in use by another runner" in err and "Traceback" not in err
    assert sorted(os.listdir(out)) == before  # no queue.log, no experiment folder
    # The plan takes no lock and writes nothing.
    assert main([str(tmp_path / "queue.yaml"), "--dry-run"]) == 0
    assert sorted(os.listdir(out)) == before
    # --predict and --export find nothing finished because the runner is at work: they say so (exit 3), not
    # "run the queue first" (exit 2).
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "a.wav").write_bytes(b"")
    capsys.readouterr()
    for args in (["--predict", str(tmp_path / "new")], ["--export"]):
        assert main([str(tmp_path / "queue.yaml"), *args]) == lock.EXIT_BUSY, args
        err = capsys.readouterr().err
        assert f"pid {first.pid}" in err and "in use by another runner" in err, err
    assert sorted(os.listdir(out)) == before
    first.kill()
    first.wait()
    assert main([str(tmp_path / "queue.yaml"), "--export"]) == 2  # the lock went with its runner
    assert "--export: no finished experiment" in capsys.readouterr().err
