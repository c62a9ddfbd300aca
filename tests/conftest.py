"""Shared pytest fixtures (keep this small: stage-specific helpers live in their test files)."""

import numpy as np
import pytest


@pytest.fixture
def rng():
    """A seeded random generator, so every test's generated data is reproducible."""
    return np.random.default_rng(20240521)
