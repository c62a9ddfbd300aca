"""Clips longer than audio.duration are predicted by sliding windows (issue 15's acceptance test).

Training sees each clip's first ``audio.duration`` seconds; a longer clip is
predicted over windows of that length and the windows are combined (max). A
3 s test clip whose only call lies in its last second must get the prediction
of that call cut into a 2 s clip - not that of its call-less first two seconds,
which is all the model saw before windowed prediction.
"""

import textwrap

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipeline.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_report")]  # the report: tests/test_report.py

RATE = 2000


def _call(n, rng, start):
    """A 0.4 s upsweep (150-350 Hz) at ``start`` s in ``n`` samples of noise."""
    x = 0.05 * rng.standard_normal(n)
    t = np.arange(int(0.4 * RATE)) / RATE
    first = int(start * RATE)
    x[first: first + len(t)] += 0.6 * np.sin(2 * np.pi * (150 * t + 250 * t ** 2))
    return x.astype(np.float32)


def test_a_call_late_in_an_over_long_clip_is_found_by_the_windows(tmp_path):
    rng = np.random.default_rng(0)
    audio = tmp_path / "audio"
    audio.mkdir()
    rows = []
    for i in range(80):
        label = i % 2
        x = _call(2 * RATE, rng, rng.uniform(0.1, 1.5)) if label else 0.05 * rng.standard_normal(2 * RATE)
        sf.write(audio / f"c{i}.wav", x.astype(np.float32), RATE)
        rows.append({"file": f"c{i}.wav", "label": label})
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)

    long = _call(3 * RATE, rng, 2.3)  # the call lies in [2.3, 2.7] s: only in the last second
    test_audio = tmp_path / "test_audio"
    test_audio.mkdir()
    sf.write(test_audio / "long.wav", long, RATE)
    sf.write(test_audio / "late.wav", long[RATE:], RATE)  # [1, 3] s: the call, cut into a 2 s clip
    sf.write(test_audio / "early.wav", long[: 2 * RATE], RATE)  # [0, 2] s: no call
    pd.DataFrame({"file": ["long.wav", "late.wav", "early.wav"], "label": [0, 0, 0]}).to_csv(
        tmp_path / "test.csv", index=False)

    queue = tmp_path / "queue.yaml"
    queue.write_text(textwrap.dedent(f"""
        defaults:
          data: {{name: table, csv: train.csv, audio_dir: audio, test_csv: test.csv, test_audio_dir: test_audio}}
          audio: {{sample_rate: {RATE}, duration: 2.0}}
          features: {{name: mel, n_fft: 256, hop_length: 64, n_mels: 32}}
          cache: {{workers: 1}}
          folds: {{n_splits: 2, seed: 0}}
          train: {{epochs: 4, batch_size: 8, learning_rate: 0.003, patience: 4}}
          predict: {{hop_seconds: 1.0, aggregate: max}}
        experiments:
          - name: cnn
            model: {{name: inceptiontime, filters: 8, depth: 2, bottleneck: 8, kernel_sizes: [4, 8, 16]}}
        output: out
    """))
    assert main([str(queue)]) == 0
    test = pd.read_csv(tmp_path / "out" / "cnn" / "test.csv").set_index("id")["pred"]
    ids = {name: next(i for i in test.index if name in i) for name in ("long", "late", "early")}
    p = {name: float(test[i]) for name, i in ids.items()}
    # The model tells the call from noise, so the comparison below means something.
    assert p["late"] - p["early"] > 0.1, p
    assert p["long"] == pytest.approx(p["late"], abs=1e-5), p
