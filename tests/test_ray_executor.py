"""Fold jobs as Ray tasks give the same fold files as the local run, also when a worker is killed mid-fold.

One Ray instance for the module: ``ray start --head`` on 127.0.0.1 with free
ports and 2 CPUs, as a user starts a cluster's head; the executor connects to
it by address. The reference is a tiny queue run with the local backend in a
fresh process (which also shows that such a run never imports Ray); the Ray
jobs are the same experiment's fold jobs, planned from that run's cache and
fold table, writing to another folder.
"""

import dataclasses
import os
import shutil
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from types import SimpleNamespace

import pytest

from pipeline.errors import OutputError, QueueError
from pipeline.executors.ray_tasks import TaskShape, check_paths, task_shape
from pipeline.registry import UnknownNameError
from pipeline.schema import ExecutionSettings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = "tiny"
QUEUE = f"""
experiments:
  - name: {EXPERIMENT}
    data: {{name: synthetic_whale, n_train: 24, n_test: 6, seed: 3}}
    features: {{name: complexity, n_fft: 128, hop_length: 64, n_mels: 16}}
    cache: {{workers: 1, chunk_size: 8}}
    folds: {{n_splits: 2, seed: 0}}
    train: {{epochs: 2, batch_size: 8}}
    model: {{name: inceptiontime, filters: 4, depth: 1, bottleneck: 4, kernel_sizes: [4]}}
"""
# Ray turns 127.0.0.1 into the machine's network address unless told it runs a one-machine instance; the
# test's traffic stays on the loopback.
ONE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def write_queue(folder, execution=None) -> str:
    """The tiny queue file in ``folder`` (with an ``execution:`` section when given); returns its path."""
    text = textwrap.dedent(QUEUE)
    if execution is not None:
        text += "execution: {" + ", ".join(f"{key}: {value}" for key, value in execution.items()) + "}\n"
    path = os.path.join(folder, "queue.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list:
    """The pids of every process below ``pid`` (read from /proc)."""
    parent = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent[int(entry)] = int(f.read().rpartition(")")[2].split()[1])
        except (ValueError, OSError):  # not a process, or it ended meanwhile
            continue
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        children = [p for p, pp in parent.items() if pp == current]
        found += children
        todo += children
    return found


def task_worker(head_pid: int, name: str):
    """The pid of the Ray worker running the task ``name`` (Ray titles it ``ray::<name>``), or None."""
    for pid in descendants(head_pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0")[0] == f"ray::{name}".encode():
                    return pid
        except OSError:
            continue
    return None


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on 127.0.0.1 with 2 CPUs (started in the background: call ``ready()`` before use)."""
    pytest.importorskip("ray")
    from ray._private import ray_constants
    from ray._private.authentication_test_utils import reset_auth_token_state

    temp = tempfile.mkdtemp(prefix="ray")  # short: Ray's socket paths must stay under 108 bytes
    port = free_port()
    command = ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
               "--disable-usage-stats", "--include-dashboard=false", f"--temp-dir={temp}",
               f"--ray-client-server-port={free_port()}", f"--dashboard-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}", "--object-store-memory=100000000"]
    # Token authentication, as a cluster should run: the head and the runner share a token (through the
    # environment, so that no file outside the test's folders is read or written).
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    log = open(os.path.join(temp, "head.log"), "w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **auth, ONE_MACHINE: "0", "TF_CPP_MIN_LOG_LEVEL": "3"})

    def ready():
        deadline = time.time() + 300
        while "Ray runtime started" not in open(log.name).read():
            assert proc.poll() is None and time.time() < deadline, open(log.name).read()
            time.sleep(0.2)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
        for name, value in auth.items():
            mp.setenv(name, value)
        reset_auth_token_state()  # Ray read its settings when it was imported
        yield SimpleNamespace(address=f"127.0.0.1:{port}", pid=proc.pid, ready=ready)
    proc.terminate()  # --block: stops the instance's processes
    proc.wait(timeout=120)
    log.close()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The tiny queue run with the local backend in a fresh process: its folder and whether it imported Ray."""
    folder = tmp_path_factory.mktemp("local")
    code = ("import sys; from pipeline.cli import main; code = main([sys.argv[1]]); "
            "print('ray imported:', 'ray' in sys.modules); sys.exit(code)")
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code, write_queue(str(folder))], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return SimpleNamespace(folder=folder, output=folder / "output", stdout=done.stdout)


def fold_jobs(queue_path: str, exp_dir: str) -> list:
    """The fold jobs of the tiny experiment, from the cache and fold table its local run wrote, into ``exp_dir``."""
    from pipeline.cache.build import ensure_features
    from pipeline.config import load_queue
    from pipeline.data import load_dataset
    from pipeline.fold_loop import plan_folds
    from pipeline.folds import ensure_folds
    from pipeline.queue import Paths

    queue = load_queue(queue_path)
    exp, paths = queue.experiment(EXPERIMENT), Paths(queue.output_dir)
    dataset = load_dataset(exp.data.name, exp.data.params)
    cache = ensure_features(dataset, paths.cache, data=exp.data, audio=exp.audio, features=exp.features,
                            cache=exp.cache, predict=exp.predict, progress=False)
    folds = ensure_folds(dataset, exp.data, exp.folds, paths.folds)
    plan = plan_folds(exp, dataset, cache, folds, exp_dir)
    return [plan.job(k) for k in range(exp.folds.n_splits)]


@pytest.mark.slow
def test_a_queue_on_ray_gives_the_local_outputs_also_when_a_worker_is_killed_mid_fold(ray_head, local_run, tmp_path):
    """``execution: {backend: ray}``: the runner (a fresh process) sends the fold jobs to the cluster; fold 1's
    Ray worker is killed once it has finished an epoch, Ray runs the task again and it resumes."""
    queue = write_queue(str(tmp_path), execution={"backend": "ray", "jobs": "auto", "address": ray_head.address})
    ray_head.ready()
    code = ("import sys; from ray._private import ray_constants; ray_constants.ENABLE_RAY_CLUSTER = False; "
            "from pipeline.cli import main; sys.exit(main([sys.argv[1]]))")
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3", ONE_MACHINE: "0"}  # + the head's token
    runner = subprocess.Popen([sys.executable, "-c", code, queue], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        fold1 = tmp_path / "output" / EXPERIMENT / "fold1"
        deadline = time.time() + 600
        while not (fold1 / "state" / "state.json").exists():
            assert time.time() < deadline and runner.poll() is None, "fold 1 never finished an epoch"
            time.sleep(0.02)
        worker = task_worker(ray_head.pid, f"{EXPERIMENT} fold 1")
        assert worker is not None
        os.kill(worker, signal.SIGKILL)
        assert not (fold1 / "done.json").exists()  # the kill landed mid-fold
        out, _ = runner.communicate(timeout=900)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 0, out[-3000:]
    got, want = tmp_path / "output", local_run.output
    for name in ("oof.csv", f"{EXPERIMENT}/oof.csv", f"{EXPERIMENT}/test.csv", f"{EXPERIMENT}/submission.csv"):
        assert (got / name).read_bytes() == (want / name).read_bytes(), name
    assert "ray imported: False" in local_run.stdout  # the local backend never starts Ray


@pytest.mark.slow
def test_a_job_that_raises_on_ray_fails_with_its_own_error(ray_head, local_run, tmp_path):
    """Not Ray's wrapping of it: the error names what to fix, and a job that raises is not retried."""
    from pipeline.executors.ray_tasks import RayExecutor

    (job, _) = fold_jobs(str(local_run.folder / "queue.yaml"), str(tmp_path / EXPERIMENT))
    ray_head.ready()
    executor = RayExecutor(ExecutionSettings(backend="ray", jobs="auto", address=ray_head.address))
    try:
        # 2 CPUs: two jobs of one core each in Ray's books; TensorFlow uses every core, as the local backend does
        assert (executor.capacity, executor.resources().threads) == (2, None)
        broken = dataclasses.replace(job, strategy="nope")
        error = executor.submit(broken, executor.resources()).exception(timeout=600)
        assert isinstance(error, UnknownNameError) and str(error).startswith("'nope' is not a fold strategy"), error
    finally:
        executor.close()


# ----------------------------------------------------------------------------- one job's share (no Ray needed)


def shape(nodes, **settings):
    return task_shape(ExecutionSettings(backend="ray", **settings), nodes)


def test_on_cpu_auto_runs_one_job_per_core_and_a_number_splits_the_cores():
    assert shape([(2, 0)], jobs="auto") == TaskShape(capacity=2, num_cpus=1, num_gpus=0.0)
    assert shape([(8, 0)], jobs=2) == TaskShape(capacity=2, num_cpus=4, num_gpus=0.0)
    # A task runs on one machine: never more cores than the largest has.
    assert shape([(16, 0), (16, 0)], jobs=1) == TaskShape(capacity=1, num_cpus=16, num_gpus=0.0)


def test_with_gpus_auto_runs_one_job_per_gpu_or_per_gpu_fraction():
    two_machines = [(8, 2), (8, 2)]
    assert shape(two_machines, jobs="auto") == TaskShape(capacity=4, num_cpus=4, num_gpus=1.0)
    assert shape(two_machines, jobs="auto", gpus_per_job=0.5) == TaskShape(capacity=8, num_cpus=2, num_gpus=0.5)
    assert shape(two_machines, jobs="auto", gpus_per_job=2) == TaskShape(capacity=2, num_cpus=8, num_gpus=2)


@pytest.mark.parametrize("nodes,gpus", [([(4, 0)], 1), ([(8, 1), (8, 1)], 2)])
def test_a_job_asking_for_more_gpus_than_a_machine_has_is_refused(nodes, gpus):
    with pytest.raises(QueueError, match=r"^execution.gpus_per_job: a job asks for \d GPU\(s\), but the largest"):
        shape(nodes, jobs="auto", gpus_per_job=gpus)


def test_a_job_with_a_relative_folder_is_refused_before_it_is_sent():
    job = SimpleNamespace(name="tiny", fold=1, cache_dir="/data/cache/features/abc", exp_dir="output/tiny")
    with pytest.raises(OutputError, match=r"^tiny fold 1: the exp_dir 'output/tiny' is a relative path"):
        check_paths(job)
    check_paths(SimpleNamespace(name="tiny", fold=1, cache_dir="gs://bucket/cache", exp_dir="/mnt/out/tiny"))
