"""The queue file's schema: every section and every component's parameters.

This module is plain Python (no TensorFlow, no numpy) so that a queue file can be
validated in a fraction of a second before any work starts. Each component kind
(data source, features, model, loss, schedule, blend method) is one
:class:`pipeline.registry.Registry`: name -> entry holding the frozen dataclass
of parameters, the import path of the builder that implements it and a tiny
preset for the tests (see :mod:`pipeline.registry` for why builders are paths).

Field metadata carries the validation rules read by :mod:`pipeline.config`:
``min`` / ``max`` (inclusive), ``min_exclusive``, ``choices``, ``max_len`` and
``item_max`` (list fields: length and largest item), ``item_choices`` (a list of
these names) and ``path``
(``"dir"`` or ``"file"``: resolved relative to the queue file and, with
``must_exist``, checked; values listed in ``keywords``, such as ``imagenet``, are
taken as they are).

Every number has an upper bound (a test enforces it): far above anything a real
experiment uses, low enough that an absurd value (a seed of 2**32, 10**20
examples, a billion synthetic clips) is refused before any work instead of
failing hours later without naming the key. Rules that involve several
sections (``fmin < fmax <= sample_rate / 2``, ``n_fft`` within the clip, ...)
are in :mod:`pipeline.config_checks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from pipeline.registry import Entry, ModelEntry, Registry


# numpy's and TensorFlow's seeds are unsigned 32-bit integers.
MAX_SEED = 2**32 - 1
# Highest Nyquist frequency of any allowed audio.sample_rate (384 kHz).
MAX_HZ = 192000.0
MAX_EPOCHS = 10000.0  # schedule durations, in epochs


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
    n_train: int = rule(2000, min=10, max=1_000_000)  # 8 kB per clip: at most 8 GB
    n_test: int = rule(500, min=0, max=1_000_000)
    positive_fraction: float = rule(0.3, min_exclusive=0.0, max=0.9)
    seed: int = rule(0, min=0, max=MAX_SEED)


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
    # The class list, when the labels should not be inferred (e.g. [0, 1, 2], whose 0/1 majority would
    # otherwise be refused as a binary column with typos); any other label value is refused. [0, 1]: binary.
    classes: Optional[tuple] = rule(None, items="label", max_len=10000)


# rfcx: how labels that neither a tp nor an fp box names are read.
RFCX_UNKNOWN = ("mask", "negative")


@dataclass(frozen=True)
class KaggleRfcxParams:
    """Kaggle Rainforest Connection layout: ROOT/train_tp.csv, ROOT/train_fp.csv, ROOT/train/*.flac, ROOT/test/*.flac."""

    root: str = rule("input/rfcx", path="dir", must_exist=True)
    # mask: a species without a tp or fp box in a recording is unknown (ignored by masked losses);
    # negative: it counts as absent (0).
    unknown: str = rule("mask", choices=RFCX_UNKNOWN)


@dataclass(frozen=True)
class SyntheticRfcxParams:
    """Synthetic rfcx data (24 species, calls in distinct bands) written in the kaggle_rfcx layout on first use."""

    root: Optional[str] = rule(None, path="dir")  # default: input/synthetic_rfcx
    n_train: int = rule(200, min=4, max=100_000)  # the free disk space is checked before writing
    n_test: int = rule(50, min=0, max=100_000)
    duration: float = rule(12.0, min=2.0, max=600.0)  # seconds per recording
    sample_rate: int = rule(16000, min=8000, max=96000)  # Hz; the 24 species bands scale with it
    seed: int = rule(0, min=0, max=MAX_SEED)
    unknown: str = rule("mask", choices=RFCX_UNKNOWN)
    # Extra fp boxes per recording: confusers planted in the bands of that many more absent species, each
    # annotated fp (a known negative), on top of the 0-2 every recording may have. 0: the data as before.
    confusers: int = rule(0, min=0, max=12)


DATA_SOURCES = Registry("data source", [
    Entry("kaggle_whale", KaggleWhaleParams, "pipeline.data:load_kaggle_whale"),
    Entry("synthetic_whale", SyntheticWhaleParams, "pipeline.data:load_synthetic_whale",
          preset={"n_train": 12, "n_test": 3}),
    Entry("table", TableParams, "pipeline.data:load_table"),
    Entry("kaggle_rfcx", KaggleRfcxParams, "pipeline.data:load_kaggle_rfcx"),
    Entry("synthetic_rfcx", SyntheticRfcxParams, "pipeline.data:load_synthetic_rfcx",
          preset={"n_train": 4, "n_test": 1, "duration": 2.0, "sample_rate": 8000}),
])


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
    fmin: float = rule(0.0, min=0.0, max=MAX_HZ)
    fmax: Optional[float] = rule(None, min_exclusive=0.0, max=MAX_HZ)  # None: sample_rate / 2
    top_db: Optional[float] = rule(80.0, min_exclusive=0.0, max=1000.0)  # float32 spans about 760 dB


@dataclass(frozen=True)
class ComplexityParams:
    """Per-frame [H, C_SQ, C_JSD, C_TV] of a mel or linear power spectrum, [frames, 4]."""

    n_fft: int = rule(256, min=8, max=65536)
    hop_length: int = rule(32, min=1, max=65536)
    spectrum: str = rule("mel", choices=("mel", "linear"))
    n_mels: int = rule(64, min=2, max=512)
    fmin: float = rule(0.0, min=0.0, max=MAX_HZ)
    fmax: Optional[float] = rule(None, min_exclusive=0.0, max=MAX_HZ)


@dataclass(frozen=True)
class WaveformParams:
    """The decoded waveform itself, [samples], peak-normalised to [-1, 1]."""

    normalize: bool = rule(True)


FEATURES = Registry("feature", [
    Entry("mel", MelParams, "pipeline.features:MEL", preset={"n_fft": 64, "hop_length": 32, "n_mels": 8}),
    Entry("complexity", ComplexityParams, "pipeline.features:COMPLEXITY",
          preset={"n_fft": 64, "hop_length": 32, "n_mels": 8}),
    Entry("waveform", WaveformParams, "pipeline.features:WAVEFORM"),
])


@dataclass(frozen=True)
class CacheSettings:
    """Feature-cache writing: process pool and shard size."""

    workers: int = rule(0, min=0, max=256)  # 0: os.cpu_count()
    # At least 1 kB, so that every shard holds at least one clip (below 1 byte the writer would open
    # empty shards without end); at most 100 GB.
    shard_mb: float = rule(100.0, min=0.001, max=100_000.0)
    chunk_size: int = rule(256, min=1, max=100000)  # clips per worker task (the largest; smaller at the end)


# ----------------------------------------------------------------------------- folds


@dataclass(frozen=True)
class FoldSettings:
    """Stratified K-fold (grouped when the data has a group column); shared by every experiment."""

    n_splits: int = rule(5, min=2, max=100)
    seed: int = rule(42, min=0, max=MAX_SEED)


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class InceptionTimeParams:
    """InceptionTime (Fawaz et al. 2020) over a time-major series [T, C]."""

    filters: int = rule(32, min=1, max=1024)
    depth: int = rule(6, min=1, max=60)
    kernel_sizes: tuple = rule((1, 2, 4), max_len=16, item_max=1025)
    bottleneck: int = rule(32, min=0, max=1024)  # 0: no bottleneck
    residual: bool = rule(False)
    dropout: float = rule(0.0, min=0.0, max=0.95)


# keras.applications backbones a SED model can use by name (validated here, without importing Keras).
SED_BACKBONES = (
    "cnn",
    "ConvNeXtTiny", "ConvNeXtSmall", "ConvNeXtBase",
    "DenseNet121", "DenseNet169", "DenseNet201",
    "EfficientNetB0", "EfficientNetB1", "EfficientNetB2", "EfficientNetB3", "EfficientNetB4",
    "EfficientNetB5", "EfficientNetB6", "EfficientNetB7",
    "EfficientNetV2B0", "EfficientNetV2B1", "EfficientNetV2B2", "EfficientNetV2B3", "EfficientNetV2S",
    "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large",
    "ResNet50", "ResNet101", "ResNet152", "ResNet50V2", "ResNet101V2", "ResNet152V2",
)


@dataclass(frozen=True)
class SEDParams:
    """PANNs-style sound event detection over a log-mel [frames, mels].

    A 2-D CNN (``backbone: cnn``, the small built-in one, or a keras.applications
    name) -> mean over frequency -> max + average smoothing over time -> optional
    dense block -> per-frame classifier and attention; outputs ``clipwise``
    (attention-weighted sum over frames) and ``framewise`` (interpolated back to
    the input's frame count).
    """

    backbone: str = rule("cnn", choices=SED_BACKBONES)
    widths: tuple = rule((16, 32, 64), max_len=16, item_max=4096)  # built-in CNN: channels per block (each block halves time and frequency)
    # null: random init; else a path (relative to the queue file) to backbone weights (.h5 / .weights.h5).
    # No downloads.
    weights: Optional[str] = rule(None, path="file", must_exist=True)
    base_trainable: bool = rule(True)
    smoothing: int = rule(3, min=1, max=63)  # max/avg pool window over time, frames of the backbone output
    dense_units: int = rule(0, min=0, max=4096)  # 0: no dense block before the heads
    dropout: float = rule(0.2, min=0.0, max=0.95)


@dataclass(frozen=True)
class CNN1DParams:
    """1-D CNN over a waveform [samples] or a time-major series [T, C]."""

    filters: int = rule(16, min=1, max=1024)  # first block; doubled every block
    depth: int = rule(4, min=1, max=12)
    kernel_size: int = rule(9, min=1, max=1025)
    pool_size: int = rule(4, min=1, max=64)  # max-pool after every block (time / pool_size)
    max_filters: int = rule(256, min=1, max=4096)
    dropout: float = rule(0.2, min=0.0, max=0.95)


@dataclass(frozen=True)
class XceptionParams:
    """keras.applications.Xception on the log-mel, resized to image_size x image_size, 3 channels."""

    image_size: int = rule(96, min=71, max=1024)  # Xception needs at least 71 x 71
    # null: random init; imagenet: the local Keras cache file (never downloaded); or a path
    # (relative to the queue file) to Xception (include_top=False) weights, .h5 or .weights.h5.
    weights: Optional[str] = rule(None, path="file", must_exist=True, keywords=("imagenet",))
    base_trainable: bool = rule(True)
    # With base_trainable: only this backbone layer and the ones after it are trained (null: all).
    fine_tune_from: Optional[str] = rule(None)
    # Use the backbone's output at this layer (e.g. block4_pool, the end of the entry flow)
    # instead of its last layer: far cheaper on small spectrograms (null: the whole backbone).
    backbone_output: Optional[str] = rule(None)
    dropout: float = rule(0.2, min=0.0, max=0.95)


@dataclass(frozen=True)
class AttentionLSTMParams:
    """LSTM and multi-head self-attention in parallel over a series [T, C], concatenated."""

    lstm_units: int = rule(32, min=1, max=2048)
    num_heads: int = rule(2, min=1, max=64)
    key_dim: int = rule(16, min=1, max=1024)
    dense_units: tuple = rule((32,), max_len=16, item_max=16384)  # TimeDistributed dense layers after the layer norm
    dropout: float = rule(0.2, min=0.0, max=0.95)


@dataclass(frozen=True)
class ViTParams:
    """Vision transformer over log-mel patches [frames, mels]."""

    patch_size: tuple = rule((8, 8), max_len=2, item_max=1024)  # (frames, mels); the input is zero-padded to whole patches
    dim: int = rule(64, min=1, max=4096)
    depth: int = rule(4, min=1, max=48)
    num_heads: int = rule(4, min=1, max=64)
    mlp_dim: int = rule(128, min=1, max=16384)
    pooling: str = rule("cls", choices=("cls", "mean"))
    dropout: float = rule(0.1, min=0.0, max=0.95)
    # Filters of a 3x3 convolution (batch norm, ReLU) before the patch embedding; 0: none.
    conv_stem: int = rule(0, min=0, max=4096)


# --- classical families (scikit-learn, pipeline.models.classical): one fit per fold on per-clip pooled
# features, each channel's mean, std and the `percentiles` over time.


@dataclass(frozen=True)
class LogRegParams:
    """Logistic regression (L2, lbfgs) on standardised pooled features."""

    regularization: float = rule(1.0, min_exclusive=0.0, max=1e6)  # 1 / C of scikit-learn (as blend stacking)
    max_iter: int = rule(1000, min=1, max=100_000)
    percentiles: tuple = rule((10, 50, 90), max_len=16, item_max=100)  # per channel, beside mean and std


@dataclass(frozen=True)
class HGBParams:
    """scikit-learn HistGradientBoostingClassifier on pooled features (no early stopping)."""

    learning_rate: float = rule(0.1, min_exclusive=0.0, max=10.0)
    max_iter: int = rule(200, min=1, max=100_000)  # boosting rounds (trees per class)
    max_leaf_nodes: int = rule(31, min=2, max=100_000)
    min_samples_leaf: int = rule(20, min=1, max=1_000_000)
    l2_regularization: float = rule(0.0, min=0.0, max=1e6)
    percentiles: tuple = rule((10, 50, 90), max_len=16, item_max=100)


def _inceptiontime_label(params: InceptionTimeParams) -> str:
    return "inceptiontime_residual" if params.residual else "inceptiontime"


# Models that need a spectrogram [frames, bins] take only these features.
SPECTROGRAMS = ("mel", "complexity")
# Tiny test inputs per example: a spectrogram whose frame count is no multiple of the models' strides,
# a series [T, C] and a waveform [samples].
_SPECTROGRAM, _SERIES, _WAVEFORM = (30, 16), (32, 4), (64,)

MODELS = Registry("model", [
    ModelEntry("inceptiontime", InceptionTimeParams, "pipeline.models.inceptiontime:build_inceptiontime",
               preset={"filters": 4, "depth": 3, "bottleneck": 4}, preset_inputs=(_SERIES, _WAVEFORM),
               label=_inceptiontime_label),
    ModelEntry("sed", SEDParams, "pipeline.models.sed:build_sed", preset={"widths": (4, 8), "dense_units": 8},
               features=SPECTROGRAMS, preset_inputs=(_SPECTROGRAM,), check="pipeline.models.sed:check_sed"),
    ModelEntry("cnn1d", CNN1DParams, "pipeline.models.cnn1d:build_cnn1d",
               preset={"filters": 4, "depth": 2, "kernel_size": 5}, preset_inputs=(_WAVEFORM, _SERIES)),
    # A trainable Xception takes about a minute to trace: the preset freezes it.
    ModelEntry("xception", XceptionParams, "pipeline.models.xception:build_xception",
               preset={"image_size": 71, "dropout": 0.0, "base_trainable": False}, features=SPECTROGRAMS,
               preset_inputs=(_SPECTROGRAM,), check="pipeline.models.xception:check_xception"),
    ModelEntry("attentionlstm", AttentionLSTMParams, "pipeline.models.attentionlstm:build_attentionlstm",
               preset={"lstm_units": 4, "num_heads": 2, "key_dim": 4, "dense_units": (8,)}, preset_inputs=(_SERIES,)),
    ModelEntry("vit", ViTParams, "pipeline.models.vit:build_vit",
               preset={"patch_size": (8, 8), "dim": 8, "depth": 1, "num_heads": 2, "mlp_dim": 16, "conv_stem": 4},
               features=SPECTROGRAMS, preset_inputs=(_SPECTROGRAM,)),
    # --- classical families: kind sklearn (fitted once per fold, no epochs; see pipeline.train_classical)
    ModelEntry("logreg", LogRegParams, "pipeline.models.classical:build_logreg", preset={"max_iter": 200},
               preset_inputs=(_SPECTROGRAM, _SERIES, _WAVEFORM), kind="sklearn"),
    ModelEntry("hgb", HGBParams, "pipeline.models.classical:build_hgb",
               preset={"max_iter": 10, "min_samples_leaf": 2}, preset_inputs=(_SPECTROGRAM, _SERIES, _WAVEFORM),
               kind="sklearn"),
])


# ----------------------------------------------------------------------------- losses


@dataclass(frozen=True)
class BCEParams:
    """Binary cross-entropy (multiclass data gets categorical cross-entropy)."""

    label_smoothing: float = rule(0.0, min=0.0, max=0.5)


@dataclass(frozen=True)
class FocalParams:
    """Focal loss (Lin et al. 2017); gamma 0 and no class balancing is plain cross-entropy."""

    gamma: float = rule(2.0, min=0.0, max=10.0)
    alpha: float = rule(0.25, min=0.0, max=1.0)  # weight of positives; used when class_balancing
    class_balancing: bool = rule(False)
    label_smoothing: float = rule(0.0, min=0.0, max=0.5)


@dataclass(frozen=True)
class MaskedBCEParams:
    """BCE over known labels only: a NaN target marks an unknown label (tp/fp data) and is ignored."""

    label_smoothing: float = rule(0.0, min=0.0, max=0.5)


@dataclass(frozen=True)
class SEDLossParams:
    """SED two-way loss: clipwise_weight * BCE(clip) + framewise_weight * BCE(frames).

    On clip-only labels (the whale data) only the clipwise term applies.
    """

    clipwise_weight: float = rule(1.0, min=0.0, max=1000.0)
    framewise_weight: float = rule(0.5, min=0.0, max=1000.0)


@dataclass(frozen=True)
class SymmetricCEParams:
    """Symmetric cross-entropy (Wang et al. 2019): alpha * CE + beta * reverse CE, robust to label noise."""

    alpha: float = rule(0.1, min=0.0, max=1000.0)
    beta: float = rule(1.0, min=0.0, max=1000.0)
    log_floor: float = rule(1e-4, min_exclusive=0.0, max=0.5)  # log(0) of the reverse term is log(log_floor)


@dataclass(frozen=True)
class DiceBCEParams:
    """BCE + dice_weight * (1 - soft Dice over the batch, per class)."""

    dice_weight: float = rule(1.0, min=0.0, max=1000.0)
    smooth: float = rule(1.0, min_exclusive=0.0, max=1e6)


LOSSES = Registry("loss", [
    Entry("bce", BCEParams, "pipeline.losses:build_bce"),
    Entry("focal", FocalParams, "pipeline.losses:build_focal"),
    Entry("masked_bce", MaskedBCEParams, "pipeline.losses:build_masked_bce"),
    Entry("sed", SEDLossParams, "pipeline.losses:build_sed_loss"),
    Entry("symmetric_ce", SymmetricCEParams, "pipeline.losses:build_symmetric_ce"),
    Entry("dice_bce", DiceBCEParams, "pipeline.losses:build_dice_bce"),
])


# ----------------------------------------------------------------------------- learning-rate schedules
# Every schedule peaks at train.learning_rate; durations are in epochs (fractions allowed).


@dataclass(frozen=True)
class ConstantScheduleParams:
    """train.learning_rate throughout."""


@dataclass(frozen=True)
class CosineScheduleParams:
    """Linear warm-up to train.learning_rate, then cosine decay to min_fraction of it at the last epoch."""

    warmup_epochs: float = rule(1.0, min=0.0, max=MAX_EPOCHS)
    min_fraction: float = rule(0.01, min=0.0, max=1.0)


@dataclass(frozen=True)
class RampSustainDecayParams:
    """Linear ramp from start_fraction, sustain at the peak, then exponential decay towards min_fraction."""

    start_fraction: float = rule(0.1, min=0.0, max=1.0)
    min_fraction: float = rule(0.01, min=0.0, max=1.0)
    ramp_epochs: float = rule(2.0, min=0.0, max=MAX_EPOCHS)
    sustain_epochs: float = rule(0.0, min=0.0, max=MAX_EPOCHS)
    decay: float = rule(0.8, min_exclusive=0.0, max=1.0)  # per epoch


@dataclass(frozen=True)
class CyclicScheduleParams:
    """Triangular cyclic LR (Smith 2017) between min_fraction * peak and the peak."""

    min_fraction: float = rule(0.1, min=0.0, max=1.0)
    half_cycle_epochs: float = rule(2.0, min_exclusive=0.0, max=MAX_EPOCHS)


SCHEDULES = Registry("schedule", [
    Entry("constant", ConstantScheduleParams, "pipeline.schedules:build_constant"),
    Entry("cosine", CosineScheduleParams, "pipeline.schedules:build_cosine"),
    Entry("ramp_sustain_decay", RampSustainDecayParams, "pipeline.schedules:build_ramp_sustain_decay"),
    Entry("cyclic", CyclicScheduleParams, "pipeline.schedules:build_cyclic"),
])


# ----------------------------------------------------------------------------- training


# ----------------------------------------------------------------------------- weight averaging and TTA (issue 17)
# Nested settings of train.ema, train.swa and predict.tta (mappings inside a section; see pipeline.config._build).


@dataclass(frozen=True)
class EmaSettings:
    """``train.ema``: an exponential moving average of the weights, kept by the Keras optimizer (``use_ema``).

    After every optimizer step: average = momentum * average + (1 - momentum) * weights.
    Validation, early stopping, the best epoch, checkpoints and predictions use the average.
    """

    momentum: float = rule(0.99, min_exclusive=0.0, max=1.0)  # < 1 (checked in config_checks)


@dataclass(frozen=True)
class SwaSettings:
    """``train.swa``: the fold's model is the mean of several epochs' weights (exactly one key).

    epochs: the last K finished epochs; best: the K best epochs by ``train.monitor``.
    """

    epochs: Optional[int] = rule(None, min=2, max=10000)
    best: Optional[int] = rule(None, min=2, max=10000)


@dataclass(frozen=True)
class TtaView:
    """One deterministic test-time view of a model input (``predict.tta`` item); keys left out change nothing.

    shift: circular time shift, s (positive: later; frames or samples rounded to the nearest);
    gain_db: gain, dB (mel: added to the log-mel; waveform: scaled by 10 ** (gain_db / 20);
    complexity series are scale invariant, so it is refused there).
    """

    shift: float = rule(0.0, min=-3600.0, max=3600.0)
    gain_db: float = rule(0.0, min=-60.0, max=60.0)


@dataclass(frozen=True)
class TrainSettings:
    """Per-fold training loop."""

    epochs: int = rule(20, min=1, max=10000)
    batch_size: int = rule(64, min=1, max=65536)
    learning_rate: float = rule(1e-3, min_exclusive=0.0, max=10.0)
    patience: int = rule(5, min=1, max=10000)  # early-stopping patience, epochs
    monitor: str = rule("val_auc", choices=("val_auc", "val_loss", "val_lwlrap"))  # val_lwlrap: rfcx data only
    seed: int = rule(0, min=0, max=MAX_SEED)
    shuffle_buffer: int = rule(2048, min=1, max=10_000_000)  # examples held in memory
    optimizer: str = rule("adam", choices=("adam", "adamw", "sgd"))
    weight_decay: float = rule(1e-4, min=0.0, max=1.0)  # AdamW's decoupled weight decay (adamw only)
    momentum: float = rule(0.9, min=0.0, max=0.999)  # sgd only (Nesterov)
    # balanced: per-example weights n / (2 n_class) (binary / multilabel per class) or n / (C n_c).
    class_weight: str = rule("none", choices=("none", "balanced"))
    # tf.distribute strategy (pipeline/distribute.py): auto = TPU if reachable, else MirroredStrategy over
    # the GPUs when there are several, else the default strategy. batch_size is per replica.
    strategy: str = rule("auto", choices=("auto", "default", "mirrored", "multiworker", "tpu"))
    # Keras dtype policy; auto = mixed_float16 with a GPU, mixed_bfloat16 on TPU, float32 on CPU.
    precision: str = rule("auto", choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"))
    # XLA compilation of the train / predict steps; auto = on with a GPU or TPU, off on CPU.
    jit_compile: object = rule("auto", choices=("auto", True, False))
    # Weight averaging (issue 17), both off by default: see EmaSettings, SwaSettings.
    ema: Optional[EmaSettings] = rule(None)
    swa: Optional[SwaSettings] = rule(None)


@dataclass(frozen=True)
class AugmentSettings:
    """Training-batch augmentation (never applied to validation or test data); 0 switches a transform off.

    Applied per example in this order: time shift, gain, Gaussian noise, time masks,
    frequency masks; then mixup per batch. Every draw is seeded from the epoch seed.
    """

    time_shift: float = rule(0.0, min=0.0, max=1.0)  # max circular shift, fraction of the clip length
    gain_db: float = rule(0.0, min=0.0, max=60.0)  # max +- gain, dB (mel: added; waveform: scaled)
    noise_std: float = rule(0.0, min=0.0, max=10.0)  # Gaussian noise, fraction of the clip's std
    time_mask: int = rule(0, min=0, max=100000)  # SpecAugment: max mask width, frames (samples for a waveform)
    time_masks: int = rule(1, min=1, max=16)
    freq_mask: int = rule(0, min=0, max=4096)  # SpecAugment: max mask width, mel bands / channels
    freq_masks: int = rule(1, min=1, max=16)
    mixup_alpha: float = rule(0.0, min=0.0, max=10.0)  # Beta(alpha, alpha) mixing weight; labels mixed too


@dataclass(frozen=True)
class CropSettings:
    """Long recordings with event boxes (rfcx data): training crops and sliding-window inference.

    The feature cache holds each whole recording; a training example is a crop of
    ``crop_seconds`` drawn per epoch, containing a tp box with probability
    ``positive_probability`` (else placed uniformly). Validation crops are fixed
    (seeded) crops that contain a tp box where the recording has one. OOF and test
    predictions slide a window of ``window_seconds`` (default: ``crop_seconds``)
    with hop ``window_hop_seconds`` (default: half a window) over the recording and
    take the ``aggregate`` (max or mean) over windows. Ignored for clip-level data.
    """

    crop_seconds: Optional[float] = rule(None, min_exclusive=0.0, max=3600.0)  # None: the whole recording, no cropping
    positive_probability: float = rule(0.5, min=0.0, max=1.0)
    per_recording: int = rule(1, min=1, max=1000)  # training crops drawn per recording per epoch
    window_seconds: Optional[float] = rule(None, min_exclusive=0.0, max=3600.0)
    window_hop_seconds: Optional[float] = rule(None, min_exclusive=0.0, max=3600.0)
    aggregate: str = rule("max", choices=("max", "mean"))


@dataclass(frozen=True)
class PredictSettings:
    """Clips longer than ``audio.duration``: OOF and test predictions by sliding windows.

    Training sees each clip's first ``audio.duration`` seconds (as the cache holds
    them). A longer clip is predicted over windows of ``audio.duration`` every
    ``hop_seconds`` (default: half a window; the last window ends at the clip's
    end) and the windows' predictions are combined by ``aggregate``. At most
    ``max_seconds`` of a clip are read (longer clips are noted in the cache
    manifest). Long recordings with event boxes use ``crops.window_*`` instead.
    """

    hop_seconds: Optional[float] = rule(None, min_exclusive=0.0, max=3600.0)
    aggregate: str = rule("max", choices=("max", "mean"))
    max_seconds: float = rule(600.0, min_exclusive=0.0, max=86400.0)
    # Test-time augmentation (issue 17): views whose predictions are averaged; () = none. See TtaView.
    tta: tuple = rule((), items=TtaView, max_len=16)


# ----------------------------------------------------------------------------- pseudo-labels (issue 17)

# Where a student's extra targets come from: the teacher's fold-k predictions of the test clips, or of the
# unknown (NaN) labels of fold k's training recordings (rfcx data with `unknown: mask`).
PSEUDO_SOURCES = ("test", "unknown")


@dataclass(frozen=True)
class PseudoSettings:
    """``pseudo:`` of one experiment (absent: no pseudo-labels): learn from a teacher experiment's fold models.

    The student's fold k uses only outputs of the teacher's fold-k model (:mod:`pipeline.pseudo`).
    ``soft``: the teacher's probabilities are the targets. ``hard``: 0/1 targets (a probability
    >= 0.5 is 1; multiclass: the most probable class), kept only where the teacher's confidence
    (max(p, 1 - p) per label; multiclass: the top probability) is at least ``threshold`` (a test
    clip is dropped when any of its labels is below it; an unknown label below it stays unknown).
    ``weight``: the sample weight of a pseudo-labelled test clip (a real clip weighs 1).
    """

    teacher: str = rule("")  # required: the name of an experiment in the same queue
    on: tuple = rule(("test",), item_choices=PSEUDO_SOURCES)  # a non-empty list of PSEUDO_SOURCES, no repeats
    mode: str = rule("soft", choices=("soft", "hard"))
    threshold: float = rule(0.5, min=0.5, max=1.0)
    weight: float = rule(1.0, min_exclusive=0.0, max=100.0)


# ----------------------------------------------------------------------------- blending


@dataclass(frozen=True)
class MeanBlendParams:
    """Plain mean of the experiments' predictions."""


@dataclass(frozen=True)
class RankMeanBlendParams:
    """Mean of per-experiment ranks scaled to [0, 1] (robust to calibration differences)."""


@dataclass(frozen=True)
class WeightsBlendParams:
    """Non-negative weights summing to 1 that maximise the OOF metric.

    Greedy forward selection with replacement (Caruana et al. 2004), started
    from the best single experiment; the best ensemble seen is kept, so the
    blend never scores below the best single experiment on the OOF.
    """

    iterations: int = rule(50, min=1, max=10000)  # selection steps; weight resolution is 1 / (iterations + 1)


@dataclass(frozen=True)
class StackingBlendParams:
    """A second-level model per class on the experiments' OOF predictions.

    ``logistic``: logistic regression on the logits of the predictions;
    ``ridge``: ridge regression on the probabilities, clipped to [0, 1]. Its
    score comes from cross-validation over the experiments' shared folds.
    """

    model: str = rule("logistic", choices=("logistic", "ridge"))
    regularization: float = rule(1.0, min_exclusive=0.0, max=1e6)  # logistic: 1 / C; ridge: alpha


BLEND_METHODS = Registry("blend method", [
    Entry("mean", MeanBlendParams, "pipeline.blend.methods:blend_mean"),
    Entry("rank_mean", RankMeanBlendParams, "pipeline.blend.methods:blend_rank_mean"),
    Entry("weights", WeightsBlendParams, "pipeline.blend.methods:blend_weights", preset={"iterations": 5}),
    Entry("stacking", StackingBlendParams, "pipeline.blend.methods:blend_stacking"),
])


# Data sources of long recordings with event boxes: the `crops` fold strategy trains on crops of them and
# predicts them by crops.window_*; the feature cache holds no extra windows for them.
RECORDING_SOURCES = ("kaggle_rfcx", "synthetic_rfcx")

# How the one fold loop treats a kind of training data (pipeline.fold_strategies): the dataset decides
# (recordings with event boxes: crops), not the queue file; the entry's parameters are the section that
# configures its windows.
FOLD_STRATEGIES = Registry("fold strategy", [
    Entry("clips", PredictSettings, "pipeline.fold_strategies:ClipStrategy"),
    Entry("crops", CropSettings, "pipeline.fold_strategies:CropStrategy"),
])


# ----------------------------------------------------------------------------- sections

# Sections of an experiment: component sections take {name, params...} or a short string.
COMPONENT_SECTIONS = {
    "data": DATA_SOURCES,
    "features": FEATURES,
    "model": MODELS,
    "loss": LOSSES,
    "schedule": SCHEDULES,
}
PLAIN_SECTIONS = {
    "audio": AudioSettings,
    "cache": CacheSettings,
    "folds": FoldSettings,
    "train": TrainSettings,
    "augment": AugmentSettings,
    "crops": CropSettings,
    "predict": PredictSettings,
}
# Components that must be given (no default component).
REQUIRED_COMPONENTS = ("data", "features", "model")
DEFAULT_COMPONENTS = {"loss": "bce", "schedule": "constant"}


# ----------------------------------------------------------------------------- execution (issue 16)

MAX_JOBS = 1024  # fold jobs in flight at once
MAX_RETRIES = 100


@dataclass(frozen=True)
class ExecutionSettings:
    """The queue's ``execution:`` section: how fold jobs run (checked by :func:`pipeline.config.parse_execution`).

    backend : ``local`` (this machine: in this process with ``jobs: 1``, else one child process per job)
        or ``ray`` (Ray tasks, see :mod:`pipeline.executors`).
    jobs : fold jobs in flight at once (>= 1), or ``"auto"``: one per GPU (``1 / gpus_per_job`` per GPU),
        on CPU one per core (see :meth:`pipeline.executors.local.LocalExecutor`).
    gpus_per_job : GPUs one job uses: a fraction in (0, 1] (several jobs share a GPU) or a whole number;
        None: one GPU per job when the machine has GPUs.
    address : Ray only: None (start a Ray instance for the run), ``"auto"`` or ``"host:port"`` (an existing cluster).
    retries : how often a job whose worker process died is started again (it resumes after its last
        finished epoch); a job that raises is never retried.
    memory_budget_gb : memory for a fold job's input, GiB: its examples are cached in memory when
        they fit, else streamed from the feature cache every epoch (:mod:`pipeline.memory`). None: a quarter of
        the memory available when the experiment's folds are planned.
    """

    backend: str = "local"
    jobs: object = 1  # int >= 1 or "auto"
    gpus_per_job: Optional[float] = None
    address: Optional[str] = None
    retries: int = 2
    memory_budget_gb: Optional[float] = None

    @property
    def memory_budget(self) -> Optional[int]:
        """``memory_budget_gb`` in bytes (None: automatic)."""
        return None if self.memory_budget_gb is None else int(self.memory_budget_gb * 2**30)

    @property
    def in_process(self) -> bool:
        """Today's way: the local backend with one job at a time runs fold jobs in the runner process."""
        return self.backend == "local" and self.jobs == 1


EXECUTORS = Registry("executor", [
    Entry("local", ExecutionSettings, "pipeline.executors.local:LocalExecutor"),
    Entry("ray", ExecutionSettings, "pipeline.executors.ray_tasks:RayExecutor"),
])
