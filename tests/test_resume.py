"""SIGKILL at several points, rerun, and the results equal an uninterrupted run.

The queue runs as a real subprocess (``python run_queue.py``) so that the kill
is as brutal as a power cut or the OOM killer. Kill points are detected from
the files the run writes: the feature cache being built, a fold's first epoch
checkpoint (the kill lands mid-training), a finished fold (between folds),
and ``output/oof.csv`` (just before the summary and the blend). The run
killed mid-fold and the last run train the folds in parallel child processes
(``--jobs 2``), which must die with the runner; the others train them in the
runner, so a fold killed in a child resumes in the runner and vice versa.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

QUEUE = """
defaults:
  data: {name: synthetic_whale, n_train: 48, n_test: 10, seed: 5}
  features: {name: complexity, n_fft: 128, hop_length: 64, n_mels: 32}
  cache: {workers: 1, chunk_size: 4}
  folds: {n_splits: 2, seed: 0}
  train: {epochs: 3, batch_size: 8, patience: 5}
  model: {name: inceptiontime, filters: 4, depth: 2, bottleneck: 4, kernel_sizes: [4, 8]}
experiments:
  - name: inceptiontime_a
    model: {residual: true, depth: 3}
blend: {method: mean}
"""


def start(folder, *args):
    """Run the queue in ``folder``; its output (appended) goes to ``folder/run.log``, read when a run fails."""
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with open(folder / "run.log", "a") as log:
        return subprocess.Popen([sys.executable, os.path.join(ROOT, "run_queue.py"), str(folder / "queue.yaml"),
                                 *args], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)


def ends_soon(pid, timeout=30):
    """Whether process ``pid`` is gone (or a zombie) within ``timeout`` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def kill_when(proc, condition, log, timeout=600):
    """SIGKILL ``proc`` as soon as ``condition()`` holds. Returns False if it ended first (successfully)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        if proc.poll() is not None:
            assert proc.returncode == 0, f"the run ended with {proc.returncode}:\n{log.read_text()[-3000:]}"
            return False
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("kill point never reached")


def results(folder):
    out = folder / "output"
    def read(path):
        return pd.read_csv(path, float_precision="round_trip")

    summary = read(out / "summary.csv").drop(columns=["wall_seconds", "fold_seconds"])  # timings
    frames = {"oof": read(out / "oof.csv"), "summary": summary, "blend": read(out / "blend" / "submission.csv")}
    for name in ("inceptiontime_a",):
        frames[name] = read(out / name / "submission.csv")
    return frames


def test_killed_runs_resume_to_the_same_results(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for folder in (reference, killed):
        folder.mkdir()
        (folder / "queue.yaml").write_text(textwrap.dedent(QUEUE))
    assert start(reference).wait(timeout=600) == 0, (reference / "run.log").read_text()[-3000:]

    out = killed / "output"
    progress = out / "inceptiontime_a" / "fold0" / "progress.json"  # written by a fold job in a child process
    points = {  # name: (condition, options of the run killed there)
        # The build's temporary folder lives from the first clip to the manifest (its shards only while written;
        # the whole build takes about 0.1 s here).
        "feature writing": (lambda: glob.glob(str(out / "cache" / "features" / "*.building")), ()),
        "mid-fold, folds in parallel": (progress.exists, ("--jobs", "2")),
        "between folds": (lambda: (out / "inceptiontime_a" / "fold0" / "done.json").exists(), ()),
        "before the blend": (lambda: (out / "oof.csv").exists(), ()),
    }
    killed_at = []
    for name, (condition, options) in points.items():
        if kill_when(start(killed, *options), condition, killed / "run.log"):
            killed_at.append(name)
            if name == "mid-fold, folds in parallel":  # the fold's child process died with the runner
                assert ends_soon(json.loads(progress.read_text())["pid"]), "a fold job outlived its runner"
        else:  # passed between two polls and the run finished: the next points start again from nothing
            shutil.rmtree(out)
    assert len(killed_at) >= 3, killed_at  # the fastest points may be passed between two polls
    assert "mid-fold, folds in parallel" in killed_at, killed_at  # its condition holds from then on: never missed
    assert start(killed, "--jobs", "2").wait(timeout=600) == 0, (killed / "run.log").read_text()[-3000:]

    want, got = results(reference), results(killed)
    for key in want:
        pd.testing.assert_frame_equal(got[key], want[key], check_exact=True, obj=key)
    # Exactly: the prediction files themselves are byte for byte those of the uninterrupted run.
    for name in ("oof.csv", "blend/submission.csv", "inceptiontime_a/submission.csv", "inceptiontime_a/test.csv"):
        assert (killed / "output" / name).read_bytes() == (reference / "output" / name).read_bytes(), name


def test_sigterm_stops_cleanly_and_says_how_to_resume(tmp_path):
    """With the folds in child processes (--jobs 2): SIGTERM stops them too."""
    (tmp_path / "queue.yaml").write_text(textwrap.dedent(QUEUE))
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "run_queue.py"), "queue.yaml", "--jobs", "2"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    progress = tmp_path / "output" / "inceptiontime_a" / "fold0" / "progress.json"  # after the job's first epoch
    deadline = time.time() + 300
    while not progress.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "state is saved. To resume: python run_queue.py queue.yaml" in out
    assert ends_soon(json.loads(progress.read_text())["pid"], timeout=2), "a fold job outlived its runner"
    status = (tmp_path / "output" / "inceptiontime_a" / "status.json").read_text()
    assert '"interrupted"' in status
    assert start(tmp_path).wait(timeout=600) == 0


def test_the_resume_command_keeps_only_and_never_repeats_force(tmp_path, monkeypatch, caplog):
    """The interrupt message is a command to copy: with --only it resumed the whole queue, and it must not say
    --force (which would start the interrupted experiments afresh)."""
    import pipeline.queue as queue_module
    from pipeline.config import load_queue

    text = textwrap.dedent(QUEUE).replace("experiments:\n", "experiments:\n  - name: other\n", 1)
    (tmp_path / "queue.yaml").write_text(text)
    queue = load_queue(str(tmp_path / "queue.yaml"))
    names = [e.name for e in queue.experiments]
    assert len(names) == 2

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(queue_module, "_run_experiments", interrupted)
    monkeypatch.chdir(tmp_path)
    for only, force, tail in ((names[:1], True, f"queue.yaml --only {names[0]}"), (None, False, "queue.yaml")):
        caplog.clear()
        assert queue_module.run(queue, only=only, force=force) == 130
        assert caplog.text.rstrip().endswith(f"To resume: python run_queue.py {tail}"), caplog.text
