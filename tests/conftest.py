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
