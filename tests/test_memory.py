"""The input memory plan: caching a fold's examples or streaming them, by a budget that counts what the input holds."""

import os
import textwrap

import pandas as pd
import pytest

from pipeline import machine, memory
from pipeline.config import parse_queue

pytestmark = pytest.mark.usefixtures("no_report")  # the report: tests/test_report.py

MIB = 2**20


def _needs(n, example_bytes, *, per_recording=8, shuffle_buffer=2048):
    return memory.input_needs(n_examples=n, example_bytes=example_bytes, shuffle_buffer=shuffle_buffer,
                              per_epoch=n * per_recording, input_bytes=example_bytes // 12, batch_size=32,
                              unit="recordings", extra_cached=n // 3 * (example_bytes // 12))


def test_parse_batches_and_shuffle_buffer_are_bounded_in_bytes():
    recording = 5626 * 128 * 4  # a 60 s rfcx recording's log-mel (48 kHz, hop 512, 128 bands): 2.7 MiB
    assert memory.parse_batch(2048) == memory.MAX_PARSE_BATCH  # small clips: 256 per batch
    assert memory.parse_batch(recording) == memory.PARSE_BYTES // recording == 11
    assert memory.parse_batch(10 * memory.PARSE_BYTES) == 1
    assert memory.shuffle_elements(2048, 2048) == 2048  # what train.shuffle_buffer says while it is small
    assert memory.shuffle_elements(2048, recording) == memory.SHUFFLE_BYTES // recording == 372
    assert memory.shuffle_elements(10, recording) == 10


def test_streaming_holds_the_same_memory_whatever_the_number_of_recordings():
    recording = 5626 * 128 * 4
    budget = 2 * 2**30
    small, large = (memory.input_plan(_needs(n, recording), budget) for n in (945, 4727))
    assert not small.in_memory and not large.in_memory
    assert small.held == large.held  # the shuffle buffer is full from a few hundred recordings on; buffers fixed
    assert large.held < budget
    assert large.needs.cached > 12 * 2**30  # caching the full size would take 12+ GiB
    assert memory.input_plan(_needs(100, recording), budget).in_memory  # 100 recordings fit 2 GiB
    text = large.describe()
    assert "streamed" in text and "GiB" in text and "372 elements" in text and "memory_budget_gb" in text


def test_fold_strategies_count_what_a_fold_holds_and_stream_in_flat_memory():
    """The strategies' own estimates: streaming holds the same at 945 and 4,727 rfcx recordings (60 s, 48 kHz,
    hop 512, 128 bands) and at 30,000 and 300,000 whale clips; caching grows with them; labels are counted."""
    from types import SimpleNamespace

    from pipeline.fold_strategies import ClipStrategy, CropStrategy

    spec = SimpleNamespace(
        folds=SimpleNamespace(n_splits=3), pseudo=None,
        train=SimpleNamespace(shuffle_buffer=2048, batch_size=32),
        crops=SimpleNamespace(per_recording=4, crop_seconds=5.0, window_seconds=None, window_hop_seconds=None),
        audio=SimpleNamespace(sample_rate=48000), features=SimpleNamespace(params=SimpleNamespace(hop_length=512)),
        loss=SimpleNamespace(name="sed"))
    budget = 2 * 2**30
    crops = [memory.input_plan(CropStrategy().memory_needs(spec, (5626, 128), n, 0, 24 + 6 * 10, 24), budget)
             for n in (945, 4727)]
    assert [p.in_memory for p in crops] == [False, False] and crops[0].held == crops[1].held < budget
    assert crops[1].needs.cached > 4 * crops[0].needs.cached > 4 * 945 * 5626 * 128 * 4
    clips = [memory.input_plan(ClipStrategy().memory_needs(spec, (63, 4), n, 54503, 1, 1), budget)
             for n in (30000, 300000)]
    assert [p.in_memory for p in clips] == [True, True]  # 1 kB clips: even 300,000 fit
    assert clips[0].needs.cached == 30000 * (63 * 4 * 4 + 2 * 4)  # features + label row + weight column
    streamed = [memory.input_plan(ClipStrategy().memory_needs(spec, (63, 4), n, 0, 1, 1), 2**20)
                for n in (30000, 300000)]
    assert not streamed[1].in_memory and streamed[0].held == streamed[1].held


def test_default_budget_is_a_fraction_of_the_available_memory(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: 8 * 2**30)
    plan = memory.input_plan(_needs(100, 2**20))
    assert plan.budget == 2 * 2**30 and plan.in_memory and "0.25 of the memory available" in plan.describe()
    assert not memory.input_plan(_needs(3000, 2**20)).in_memory


EXPERIMENT = {"name": "a", "data": {"name": "synthetic_whale"}, "features": {"name": "mel"},
              "model": {"name": "cnn1d"}}


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_a_container_memory_limit_bounds_the_available_memory(tmp_path, version):
    """Inside a container MemAvailable is the host's; the cgroup's limit minus its usage is what is left."""
    proc = tmp_path / "cgroup"
    folder = tmp_path / "sys" / ("memory" if version == "v1" else "") / "job42"
    folder.mkdir(parents=True)
    if version == "v2":
        proc.write_text("0::/job42\n")
        limit, usage = "memory.max", "memory.current"
    else:
        proc.write_text("5:cpu:/\n4:memory:/job42\n")
        limit, usage = "memory.limit_in_bytes", "memory.usage_in_bytes"
    (folder / limit).write_text(f"{4 * 2**30}\n")
    (folder / usage).write_text(f"{3 * 2**30}\n")
    assert machine._cgroup_left(str(proc), str(tmp_path / "sys")) == 2**30
    (folder / limit).write_text("max\n" if version == "v2" else "9223372036854771712\n")  # no limit
    assert machine._cgroup_left(str(proc), str(tmp_path / "sys")) is None
    assert machine._cgroup_left(str(tmp_path / "missing"), str(tmp_path / "sys")) is None


@pytest.mark.parametrize("value", [0, -1, "lots", True, [1], 2_000_000])
def test_memory_budget_key_is_checked(tmp_path, value):
    raw = {"experiments": [EXPERIMENT], "execution": {"memory_budget_gb": value}}
    with pytest.raises(Exception, match=r"execution\.memory_budget_gb: expected GiB .* or null for automatic"):
        parse_queue(raw, source="q.yaml", base_dir=str(tmp_path))
    queue = parse_queue({"experiments": [EXPERIMENT], "execution": {"memory_budget_gb": 1.5}}, source="q.yaml",
                        base_dir=str(tmp_path))
    assert queue.execution.memory_budget == int(1.5 * 2**30)


QUEUE = """
defaults:
  cache: {workers: 1}
  folds: {n_splits: 2, seed: 0}
  train: {epochs: 2, batch_size: 8, shuffle_buffer: 16}
experiments:
  - name: sed_crops
    data: {name: synthetic_rfcx, root: DATA/rfcx, n_train: 12, n_test: 3, duration: 4.0, sample_rate: 8000, seed: 2}
    audio: {sample_rate: 8000, duration: 4.0}
    features: {name: mel, n_fft: 256, hop_length: 128, n_mels: 16}
    crops: {crop_seconds: 1.5, positive_probability: 0.8, per_recording: 2, window_hop_seconds: 1.0}
    train: {monitor: val_lwlrap}
    model: {name: sed, widths: [4, 8]}
    loss: sed
  - name: cnn_clips
    data: {name: synthetic_whale, root: DATA/whale, n_train: 40, n_test: 8, seed: 5}
    features: {name: mel, n_fft: 128, hop_length: 64, n_mels: 16}
    model: {name: inceptiontime, filters: 4, depth: 2, bottleneck: 4, kernel_sizes: [4, 8]}
    augment: {mixup_alpha: 0.2, time_shift: 0.1}
blend: {method: mean}
"""


@pytest.mark.slow
def test_streaming_gives_the_same_predictions_as_caching_in_memory(tmp_path, monkeypatch):
    """The same queue twice, with the automatic budget (examples cached in memory) and with a budget too small to
    cache anything (streamed from the shards every epoch): identical OOF and test predictions, for long
    recordings cut into crops and for clips. The shuffle buffer's byte cap is lowered so that it binds (2 of
    the tiny recordings, 9 clips) in both runs."""
    from pipeline.cli import main
    from pipeline.fold_loop import FoldPlan

    monkeypatch.setattr(memory, "SHUFFLE_BYTES", 40_000)
    planned = []
    plain_job = FoldPlan.job
    monkeypatch.setattr(FoldPlan, "job", lambda plan, k: planned.append(plain_job(plan, k).in_memory)
                        or plain_job(plan, k))
    outputs = {}
    for run, execution in (("cached", ""), ("streamed", "execution: {memory_budget_gb: 0.01}\n")):
        path = tmp_path / f"{run}.yaml"
        path.write_text(textwrap.dedent(QUEUE).replace("DATA", str(tmp_path / "data"))
                        + f"output: {tmp_path / run}\n" + execution)
        assert main([str(path)]) == 0
        outputs[run] = tmp_path / run
    assert planned == [True] * 4 + [False] * 4  # 2 experiments x 2 folds, cached then streamed
    for name in ("sed_crops", "cnn_clips"):
        logs = {run: (out / name / "run.log").read_text() for run, out in outputs.items()}
        assert "input cached in memory" in logs["cached"] and "streamed from the shards" not in logs["cached"]
        assert "input streamed from the shards every epoch" in logs["streamed"]
        assert f"shuffle buffer of {2 if name == 'sed_crops' else 9} elements" in logs["streamed"]
        for file in ("oof.csv", "test.csv"):
            cached, streamed = (pd.read_csv(out / name / file) for out in outputs.values())
            pd.testing.assert_frame_equal(cached, streamed, check_exact=True)
    assert (outputs["cached"] / "oof.csv").read_bytes() == (outputs["streamed"] / "oof.csv").read_bytes()


def test_freed_memory_goes_back_to_the_kernel():
    """Megabyte arrays freed by several threads (a streamed epoch) stay in glibc's heaps until released: the
    release brings the process's resident memory back down (else a fold's prediction would start from its
    training's high-water mark)."""
    import ctypes
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    try:
        ctypes.CDLL(None).malloc_trim
    except AttributeError:
        pytest.skip("not glibc")

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def churn(seed):
        held = [np.full(700_000, i, np.float32) for i in range(60)]  # 2.8 MB each, below the grown mmap threshold
        # The last one stays: the other 59 are freed below it, where no automatic trim of the heap's top reaches
        # (freed at random, as before, glibc's own trimming sometimes returned most of them: a flaky margin).
        return held[-1]

    big = np.ones(8_000_000, np.float32)  # 32 MB freed once: glibc raises its mmap threshold above 2.8 MB
    del big
    with ThreadPoolExecutor(3) as pool:
        pinned = list(pool.map(churn, range(3)))
    kept = rss()
    memory.release_freed_memory()
    assert rss() < kept - 300 * 2**20  # of the 3 x 59 x 2.8 MB freed
    del pinned
