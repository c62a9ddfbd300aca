"""The queue file's schema: every section and every component's parameters.

This module is plain Python (no TensorFlow, no numpy) so that a queue file can be
validated in a fraction of a second before any work starts. Each component kind
(data source, features, model, loss, blend method) is a dict from name to a
frozen dataclass of parameters; the stage that implements the component
registers its implementation under the same name (a test checks both agree).

Field metadata carries the validation rules read by :mod:`pipeline.config`:
``min`` / ``max`` (inclusive), ``min_exclusive``, ``choices`` and ``path``
(``"dir"`` or ``"file"``: resolved relative to the queue file and, with
``must_exist``, checked).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


def rule(default, **metadata):
    """A dataclass field with a default and validation metadata (see module doc)."""
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults so configs stay frozen")
    return field(default=default, metadata=metadata)


# ----------------------------------------------------------------------------- data sources


@dataclass(frozen=True)
class KaggleWhaleParams:
    """Kaggle right-whale layout: ROOT/train.csv (clip_name,label), ROOT/train/*.aiff, ROOT/test/*.aiff."""

    root: str = rule("input/whale", path="dir", must_exist=True)


@dataclass(frozen=True)
class SyntheticWhaleParams:
    """Synthetic right-whale data written in the kaggle_whale layout on first use."""

    root: Optional[str] = rule(None, path="dir")  # default: input/<dataset name>
    n_train: int = rule(2000, min=10)
    n_test: int = rule(500, min=0)
    positive_fraction: float = rule(0.3, min_exclusive=0.0, max=0.9)
    seed: int = rule(0, min=0)


@dataclass(frozen=True)
class TableParams:
    """A CSV listing audio files and labels; audio in a folder."""

    csv: str = rule("input/train.csv", path="file", must_exist=True)
    audio_dir: str = rule("input/audio", path="dir", must_exist=True)
    file_column: str = rule("file")
    label_column: str = rule("label")
    group_column: Optional[str] = rule(None)
    test_csv: Optional[str] = rule(None, path="file", must_exist=True)
    test_audio_dir: Optional[str] = rule(None, path="dir", must_exist=True)


DATA_SOURCES = {
    "kaggle_whale": KaggleWhaleParams,
    "synthetic_whale": SyntheticWhaleParams,
    "table": TableParams,
}


@dataclass(frozen=True)
class AudioSettings:
    """How every clip is decoded before featurising."""

    sample_rate: int = rule(2000, min=100, max=384000)
    duration: float = rule(2.0, min_exclusive=0.0, max=3600.0)  # seconds; clips are padded/cropped
    # A clip whose non-finite samples are at most this fraction is repaired (set to 0); else skipped.
    max_nonfinite_fraction: float = rule(0.01, min=0.0, max=1.0)
    # The experiment fails instead of training on scraps when more files than this are bad.
    max_bad_fraction: float = rule(0.2, min=0.0, max=1.0)


# ----------------------------------------------------------------------------- features


@dataclass(frozen=True)
class MelParams:
    """Log-mel spectrogram, time-major [frames, n_mels], in dB (ref 1.0)."""

    n_fft: int = rule(256, min=8, max=65536)
    hop_length: int = rule(64, min=1, max=65536)
    n_mels: int = rule(64, min=1, max=512)
    fmin: float = rule(0.0, min=0.0)
    fmax: Optional[float] = rule(None, min_exclusive=0.0)  # None: sample_rate / 2
    top_db: Optional[float] = rule(80.0, min_exclusive=0.0)


@dataclass(frozen=True)
class ComplexityParams:
    """Per-frame [H, C_SQ, C_JSD, C_TV] of a mel or linear power spectrum, [frames, 4]."""

    n_fft: int = rule(256, min=8, max=65536)
    hop_length: int = rule(32, min=1, max=65536)
    spectrum: str = rule("mel", choices=("mel", "linear"))
    n_mels: int = rule(64, min=2, max=512)
    fmin: float = rule(0.0, min=0.0)
    fmax: Optional[float] = rule(None, min_exclusive=0.0)


@dataclass(frozen=True)
class WaveformParams:
    """The decoded waveform itself, [samples], peak-normalised to [-1, 1]."""

    normalize: bool = rule(True)


FEATURES = {"mel": MelParams, "complexity": ComplexityParams, "waveform": WaveformParams}


@dataclass(frozen=True)
class CacheSettings:
    """Feature-cache writing: process pool and shard size."""

    workers: int = rule(0, min=0, max=256)  # 0: os.cpu_count()
    shard_mb: float = rule(100.0, min_exclusive=0.0)
    chunk_size: int = rule(64, min=1, max=100000)  # clips per worker task


# ----------------------------------------------------------------------------- folds


@dataclass(frozen=True)
class FoldSettings:
    """Stratified K-fold (grouped when the data has a group column); shared by every experiment."""

    n_splits: int = rule(5, min=2, max=100)
    seed: int = rule(42, min=0)


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class InceptionTimeParams:
    """InceptionTime (Fawaz et al. 2020) over a time-major series [T, C]."""

    filters: int = rule(32, min=1, max=1024)
    depth: int = rule(6, min=1, max=60)
    kernel_sizes: tuple = rule((1, 2, 4))
    bottleneck: int = rule(32, min=0, max=1024)  # 0: no bottleneck
    residual: bool = rule(False)
    dropout: float = rule(0.0, min=0.0, max=0.95)


MODELS = {"inceptiontime": InceptionTimeParams}


# ----------------------------------------------------------------------------- losses


@dataclass(frozen=True)
class BCEParams:
    """Binary cross-entropy (multiclass data gets categorical cross-entropy)."""

    label_smoothing: float = rule(0.0, min=0.0, max=0.5)


LOSSES = {"bce": BCEParams}


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainSettings:
    """Per-fold training loop."""

    epochs: int = rule(20, min=1, max=10000)
    batch_size: int = rule(64, min=1, max=65536)
    learning_rate: float = rule(1e-3, min_exclusive=0.0, max=10.0)
    patience: int = rule(5, min=1, max=10000)  # early-stopping patience, epochs
    monitor: str = rule("val_auc", choices=("val_auc", "val_loss"))
    seed: int = rule(0, min=0)
    shuffle_buffer: int = rule(2048, min=1)


# ----------------------------------------------------------------------------- blending


@dataclass(frozen=True)
class MeanBlendParams:
    """Plain mean of the experiments' predictions."""


@dataclass(frozen=True)
class RankMeanBlendParams:
    """Mean of per-experiment ranks scaled to [0, 1] (robust to calibration differences)."""


BLEND_METHODS = {"mean": MeanBlendParams, "rank_mean": RankMeanBlendParams}


# ----------------------------------------------------------------------------- sections

# Sections of an experiment: component sections take {name, params...} or a short string.
COMPONENT_SECTIONS = {
    "data": DATA_SOURCES,
    "features": FEATURES,
    "model": MODELS,
    "loss": LOSSES,
}
PLAIN_SECTIONS = {
    "audio": AudioSettings,
    "cache": CacheSettings,
    "folds": FoldSettings,
    "train": TrainSettings,
}
# Components that must be given (no default component).
REQUIRED_COMPONENTS = ("data", "features", "model")
DEFAULT_COMPONENTS = {"loss": "bce"}
