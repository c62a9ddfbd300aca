"""Fold jobs in a queue-wide pool (issue 16): the ``execution:`` section and ``--jobs``, same outputs with one
job in this process as with two in child processes, a failing fold, a killed worker."""

import dataclasses
import json
import os
import signal
import textwrap
import threading
import time

import pandas as pd
import pytest

from pipeline import schema
from pipeline.cli import main
from pipeline.config import load_queue

GOOD = """
defaults:
  data: {name: synthetic_whale, n_train: 40, n_test: 10}
  features: complexity
  train: {epochs: 1}
experiments:
  - name: a
    model: inceptiontime
blend: {method: mean}
"""


def write(folder, text):
    path = folder / "queue.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


BAD = [
    ("execution: {jobs: 0}", "execution.jobs", "expected auto or a whole number from 1"),
    ("execution: {jobs: many}", "execution.jobs", "expected auto or a whole number from 1"),
    ("execution: {jobs: true}", "execution.jobs", "expected auto or a whole number from 1"),
    ("execution: {backend: slurm}", "execution.backend", f"choose one of: {', '.join(schema.EXECUTORS)}"),
    ("execution: {gpus_per_job: 0}", "execution.gpus_per_job", "fraction in (0, 1]"),
    ("execution: {gpus_per_job: 1.5}", "execution.gpus_per_job", "fraction in (0, 1]"),
    ("execution: {retries: -1}", "execution.retries", "from 0 to"),
    ("execution: {address: auto}", "execution.address", "only the ray backend"),
    ("execution: {backend: ray, address: 'my cluster'}", "execution.address", "host:port"),
    ("execution: {workers: 2}", "execution.workers", "unknown key"),
    ("execution: 4", "execution", "expected a mapping"),
]


@pytest.mark.parametrize("text,key_path,words", BAD, ids=[case[0] for case in BAD])
def test_bad_execution_values_exit_2_naming_the_key(tmp_path, capsys, text, key_path, words):
    path = write(tmp_path, GOOD + text + "\n")
    before = sorted(os.listdir(tmp_path))
    assert main([path]) == 2
    err = capsys.readouterr().err
    assert any(line.strip().startswith(f"{key_path}:") and words in line for line in err.splitlines()), err
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("jobs", ["0", "two", "-1", "1.5", ""])
def test_bad_jobs_flag_exits_2(tmp_path, capsys, jobs):
    path = write(tmp_path, GOOD)
    before = sorted(os.listdir(tmp_path))
    assert main([path, "--jobs", jobs]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --jobs: expected auto or a whole number from 1"), err
    assert sorted(os.listdir(tmp_path)) == before


def test_execution_section_and_the_jobs_flag_over_it(tmp_path, monkeypatch):
    path = write(tmp_path, GOOD + "execution: {jobs: auto, gpus_per_job: 0.5, retries: 0}\n")
    assert load_queue(path).execution == schema.ExecutionSettings(jobs="auto", gpus_per_job=0.5, retries=0)
    assert load_queue(write(tmp_path, GOOD)).execution == schema.ExecutionSettings(backend="local", jobs=1, retries=2)
    import pipeline.queue

    seen = []
    monkeypatch.setattr(pipeline.queue, "run", lambda queue, **kwargs: seen.append(queue.execution) or 0)
    path = write(tmp_path, GOOD + "execution: {jobs: 3, retries: 1}\n")
    assert main([path, "--jobs", "auto"]) == 0 and main([path, "--jobs", "2"]) == 0 and main([path]) == 0
    assert [(s.jobs, s.retries) for s in seen] == [("auto", 1), (2, 1), (3, 1)]


def test_auto_jobs_and_gpu_slots(monkeypatch):
    from pipeline.executors import local

    monkeypatch.setattr(local, "cpu_cores", lambda: 8)
    monkeypatch.setattr(local, "core_ids", lambda: tuple(range(8)))
    monkeypatch.setattr(local, "visible_gpus", lambda: ())
    cpu = local.LocalExecutor(schema.ExecutionSettings(jobs="auto"))
    # Every job has TensorFlow's default thread count (a fold's numbers depend on it), never cores // jobs.
    assert (cpu.capacity, cpu.resources()) == (8, local.JobResources(threads=8, gpus=(), cores=(0,)))
    assert local.LocalExecutor(schema.ExecutionSettings(jobs=2)).resources().threads == 8
    monkeypatch.setattr(local, "visible_gpus", lambda: (0, 1))
    two_per_gpu = local.LocalExecutor(schema.ExecutionSettings(jobs="auto", gpus_per_job=0.5))
    assert two_per_gpu.capacity == 4 and two_per_gpu.resources().gpus == (0,)
    two_per_gpu._workers += [local._Worker(None, None, local.JobResources(threads=8, gpus=gpus), future=job)
                             for job, gpus in (("job 1", (0,)), ("job 2", (1,)), ("job 3", (0,)), (None, (1,)))]
    assert two_per_gpu.resources().gpus == (1,)  # the GPU with the fewest running jobs (an idle worker runs none)
    assert local.gpu_slots((0, 1, 2, 3), 2) == [(0, 1), (2, 3)]
    assert local.LocalExecutor(schema.ExecutionSettings(jobs="auto")).capacity == 2


def test_cpu_job_slots_each_get_cores_of_their_own(monkeypatch):
    from pipeline.executors import local

    assert local.core_slots(tuple(range(8)), 3) == [(0, 1, 2), (3, 4, 5), (6, 7)]
    assert local.core_slots((0, 1), 2) == [(0,), (1,)]
    assert local.core_slots((0, 1), 3) == [] and local.core_slots((0, 1), 1) == []  # not pinned
    monkeypatch.setattr(local, "cpu_cores", lambda: 4)
    monkeypatch.setattr(local, "core_ids", lambda: (0, 1, 2, 3))
    monkeypatch.setattr(local, "visible_gpus", lambda: ())
    two = local.LocalExecutor(schema.ExecutionSettings(jobs=2))
    first = two.resources()
    assert first == local.JobResources(threads=4, gpus=(), cores=(0, 1))  # the machine's thread count, half its cores
    two._workers.append(local._Worker(None, None, first, future="running"))
    assert two.resources().cores == (2, 3)  # the slot with no running job
    assert local.LocalExecutor(schema.ExecutionSettings(jobs=8)).resources() == local.JobResources(threads=4, gpus=())
    monkeypatch.setattr(local, "visible_gpus", lambda: (0,))
    assert local.LocalExecutor(schema.ExecutionSettings(jobs=2)).resources().cores is None  # GPU jobs: not pinned


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_a_pinned_worker_runs_every_thread_on_its_cores_with_the_machines_thread_count():
    import subprocess
    import sys

    core = min(os.sched_getaffinity(0))
    code = textwrap.dedent(f"""
        import os
        from pipeline.executors.base import JobResources, configure_process
        configure_process(JobResources(threads=2, gpus=(), cores=({core},)))
        import tensorflow as tf
        tf.linalg.matmul(tf.ones((512, 512)), tf.ones((512, 512))).numpy()  # starts TensorFlow's thread pools
        masks = set()
        for tid in os.listdir("/proc/self/task"):
            try:
                masks.add(tuple(sorted(os.sched_getaffinity(int(tid)))))
            except OSError:
                pass
        print(sorted(masks), len(os.listdir("/proc/self/task")), tf.config.threading.get_intra_op_parallelism_threads())
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    masks, threads, intra_op = out.stdout.strip().splitlines()[-1].rsplit(" ", 2)
    assert masks == f"[({core},)]" and int(threads) > 3 and intra_op == "2", out.stdout


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_pinning_to_cores_the_process_may_not_use_is_refused_and_changes_nothing():
    from pipeline.machine import pin_process

    before = os.sched_getaffinity(0)
    assert pin_process((4095,)) is False  # the worker then warns and runs on every core
    assert os.sched_getaffinity(0) == before


# ----------------------------------------------------------------------------- real runs

QUEUE = """
defaults:
  data: {name: synthetic_whale, n_train: 40, n_test: 8, seed: 5}
  features: {name: complexity, n_fft: 128, hop_length: 64, n_mels: 32}
  cache: {workers: 1, chunk_size: 4}
  folds: {n_splits: 2, seed: 0}
  train: {epochs: 2, batch_size: 8, patience: 5}
  model: {name: inceptiontime, filters: 4, depth: 2, bottleneck: 4, kernel_sizes: [4, 8]}
experiments:
  - name: a
  - name: broken
    model: {residual: true}
blend: {method: mean}
"""


@pytest.fixture
def broken_fold(monkeypatch):
    """Fold 0 of experiment ``broken`` fails inside its job (its cache folder does not exist), wherever it runs."""
    from pipeline.fold_loop import FoldPlan

    plain = FoldPlan.job

    def job(self, k):
        got = plain(self, k)
        return dataclasses.replace(got, cache_dir=got.cache_dir + "-missing") if (got.name, k) == ("broken", 0) else got

    monkeypatch.setattr(FoldPlan, "job", job)


def kill_after_first_epoch(progress_path, killed):
    """SIGKILL the worker that writes ``progress_path`` once it has finished an epoch (mid-fold)."""
    deadline = time.time() + 600
    while time.time() < deadline and not killed:
        try:
            progress = json.loads(progress_path.read_text())
        except (OSError, ValueError):
            time.sleep(0.01)
            continue
        if progress.get("epoch") == 1:
            os.kill(progress["pid"], signal.SIGKILL)
            killed.append(progress["pid"])


@pytest.mark.slow
def test_two_jobs_give_the_outputs_of_one_with_a_failing_fold_and_a_killed_worker(tmp_path, broken_fold, monkeypatch):
    from pipeline.executors.local import LocalExecutor

    monkeypatch.setattr("pipeline.report.build.write_report_safely", lambda *a, **k: None)  # not under test
    one, two = tmp_path / "one", tmp_path / "two"
    for folder in (one, two):
        folder.mkdir()
        write(folder, QUEUE)

    # --jobs 1 (the default): every fold in this process, no child process, no job.log.
    def no_child(*args):
        raise AssertionError("a child process was started with --jobs 1")

    with monkeypatch.context() as patch:
        patch.setattr(LocalExecutor, "submit", no_child)
        assert main([str(one / "queue.yaml"), "--jobs", "1"]) == 1  # broken failed
    assert not list((one / "output").rglob("job.log")) and not list((one / "output").rglob("progress.json"))

    killed = []
    watcher = threading.Thread(target=kill_after_first_epoch, daemon=True,
                               args=(two / "output" / "a" / "fold0" / "progress.json", killed))
    watcher.start()
    assert main([str(two / "queue.yaml"), "--jobs", "2"]) == 1
    watcher.join()
    assert killed, "fold 0 of a was never seen mid-fold"

    for name in ("oof.csv", "blend/submission.csv", "a/oof.csv", "a/test.csv", "a/submission.csv", "a/scores.json"):
        assert (two / "output" / name).read_bytes() == (one / "output" / name).read_bytes(), name
    timings_and_errors = ["wall_seconds", "fold_seconds", "error"]
    summaries = [pd.read_csv(f / "output" / "summary.csv").drop(columns=timings_and_errors) for f in (one, two)]
    pd.testing.assert_frame_equal(summaries[1], summaries[0])

    status = {name: json.loads((two / "output" / name / "status.json").read_text()) for name in ("a", "broken")}
    assert status["a"]["state"] == "done" and status["broken"]["state"] == "failed"
    assert "-missing" in status["broken"]["error"]
    jobs = status["a"]["jobs"]
    assert jobs["fold0"]["attempts"] == 2 and jobs["fold1"]["attempts"] == 1  # the killed worker was retried
    assert all(job["peak_rss_mb"] > 100 for job in jobs.values())
    assert "resuming after epoch 1" in (two / "output" / "a" / "fold0" / "job.log").read_text()
    # A worker runs one job after another (no fresh process, no TensorFlow import, per job).
    logs = "".join(path.read_text() for path in (two / "output").rglob("job.log"))
    assert "(its job 2)" in logs, logs


# ----------------------------------------------------------------------------- the pool and queue order, no training


class FakeExecutor:
    """Records the jobs it is given; the test resolves their futures."""

    capacity = 3

    def __init__(self, settings):
        self.submitted = []

    def resources(self):
        from pipeline.executors.base import JobResources

        return JobResources(threads=1, gpus=())

    def idle_memory(self, resources):
        return 0, 0  # no worker processes

    def submit(self, job, resources):
        from concurrent.futures import Future

        self.submitted.append((job.fold, Future()))
        return self.submitted[-1][1]

    def close(self):
        pass


def test_the_pool_waits_for_memory_and_retries_dead_workers_only(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from pipeline import scheduler
    from pipeline.executors.base import WorkerDied

    monkeypatch.setattr(scheduler.schema, "EXECUTORS", {"local": SimpleNamespace(load=lambda: FakeExecutor)})
    monkeypatch.setattr(scheduler, "available_memory", lambda: 2 * 2**30)
    pool = scheduler.JobPool(schema.ExecutionSettings(jobs=3, retries=1))
    ended = []
    for k in range(3):
        job = SimpleNamespace(name="a", fold=k, n_folds=3, exp_dir=str(tmp_path))
        pool.add(job, 2**30, lambda job, result, info: ended.append((job.fold, result, info["attempts"])),
                 lambda job, error: ended.append((job.fold, type(error).__name__)))
    submitted = pool.executor.submitted
    assert [k for k, _ in submitted] == [0, 1]  # a third job would not fit in 2 GiB
    submitted[0][1].set_exception(WorkerDied("killed"))
    pool.wait(timeout=1)
    assert [k for k, _ in submitted] == [0, 1, 0] and ended == []  # started again, before fold 2
    submitted[2][1].set_exception(WorkerDied("killed again"))
    submitted[1][1].set_exception(ValueError("a bug"))
    pool.wait(timeout=1)
    pool.wait(timeout=1)
    assert sorted(ended) == [(0, "WorkerDied"), (1, "ValueError")]  # retries used up; an error is not retried
    assert [k for k, _ in submitted] == [0, 1, 0, 2]
    submitted[3][1].set_result("predictions")
    pool.wait(timeout=1)
    assert ended[-1] == (2, "predictions", 1) and not pool.busy


def test_the_pool_counts_reused_workers_and_running_jobs_peaks(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from pipeline import io, layout, scheduler

    GIB = 2**30
    held = [(int(2.5 * GIB), int(2.5 * GIB))]  # first: an idle worker of 2.5 GiB, which the job would reuse

    class Reusing(FakeExecutor):
        def idle_memory(self, resources):
            return held.pop(0) if held else (0, 0)

    monkeypatch.setattr(scheduler.schema, "EXECUTORS", {"local": SimpleNamespace(load=lambda: Reusing)})
    monkeypatch.setattr(scheduler, "available_memory", lambda: int(4.5 * GIB))
    pool = scheduler.JobPool(schema.ExecutionSettings(jobs=3))
    infos = {}
    for k in range(5):
        job = SimpleNamespace(name="a", fold=k, n_folds=5, exp_dir=str(tmp_path))
        pool.add(job, GIB, lambda job, result, info: infos.update({job.fold: info}), lambda job, error: None)
    submitted = pool.executor.submitted
    # fold 0 in the reused worker needs 2.5 GiB + 1 GiB - WORKER_BASE; with fold 1 (a new worker, 1 GiB) beside
    # it, fold 2 no longer fits (counted as fresh workers, 3 x 1 GiB, it would)
    assert [k for k, _ in submitted] == [0, 1]
    submitted[0][1].set_result("done")
    pool.wait(timeout=1)
    assert infos[0]["estimated_mb"] == round((3.5 * GIB - scheduler.WORKER_BASE) / 2**20)
    assert [k for k, _ in submitted] == [0, 1, 2, 3]
    # fold 1's worker reports a 3.5 GiB peak: when fold 2 ends, fold 4 (1 GiB) waits, though the estimates
    # (3 x 1 GiB) would fit
    progress = layout.fold_file(str(tmp_path), 1, layout.PROGRESS)
    os.makedirs(os.path.dirname(progress), exist_ok=True)
    io.write_json(progress,
                  {"epoch": 1, "epochs": 2, "monitor": "val_auc", "value": 0.5, "peak_rss_mb": 3.5 * 1024,
                   "updated": time.time() + 1})
    submitted[2][1].set_result("done")
    pool.wait(timeout=1)
    assert [k for k, _ in submitted] == [0, 1, 2, 3]
    submitted[1][1].set_result("done")
    pool.wait(timeout=1)
    assert [k for k, _ in submitted] == [0, 1, 2, 3, 4]


def test_the_local_executor_reports_its_idle_workers_resident_memory():
    from types import SimpleNamespace

    from pipeline.executors.base import JobResources
    from pipeline.executors.local import LocalExecutor, _Worker
    from pipeline.machine import resident_memory

    executor = LocalExecutor(schema.ExecutionSettings(jobs=2))
    mine = SimpleNamespace(pid=os.getpid(), is_alive=lambda: True)  # this process stands in for a worker
    cpu, gpu0 = JobResources(threads=2, gpus=()), JobResources(threads=2, gpus=(0,))
    executor._workers = [_Worker(mine, None, cpu), _Worker(mine, None, gpu0, future=object())]  # one runs a job
    idle, reused = executor.idle_memory(cpu)
    assert resident_memory(os.getpid()) > 2**20 and 0.5 < idle / resident_memory(os.getpid()) < 2
    assert reused == idle  # the idle worker is the one a job on these resources would get
    other_idle, other_reused = executor.idle_memory(gpu0)  # the GPU-0 worker is busy: a new one would start
    assert other_reused == 0 and other_idle > 2**20
    executor._workers = []


def test_the_pool_starts_the_costliest_waiting_job_first_and_a_retried_one_before_all(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from pipeline import scheduler
    from pipeline.executors.base import WorkerDied

    class OneAtATime(FakeExecutor):
        capacity = 1

    monkeypatch.setattr(scheduler.schema, "EXECUTORS", {"local": SimpleNamespace(load=lambda: OneAtATime)})
    pool = scheduler.JobPool(schema.ExecutionSettings(jobs=1, retries=1))
    for k, cost in enumerate([1.0, 5.0, 0.0, 9.0, 5.0]):  # fold 0 starts at once: nothing else is waiting yet
        job = SimpleNamespace(name="a", fold=k, n_folds=5, exp_dir=str(tmp_path))
        pool.add(job, 0, lambda job, result, info: None, lambda job, error: None, cost=cost)
    submitted = pool.executor.submitted
    submitted[0][1].set_result("done")
    pool.wait(timeout=1)
    submitted[1][1].set_exception(WorkerDied("killed"))  # fold 3, the costliest waiting
    pool.wait(timeout=1)
    for i in (2, 3, 4):
        submitted[i][1].set_result("done")
        pool.wait(timeout=1)
    assert [k for k, _ in submitted] == [0, 3, 3, 1, 4, 2]  # equal costs: the first added first


def test_weight_uses_count_each_weight_once_per_output_position():
    import keras

    from pipeline.scheduler import job_cost, weight_uses

    inner = keras.Sequential([keras.Input((10, 4)), keras.layers.Dense(3)])  # a nested model: 15 weights x 10
    x = keras.Input((10, 2))
    h = keras.layers.Conv1D(4, 3, padding="same")(x)  # 28 weights x 10 positions
    h = inner(h)
    h = keras.layers.LSTM(5)(h)  # 4 x (5 x (3 + 5) + 5) = 180 weights x 10 input steps
    y = keras.layers.Dense(1)(keras.layers.Flatten()(h))  # 6 weights, once
    model = keras.Model(x, y)
    assert weight_uses(model) == 28 * 10 + 15 * 10 + 180 * 10 + 6
    assert job_cost(0, 10, 1000, 32) == 0  # a classical family
    assert job_cost(100, 10, 1000, 32) > job_cost(100, 5, 1000, 32) > job_cost(10, 5, 1000, 32) > 0


def test_an_experiment_waits_for_the_one_it_requires_and_fails_with_it(tmp_path, monkeypatch):
    import pipeline.queue as q
    from pipeline.config import Experiment

    names = ["a", "b", "c", "d"]
    text = GOOD.replace("  - name: a\n    model: inceptiontime\n",
                        "".join(f"  - name: {n}\n    model: inceptiontime\n" for n in names))
    queue = load_queue(write(tmp_path, text))
    requires = {"b": ("c",), "d": ("a",)}  # b waits for c, after it in the queue; d needs a, which fails
    monkeypatch.setattr(Experiment, "requires", property(lambda exp: requires.get(exp.name, ())))
    ran = []
    monkeypatch.setattr(q, "run_experiment", lambda exp, paths, force=False, memory_budget=None: ran.append(
        exp.name) or {"state": "failed" if exp.name == "a" else "done", "error": "broken"})
    failed = q._run_experiments(queue, q.Paths(queue.output_dir), names, force=False)
    assert ran == ["a", "c", "b"]
    assert failed == {"a": "broken", "d": "it requires the experiment 'a', which failed"}
