"""Checks across sections of one experiment that need only the config (no data, no TensorFlow).

Each rule here used to fail at feature or training time, after folders were
written, with a message that named a function argument (``n_samples``,
``fmin and fmax``) instead of the key. :func:`check_experiment` runs them while
the queue is validated, so they end in exit status 2 naming the key path. It
mirrors checks that stay where they are as a last line of defence:
``pipeline.features.check_settings`` / ``feature_shape`` and
``pipeline.models.*`` input checks. What needs the data or TensorFlow stays at
training time: the task of a table without declared classes (the loss is made
once before the first fold) and an Xception layer name or local ImageNet file
(``pipeline.models.build.check_model``). Pure arithmetic: the mel filter bank's
empty bands are found the way librosa builds it, without numpy.
"""

from __future__ import annotations

import dataclasses

import math
from typing import Callable, Dict, List, Optional

from pipeline import schema

# Longest clip the pipeline decodes: 100 M samples (400 MB as float32; an hour at 27.7 kHz).
# Each feature worker holds a few clips of this size in memory.
MAX_CLIP_SAMPLES = 100_000_000
# Largest feature array per clip (values, float32): 1 GB. The cache holds one per clip.
MAX_FEATURE_VALUES = 250_000_000
RFCX_SOURCES = schema.RECORDING_SOURCES
# Every keras.applications family in schema.SED_BACKBONES refuses inputs under 32 x 32 (min_size).
MIN_APPLICATION_INPUT = 32


def check_experiment(exp, origin: Callable[..., str], problems: List[str]) -> None:
    """Append ``key.path: message`` for every cross-section rule ``exp`` breaks.

    exp : a :class:`pipeline.config.Experiment` whose sections each passed their own checks.
    origin : ``origin(section, key)`` -> the key path where the value came from (experiment or defaults).
    """
    audio, feat = exp.audio, exp.features
    params = feat.params
    n_samples = int(round(audio.duration * audio.sample_rate))
    clip = f"audio.duration * audio.sample_rate = {audio.duration:g} s * {audio.sample_rate} Hz"
    if n_samples > MAX_CLIP_SAMPLES:
        problems.append(f"{origin('audio', 'duration')}: a clip of {clip} = {n_samples:,} samples is too long; "
                        f"at most {MAX_CLIP_SAMPLES:,} samples per clip")
        return  # every later rule depends on the clip length
    if n_samples < 1:
        problems.append(f"{origin('audio', 'duration')}: {clip} is less than one sample")
        return

    _check_folds(exp, origin, problems)
    shape = None  # one clip's feature shape
    if feat.name in ("mel", "complexity"):
        shape = _check_spectral(feat.name, params, audio.sample_rate, n_samples, clip, origin, problems)
    else:
        shape = (n_samples,)
    if shape is None:
        return

    is_rfcx = exp.data.name in RFCX_SOURCES
    if is_rfcx:
        shape = _check_rfcx(exp, shape, origin, problems)
    elif exp.train.monitor == "val_lwlrap":
        problems.append(f"{origin('train', 'monitor')}: val_lwlrap is logged for rfcx data only "
                        f"(data.name {', '.join(RFCX_SOURCES)}); use val_auc or val_loss with {exp.data.name}")
    if not is_rfcx:
        default = schema.CropSettings()
        for f in dataclasses.fields(default):
            if getattr(exp.crops, f.name) != getattr(default, f.name):  # would be ignored: clips are used whole
                problems.append(f"{origin('crops', f.name)}: crops apply to long recordings with event boxes "
                                f"(data.name {', '.join(RFCX_SOURCES)}); {exp.data.name} clips are used whole, so "
                                f"it would be ignored. Remove it")
    _check_model(exp, shape, origin, problems)
    _check_loss(exp, origin, problems)
    _check_averaging(exp, origin, problems)
    _check_tta(exp, origin, problems)
    if shape is not None:
        _check_augment(exp, shape, origin, problems)
    if not is_rfcx:  # recordings with boxes are predicted by crops.window_*, not by predict.*
        _check_predict(exp, origin, problems)


def _check_folds(exp, origin, problems) -> None:
    """Synthetic data's class counts are known from the config (see pipeline.folds.assign_folds)."""
    data, n_splits = exp.data, exp.folds.n_splits
    if data.name == "synthetic_whale":
        n, fraction = data.params.n_train, data.params.positive_fraction
        positives = min(max(int(round(n * fraction)), 1), n - 1)  # as pipeline.data.synthetic._labels
        smallest = min(positives, n - positives)
        if smallest < n_splits:
            problems.append(f"{origin('folds', 'n_splits')}: must be <= {smallest}, the training clips of the "
                            f"smaller class (data.n_train {n} x data.positive_fraction {fraction:g}); every fold "
                            f"needs both classes; got {n_splits}")
    elif data.name == "synthetic_rfcx" and data.params.n_train < n_splits:
        problems.append(f"{origin('folds', 'n_splits')}: must be <= data.n_train ({data.params.n_train} "
                        f"recordings; a recording is never split between folds); got {n_splits}")


def _check_spectral(name, params, sample_rate, n_samples, clip, origin, problems) -> Optional[tuple]:
    ok = True
    if params.n_fft > n_samples:
        problems.append(f"{origin('features', 'n_fft')}: must be <= the clip length ({clip} = {n_samples} samples); "
                        f"got {params.n_fft}")
        ok = False
    uses_mel = name == "mel" or params.spectrum == "mel"
    if uses_mel:
        nyquist = sample_rate / 2
        fmax = nyquist if params.fmax is None else params.fmax
        if params.fmax is not None and params.fmax > nyquist:
            problems.append(f"{origin('features', 'fmax')}: must be <= the Nyquist frequency audio.sample_rate / 2 "
                            f"({nyquist:g} Hz); got {params.fmax:g}")
            ok = False
        elif params.fmin >= fmax:
            shown = f"fmax ({fmax:g})" if params.fmax is not None else f"audio.sample_rate / 2 ({fmax:g} Hz)"
            problems.append(f"{origin('features', 'fmin')}: must be < {shown}; got {params.fmin:g}")
            ok = False
        elif params.n_fft <= n_samples:
            empty = empty_mel_bands(sample_rate=sample_rate, n_fft=params.n_fft, n_mels=params.n_mels,
                                    fmin=params.fmin, fmax=fmax)
            if empty:
                problems.append(
                    f"{origin('features', 'n_mels')}: {len(empty)} of {params.n_mels} mel bands contain no FFT bin "
                    f"(n_fft {params.n_fft} at {sample_rate} Hz gives one bin every {sample_rate / params.n_fft:g} Hz "
                    f"between fmin {params.fmin:g} and fmax {fmax:g} Hz), so they would be constant; use at most "
                    f"{_most_mels(sample_rate, params.n_fft, params.fmin, fmax, params.n_mels)} mels, a larger n_fft "
                    f"or a wider frequency range")
                ok = False
    if not ok:
        return None
    frames = 1 + (n_samples + 2 * (params.n_fft // 2) - params.n_fft) // params.hop_length
    bins = params.n_mels if name == "mel" else 4
    if frames * bins > MAX_FEATURE_VALUES:
        problems.append(f"{origin('features', 'hop_length')}: {frames:,} frames x {bins} values per clip "
                        f"({clip}, hop {params.hop_length}) is more than {MAX_FEATURE_VALUES:,} values per clip; "
                        f"use a larger hop_length or shorter clips")
        return None
    return (frames, bins)


def _check_rfcx(exp, shape, origin, problems) -> Optional[tuple]:
    """rfcx rules (see pipeline.fold_strategies.CropStrategy.check); returns the training crop's shape."""
    if exp.features.name not in ("mel", "complexity"):
        problems.append(f"{origin('features', 'name')}: rfcx crops need time-major features [frames, bins] "
                        f"(mel or complexity); got {exp.features.name}")
        shape = None
    if exp.loss.name not in ("masked_bce", "sed"):
        problems.append(f"{origin('loss', 'name')}: crops of recordings have unknown (NaN) labels; use masked_bce "
                        f"or sed, not {exp.loss.name}")
    if exp.augment.mixup_alpha:
        problems.append(f"{origin('augment', 'mixup_alpha')}: mixup cannot mix unknown (NaN) labels of rfcx "
                        f"crops; set it to 0")
    if exp.augment.time_shift:
        problems.append(f"{origin('augment', 'time_shift')}: a circular shift would misalign the framewise targets "
                        f"of rfcx crops (random crops already shift the calls); set it to 0")
    if exp.train.class_weight != "none":
        problems.append(f"{origin('train', 'class_weight')}: balanced weights need known labels; use none with "
                        f"rfcx crops")
    crops, duration = exp.crops, exp.audio.duration
    for key in ("crop_seconds", "window_seconds"):
        value = getattr(crops, key)
        if value is not None and value > duration:
            problems.append(f"{origin('crops', key)}: must be <= audio.duration ({duration:g} s, the recording "
                            f"length); got {value:g}")
            shape = None
    window = crops.window_seconds or crops.crop_seconds or duration
    if crops.window_hop_seconds is not None and crops.window_hop_seconds > window:
        problems.append(f"{origin('crops', 'window_hop_seconds')}: must be <= the window ({window:g} s), else parts "
                        f"of each recording are never predicted; got {crops.window_hop_seconds:g}")
    if shape is None or crops.crop_seconds is None:
        return shape
    rate = exp.audio.sample_rate / exp.features.params.hop_length
    crop = max(1, min(shape[0], int(round(crops.crop_seconds * rate))))
    return (crop, *shape[1:])


def _check_model(exp, shape, origin, problems) -> None:
    model = exp.model
    takes = schema.MODELS[model.name].features
    if exp.features.name not in takes:
        problems.append(f"{origin('model', 'name')}: {model.name} takes features {' or '.join(takes)}; "
                        f"got features {exp.features.name}")
    if model.name == "vit" and len(model.params.patch_size) != 2:
        problems.append(f"{origin('model', 'patch_size')}: must be [frames, mels] (two integers); "
                        f"got {list(model.params.patch_size)}")
    if model.name == "sed" and model.params.weights is not None and model.params.backbone == "cnn":
        problems.append(f"{origin('model', 'weights')}: weights apply to a keras.applications backbone; the "
                        f"built-in cnn starts from random weights (set weights: null or choose a backbone)")
    if (model.name == "sed" and model.params.backbone != "cnn" and len(shape) == 2
            and min(shape) < MIN_APPLICATION_INPUT):
        problems.append(f"{origin('model', 'backbone')}: keras.applications backbones need at least "
                        f"{MIN_APPLICATION_INPUT} x {MIN_APPLICATION_INPUT} inputs; the model sees "
                        f"{shape[0]} frames x {shape[1]} {'mel bands' if exp.features.name == 'mel' else 'values'} "
                        f"(use backbone: cnn, more mels or longer examples)")
    if schema.MODELS[model.name].kind == "sklearn" and exp.data.name in RFCX_SOURCES:
        # Classical families fit pooled features of whole clips; rfcx recordings train on random crops with
        # unknown labels and framewise boxes, which they do not support.
        problems.append(f"{origin('model', 'name')}: {model.name} fits pooled features of whole clips and does "
                        f"not support long recordings with event boxes (data.name {exp.data.name}, trained on "
                        f"random crops); use a Keras family such as sed, or clip data")
    if schema.MODELS[model.name].kind == "sklearn":
        # One fit, no epochs: nothing to average, and the fit reads no pseudo-labelled examples.
        for section, key, value in (("train", "ema", exp.train.ema), ("train", "swa", exp.train.swa),
                                    ("pseudo", None, exp.pseudo)):
            if value is not None:
                problems.append(f"{origin(section, key)}: {model.name} is fitted once, without epochs or pseudo-labelled "
                                f"examples; remove {section}{'.' + key if key else ''} or choose a Keras family")
    if exp.loss.name == "sed" and model.name != "sed" and exp.data.name in RFCX_SOURCES:
        problems.append(f"{origin('loss', 'name')}: sed needs model.name sed (framewise output); "
                        f"got model {model.name}")


def _check_loss(exp, origin, problems) -> None:
    """A loss that cannot take the targets, where the config already fixes the task (a table's declared classes)."""
    data = exp.data
    if exp.loss.name != "masked_bce" or data.name != "table" or data.params.classes is None:
        return
    classes = {str(c).strip() for c in data.params.classes}
    if len(classes) > 2:  # binary needs exactly two classes (pipeline.data.labels)
        problems.append(f"{origin('loss', 'name')}: masked_bce needs binary or multilabel targets (one sigmoid per "
                        f"label); data.classes declares {len(classes)} classes, a multiclass task (one softmax): "
                        f"use bce, focal, symmetric_ce or dice_bce")


def _check_predict(exp, origin, problems) -> None:
    """Windows over clips longer than audio.duration: every part of such a clip must be predicted."""
    predict, duration = exp.predict, exp.audio.duration
    if predict.hop_seconds is not None and predict.hop_seconds > duration:
        problems.append(f"{origin('predict', 'hop_seconds')}: must be <= audio.duration ({duration:g} s, the "
                        f"window), else parts of longer clips are never predicted; got {predict.hop_seconds:g}")


def _check_augment(exp, shape, origin, problems) -> None:
    """As pipeline.augment.check_settings, on the example shape the model will see."""
    aug, feature = exp.augment, exp.features.name
    if aug.freq_mask and len(shape) < 2:
        problems.append(f"{origin('augment', 'freq_mask')}: needs features with a frequency axis; "
                        f"{feature} is one series of {shape[0]} samples")
    elif aug.freq_mask and aug.freq_mask >= shape[1]:
        problems.append(f"{origin('augment', 'freq_mask')}: must be smaller than the {shape[1]} feature "
                        f"channels of {feature}; got {aug.freq_mask}")
    if aug.time_mask and aug.time_mask >= shape[0]:
        unit = "samples" if len(shape) == 1 else "frames"
        problems.append(f"{origin('augment', 'time_mask')}: must be smaller than the {shape[0]} {unit} of an "
                        f"example; got {aug.time_mask}")
    if aug.gain_db and feature == "complexity":
        problems.append(f"{origin('augment', 'gain_db')}: has no effect on complexity features (they are scale "
                        f"invariant); set it to 0")


# ----------------------------------------------------------------------------- weight averaging and TTA (issue 17)


def _check_averaging(exp, origin, problems) -> None:
    """train.ema: momentum in (0, 1); train.swa: exactly one of epochs / best, at most train.epochs."""
    train = exp.train
    if train.ema is not None and train.ema.momentum >= 1.0:
        problems.append(f"{origin('train', 'ema')}.momentum: must be < 1 (1 never moves the average away from "
                        f"the initial weights); got {train.ema.momentum:g}")
    if train.swa is None:
        return
    given = [k for k in ("epochs", "best") if getattr(train.swa, k) is not None]
    if len(given) != 1:
        problems.append(f"{origin('train', 'swa')}: exactly one of `epochs` (the last K epochs) or `best` (the K "
                        f"best epochs by train.monitor); got {' and '.join(given) if given else 'neither'}")
    for key in given:
        k = getattr(train.swa, key)
        if k > train.epochs:
            problems.append(f"{origin('train', 'swa')}.{key}: averages {k} epochs but train.epochs is "
                            f"{train.epochs}; must be <= train.epochs")


def _check_tta(exp, origin, problems) -> None:
    """predict.tta views: a shift shorter than a clip; no gain on scale-invariant complexity series."""
    duration = exp.audio.duration
    for i, view in enumerate(exp.predict.tta):
        where = f"{origin('predict', 'tta')}[{i}]"
        if abs(view.shift) >= duration:
            problems.append(f"{where}.shift: a circular shift must be shorter than audio.duration ({duration:g} s); "
                            f"got {view.shift:g}")
        if view.gain_db and exp.features.name == "complexity":
            problems.append(f"{where}.gain_db: has no effect on complexity features (they are scale invariant); "
                            f"leave it out")


# ----------------------------------------------------------------------------- mel filter bank, without numpy


def _hz_to_mel(f: float) -> float:
    """Slaney mel scale (librosa's default, htk=False)."""
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    return f / f_sp if f < min_log_hz else min_log_mel + math.log(f / min_log_hz) / logstep


def _mel_to_hz(m: float) -> float:
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    return f_sp * m if m < min_log_mel else min_log_hz * math.exp(logstep * (m - min_log_mel))


def _linspace(start: float, stop: float, num: int) -> List[float]:
    step = (stop - start) / (num - 1)
    return [start + i * step for i in range(num - 1)] + [stop]


def empty_mel_bands(*, sample_rate: float, n_fft: int, n_mels: int, fmin: float, fmax: float) -> List[int]:
    """Indices of mel bands whose triangular filter has no FFT bin strictly inside it.

    Same answer as :func:`pipeline.features.empty_mel_bands` (librosa's filter bank:
    band i is non-zero at bin frequency f iff ``edge[i] < f < edge[i + 2]``), in
    O(n_mels) pure Python: the bins are evenly spaced, so only the first bin above
    each band's lower edge needs testing.
    """
    n_bins = 1 + n_fft // 2
    df = 1.0 / (n_fft * (1.0 / sample_rate))  # bin k is at k * df Hz, as numpy.fft.rfftfreq computes it
    edges = [_mel_to_hz(m) for m in _linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2)]
    empty = []
    for i in range(n_mels):
        lo, hi = edges[i], edges[i + 2]
        k = max(0, int(lo // df) - 1)
        while k < n_bins and k * df <= lo:
            k += 1
        if not (k < n_bins and k * df < hi):
            empty.append(i)
    return empty


def _most_mels(sample_rate, n_fft, fmin, fmax, n_mels) -> int:
    """The largest band count below ``n_mels`` without empty bands (bisection; emptiness grows with the count)."""
    lo, hi = 1, n_mels - 1
    if empty_mel_bands(sample_rate=sample_rate, n_fft=n_fft, n_mels=1, fmin=fmin, fmax=fmax):
        return 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if empty_mel_bands(sample_rate=sample_rate, n_fft=n_fft, n_mels=mid, fmin=fmin, fmax=fmax):
            hi = mid - 1
        else:
            lo = mid
    return lo


# ----------------------------------------------------------------------------- pseudo-labels (issue 17)


def check_teachers(experiments, index: Dict[str, int], problems: List[str]) -> None:
    """Rules between a student (``pseudo:``) and its teacher, across the queue.

    experiments : the queue's parsed experiments; index : name -> position in the file (key paths).
    The student's fold k trains on outputs of the teacher's fold-k model, so both must split the
    same data by the same fold table: equal ``data`` and ``folds`` sections (the inputs of
    :func:`pipeline.folds.fold_key`; equal data also means equal targets and task). A cycle of
    teachers cannot be ordered; ``unknown`` needs data with unknown labels (rfcx ``unknown: mask``).
    """
    by_name = {exp.name: exp for exp in experiments}
    for exp in experiments:
        if exp.pseudo is None:
            continue
        where = f"experiments[{index[exp.name]}].pseudo"
        teacher = by_name.get(exp.pseudo.teacher)
        if exp.pseudo.teacher == exp.name:
            problems.append(f"{where}.teacher: {exp.name!r} cannot be its own teacher")
            continue
        if teacher is None:
            others = [n for n in by_name if n != exp.name]
            choose = (f"choose one of: {', '.join(others)}" if others else
                      "the queue has no other experiment; add the teacher experiment before this one")
            problems.append(f"{where}.teacher: {exp.pseudo.teacher!r} is not an experiment in this queue; {choose}")
            continue
        for section in ("data", "folds"):
            if getattr(teacher, section) != getattr(exp, section):
                problems.append(f"{where}.teacher: {teacher.name!r} has another {section} section; a student's "
                                f"fold k learns from its teacher's fold-k model, so both need the same data "
                                f"(targets, task) and the same folds")
        _check_pseudo_sources(exp, where, problems)
    _check_cycles(experiments, index, problems)


def _check_pseudo_sources(exp, where: str, problems: List[str]) -> None:
    data = exp.data
    if "unknown" in exp.pseudo.on and not (data.name in RFCX_SOURCES and data.params.unknown == "mask"):
        problems.append(f"{where}.on: unknown needs data with unknown labels (data.name {' or '.join(RFCX_SOURCES)} "
                        f"with unknown: mask); {data.name} has none")
    if "test" in exp.pseudo.on:
        if data.name in RFCX_SOURCES:
            problems.append(f"{where}.on: test pseudo-labels are for clip data; recordings with event boxes learn "
                            f"from their unknown labels (on: [unknown])")
        elif (data.name == "synthetic_whale" and data.params.n_test == 0) or (
                data.name == "table" and data.params.test_csv is None):
            problems.append(f"{where}.on: test needs a test set; {data.name} has none here "
                            f"({'data.n_test is 0' if data.name == 'synthetic_whale' else 'no data.test_csv'})")


def _check_cycles(experiments, index: Dict[str, int], problems: List[str]) -> None:
    """One problem per cycle of teachers (A teaches B teaches A), named by its members in order."""
    teacher_of = {exp.name: exp.pseudo.teacher for exp in experiments if exp.pseudo is not None}
    reported = set()
    for start in teacher_of:
        path, name = [], start
        while name in teacher_of and name not in path:
            path.append(name)
            name = teacher_of[name]
        if name in path:
            cycle = path[path.index(name):]
            if not reported & set(cycle) and len(cycle) > 1:
                reported |= set(cycle)
                first = min(cycle, key=index.__getitem__)
                chain = " -> ".join([*cycle[cycle.index(first):], *cycle[:cycle.index(first)], first])
                problems.append(f"experiments[{index[first]}].pseudo.teacher: teachers form a cycle ({chain}, "
                                f"each learns from the next); none of them can start first")
