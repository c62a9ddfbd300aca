"""Shared pytest fixtures (keep this small: stage-specific helpers live in their test files)."""

import numpy as np
import pytest


@pytest.fixture
def rng():
    """A seeded random generator, so every test's generated data is reproducible."""
    return np.random.default_rng(20240521)


@pytest.fixture
def no_report(monkeypatch):
    """Queue runs in this process write no HTML report: building its figures and rendering it in Chromium cost
    seconds per run, and tests/test_report.py tests it. For test files that run queues for other reasons
    (``pytestmark = pytest.mark.usefixtures("no_report")``)."""
    monkeypatch.setattr("pipeline.report.build.write_report_safely", lambda *a, **k: None)


def write_tone_clips(folder, n: int, seed: int) -> list:
    """``n`` one-second 2 kHz WAV clips ``folder/c<i>.wav``, every second one holding a 300 Hz tone in noise (an
    easy signal for tiny models); returns their ``{"file", "label"}`` rows (label ``i % 2``). Shared by test
    files (``from conftest import write_tone_clips``)."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(2000) / 2000
    rows = []
    for i in range(n):
        label = i % 2
        wave = 0.1 * rng.normal(size=t.size) + label * 0.3 * np.sin(2 * np.pi * 300 * t)
        sf.write(folder / f"c{i}.wav", wave.astype(np.float32), 2000)
        rows.append({"file": f"c{i}.wav", "label": label})
    return rows
