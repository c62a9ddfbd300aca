"""Queue-file validation: every malformed file is rejected up front, naming the key path, writing nothing."""

import os
import textwrap

import pytest

from pipeline import schema
from pipeline.cli import main
from pipeline.config import ConfigError, load_queue

GOOD = """
defaults:
  data: {name: synthetic_whale, n_train: 40, n_test: 10}
  features: complexity
  train: {epochs: 1}
experiments:
  - name: a
    model: inceptiontime
  - name: b
    model: {name: inceptiontime, residual: true}
blend: {method: mean}
"""


def write(tmp_path, text, name="queue.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_good_queue_resolves_defaults_and_paths(tmp_path):
    queue = load_queue(write(tmp_path, GOOD))
    a, b = queue.experiments
    assert a.name == "a" and b.model.params.residual is True and a.model.params.residual is False
    assert a.train.epochs == 1 and a.train.batch_size == schema.TrainSettings().batch_size
    assert a.data.params.root == os.path.join(str(tmp_path), "input", "synthetic_whale")
    assert queue.output_dir == os.path.join(str(tmp_path), "output")
    assert a.loss.name == "bce"
    assert a.config_hash() != b.config_hash()


def test_synthetic_rfcx_confusers_change_the_hash_only_when_set(tmp_path):
    """data.confusers (added later) is absent from the config when 0, so finished rfcx runs stay finished."""
    rfcx = GOOD.replace("data: {name: synthetic_whale, n_train: 40, n_test: 10}",
                        "data: {name: synthetic_rfcx, n_train: 8, n_test: 2, unknown: negative}\n  loss: masked_bce")
    plain, zero, six = (load_queue(write(tmp_path, rfcx.replace("unknown: negative", f"unknown: negative{extra}"),
                                         f"q{i}.yaml")).experiments[0]
                        for i, extra in enumerate(("", ", confusers: 0", ", confusers: 6")))
    assert "confusers" not in plain.to_dict()["data"] and plain.config_hash() == zero.config_hash()
    assert six.to_dict()["data"]["confusers"] == 6 and six.config_hash() != plain.config_hash()


def test_component_with_other_name_replaces_default_params(tmp_path):
    text = GOOD.replace("model: inceptiontime\n", "model: {name: inceptiontime, filters: 8}\n")
    text = text.replace("defaults:\n", "defaults:\n  model: {name: inceptiontime, filters: 4, depth: 2}\n")
    queue = load_queue(write(tmp_path, text))
    assert queue.experiments[0].model.params.filters == 8
    assert queue.experiments[0].model.params.depth == 2  # merged: same component name


# (YAML text, expected key path at the start of a problem line, a word the message must contain)
BAD = [
    ("experiments: [{name: a, model: xcepton, data: synthetic_whale, features: mel}]", "experiments[0].model.name", "choose one of"),
    (GOOD.replace("features: complexity", "features: mfcc"), "defaults.features.name", "not a feature"),
    (GOOD.replace("{method: mean}", "{method: voting}"), "blend.method.name", "not a blend method"),
    (GOOD.replace("train: {epochs: 1}", "train: {epochs: -1}"), "defaults.train.epochs", ">= 1"),
    (GOOD.replace("train: {epochs: 1}", "train: {epochs: 'ten'}"), "defaults.train.epochs", "integer"),
    (GOOD.replace("train: {epochs: 1}", "train: {epochs: 1.5}"), "defaults.train.epochs", "integer"),
    (GOOD.replace("train: {epochs: 1}", "train: {epochs: 1, learning_rate: 0}"), "defaults.train.learning_rate", "> 0"),
    (GOOD.replace("train: {epochs: 1}", "train: {epochs: 1, epoch: 3}"), "defaults.train.epoch", "unknown key"),
    (GOOD.replace("train: {epochs: 1}", "train: {epochs: 1}\n  folds: {n_splits: 1}"), "defaults.folds.n_splits", ">= 2"),
    (GOOD.replace("  - name: b\n", "  - name: a\n"), "experiments[1].name", "duplicate"),
    (GOOD.replace("  - name: b\n", "  - name: ../x\n"), "experiments[1].name", "not a safe name"),
    (GOOD.replace("  - name: b\n", "  - name: 'a b'\n"), "experiments[1].name", "not a safe name"),
    (GOOD.replace("  - name: b\n", "  - name: ..\n"), "experiments[1].name", "not a safe name"),
    (GOOD.replace("  - name: b\n", "  - name: blend\n"), "experiments[1].name", "reserved"),
    (GOOD.replace("  - name: b\n", "  - features: mel\n"), "experiments[1].name", "required"),
    (GOOD.replace("model: {name: inceptiontime, residual: true}", "model: {name: inceptiontime, residual: 'yes'}"),
     "experiments[1].model.residual", "true or false"),
    (GOOD.replace("model: {name: inceptiontime, residual: true}", "model: {name: inceptiontime, kernel_sizes: [0, 2]}"),
     "experiments[1].model.kernel_sizes", "positive integers"),
    (GOOD.replace("model: {name: inceptiontime, residual: true}", "model: {name: inceptiontime, widht: 3}"),
     "experiments[1].model.widht", "unknown key"),
    (GOOD.replace("{name: synthetic_whale, n_train: 40, n_test: 10}", "{name: kaggle_whale, root: nowhere/whale}"),
     "defaults.data.root", "not found"),
    (GOOD.replace("{name: synthetic_whale, n_train: 40, n_test: 10}", "{name: table, csv: missing.csv, audio_dir: .}"),
     "defaults.data.csv", "not found"),
    (GOOD.replace("experiments:", "experiment:"), "experiment", "unknown key"),
    (GOOD + "\nextra: 1\n", "extra", "unknown key"),
    ("experiments: []", "experiments", "non-empty list"),
    ("- just\n- a list\n", "<root>", "mapping"),
    ("experiments: [{name: a\n", "line", "not valid YAML"),
    ("experiments: !!python/object/apply:os.system ['echo hi']\n", "line", "YAML tag not allowed"),
    ("!!python/object:collections.OrderedDict {}\n", "line", "YAML tag not allowed"),
    (GOOD.replace("  - name: b\n    model: {name: inceptiontime, residual: true}\n", "  - 7\n"), "experiments[1]", "mapping"),
    (GOOD.replace("audio:", "x:") + "\n", "", ""),  # sanity: no audio key in GOOD, replacement is a no-op
    (GOOD.replace("{method: mean}", "{method: mean, include: [zzz]}"), "blend.include", "not an experiment"),
    (GOOD.replace("train: {epochs: 1}", "train: {epochs: 1}\n  audio: {sample_rate: 50}"), "defaults.audio.sample_rate", ">= 100"),
    (GOOD.replace("train: {epochs: 1}", "train: {epochs: 1, monitor: val_f1}"), "defaults.train.monitor", "choose one of"),
    (GOOD.replace("features: complexity", "features: {name: complexity, spectrum: cqt}"), "defaults.features.spectrum", "choose one of"),
    (GOOD.replace("features: complexity", "features: [complexity]"), "defaults.features", "expected a name or a mapping"),
]
# Weight averaging and test-time augmentation (issue 17): nested settings, named by their full key path.
_TRAIN = "train: {epochs: 1}"
BAD += [
    (GOOD.replace(_TRAIN, "train: {epochs: 1, ema: {momentum: 1.0}}"), "defaults.train.ema.momentum", "must be < 1"),
    (GOOD.replace(_TRAIN, "train: {epochs: 1, ema: {momentum: 0}}"), "defaults.train.ema.momentum", "> 0"),
    (GOOD.replace(_TRAIN, "train: {epochs: 1, ema: {decay: 0.9}}"), "defaults.train.ema.decay", "unknown key"),
    (GOOD.replace(_TRAIN, "train: {epochs: 1, ema: 0.99}"), "defaults.train.ema", "expected a mapping"),
    (GOOD.replace(_TRAIN, "train: {epochs: 4, swa: {epochs: 2, best: 2}}"), "defaults.train.swa", "exactly one"),
    (GOOD.replace(_TRAIN, "train: {epochs: 4, swa: {}}"), "defaults.train.swa", "got neither"),
    (GOOD.replace(_TRAIN, "train: {epochs: 4, swa: {epochs: 1}}"), "defaults.train.swa.epochs", ">= 2"),
    (GOOD.replace(_TRAIN, "train: {epochs: 4, swa: {best: 5}}"), "defaults.train.swa.best", "<= train.epochs"),
    (GOOD.replace(_TRAIN, _TRAIN + "\n  predict: {tta: [{shift: 0.1}, {flip: true}]}"), "defaults.predict.tta[1].flip",
     "unknown key"),
    (GOOD.replace(_TRAIN, _TRAIN + "\n  predict: {tta: {shift: 0.1}}"), "defaults.predict.tta", "expected a list"),
    (GOOD.replace(_TRAIN, _TRAIN + "\n  predict: {tta: [{shift: 5.0}]}"), "defaults.predict.tta[0].shift",
     "shorter than audio.duration"),
    (GOOD.replace(_TRAIN, _TRAIN + "\n  predict: {tta: [{gain_db: -6}]}"), "defaults.predict.tta[0].gain_db",
     "complexity"),
]
# A NUL in a path crashed the output check with a traceback (ValueError: embedded null byte).
BAD += [
    (GOOD.replace("{name: synthetic_whale, n_train: 40, n_test: 10}", '{name: kaggle_whale, root: "whale\\0x"}'),
     "defaults.data.root", "contains a control character"),
    (GOOD.replace("{name: synthetic_whale, n_train: 40, n_test: 10}", '{name: table, csv: "a\\nb.csv", audio_dir: .}'),
     "defaults.data.csv", "contains a control character"),
    (GOOD + '\noutput: "out\\0put"\n', "output", "contains a control character"),
    (GOOD + '\noutput: ""\n', "output", "got an empty string"),
    # A 300-character folder name passed, and the run failed with "OSError: File name too long" naming no key.
    (GOOD.replace("{name: synthetic_whale, n_train: 40, n_test: 10}", "{name: synthetic_whale, root: /tmp/" + "a" * 300
                  + "}"), "defaults.data.root", "a name of 300 bytes"),
    (GOOD + "\noutput: out/" + "b" * 256 + "\n", "output", "a name of 256 bytes"),
    ("experiments: []", "experiments", "got an empty list"),
    (GOOD.replace("{method: mean}", "{method: mean, include: []}"), "blend.include", "got an empty list"),
    # Two distinct labels and a repeated one: the message said "at least two distinct class labels".
    (GOOD.replace("{name: synthetic_whale, n_train: 40, n_test: 10}",
                  "{name: table, csv: t.csv, audio_dir: ., classes: [0, 0, 1]}"), "defaults.data.classes",
     "each class label once; got '0' more than once"),
    # Whale clips are used whole: crops were accepted and ignored in silence.
    (GOOD.replace("train: {epochs: 1}", "train: {epochs: 1}\n  crops: {crop_seconds: 1}"),
     "defaults.crops.crop_seconds", "would be ignored"),
    # YAML 1.1 reads a bare yes as a boolean: the name was given, not missing.
    (GOOD.replace("  - name: b\n", "  - name: yes\n"), "experiments[1].name", "got True (a boolean); quote it"),
]
BAD = [case for case in BAD if case[1]]


@pytest.mark.parametrize("text,key_path,words", BAD, ids=[f"{i}:{c[1]}" for i, c in enumerate(BAD)])
def test_malformed_queue_is_rejected_before_any_work(tmp_path, capsys, text, key_path, words):
    path = write(tmp_path, text)
    before = sorted(os.listdir(tmp_path))
    code = main([path])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line.strip() for line in err.splitlines()]
    assert any(line.startswith(key_path) and words in line for line in lines), err
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == before  # nothing written: no output/, no input/


def test_all_problems_reported_at_once_and_defaults_problems_once(tmp_path):
    text = GOOD.replace("train: {epochs: 1}", "train: {epochs: 0}").replace("model: inceptiontime", "model: nope")
    with pytest.raises(ConfigError) as info:
        load_queue(write(tmp_path, text))
    problems = info.value.problems
    assert sum(p.startswith("defaults.train.epochs") for p in problems) == 1
    assert any(p.startswith("experiments[0].model.name") for p in problems)


@pytest.mark.parametrize("flags", [["--force"], ["--only", "a"]])
def test_blend_only_with_a_flag_it_would_ignore_is_refused(tmp_path, capsys, flags):
    path = write(tmp_path, GOOD)
    assert main([path, "--blend-only", *flags]) == 2
    assert f"cannot be combined with {flags[0]}" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["queue.yaml"]


def test_a_queue_path_that_is_a_folder_is_named_as_such(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "queue file is a folder" in capsys.readouterr().err


def test_missing_queue_file(tmp_path, capsys):
    assert main([str(tmp_path / "nope.yaml")]) == 2
    assert "queue file not found" in capsys.readouterr().err


def test_only_unknown_name(tmp_path, capsys):
    assert main([write(tmp_path, GOOD), "--only", "zzz"]) == 2
    assert "--only" in capsys.readouterr().err
    assert not (tmp_path / "output").exists()


@pytest.mark.parametrize("only", ["", ",", " , ,"])
def test_only_without_names_is_refused_not_all(tmp_path, capsys, only):
    """`--only ","` must not mean "every experiment" (with --force that would delete every result)."""
    assert main([write(tmp_path, GOOD), "--only", only, "--force"]) == 2
    assert "--only: no experiment names given" in capsys.readouterr().err
    assert not (tmp_path / "output").exists()


def test_run_with_an_empty_only_runs_no_experiment(tmp_path, capsys):
    from pipeline.queue import run

    queue = load_queue(write(tmp_path, GOOD))
    assert run(queue, only=[], dry_run=True) == 0
    out = capsys.readouterr().out
    assert "0 experiment(s)" in out and "  a:" not in out and "  b:" not in out


def test_schema_defaults_are_valid():
    """Every schema dataclass can be built with its defaults (no contradictory rules)."""
    for kinds in (*schema.COMPONENT_SECTIONS.values(), schema.BLEND_METHODS):
        for entry in kinds.entries():
            entry.params()
    for cls in schema.PLAIN_SECTIONS.values():
        cls()


# ----------------------------------------------------------------------------- hostile YAML (issue 14, class 5)


def run_main(tmp_path, capsys, text, name="queue.yaml"):
    """main() on a queue file; returns (exit code, stderr, seconds). Asserts nothing else was written."""
    import time

    path = tmp_path / name
    path.write_text(text)
    before = sorted(os.listdir(tmp_path))
    started = time.perf_counter()
    code = main([str(path)])
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == before, "something was written"
    assert "Traceback" not in err
    return code, err, seconds


DUPLICATES = [
    # (text, a snippet on the line of the second key, one on the line of the first, the key)
    (GOOD + "experiments: [{name: c, model: inceptiontime}]\n", "experiments:", "experiments:", "experiments"),
    (GOOD.replace("train: {epochs: 1}", "train:\n    epochs: 1\n    batch_size: 8\n    epochs: 50"), "epochs: 50",
     "epochs: 1", "epochs"),
    (GOOD.replace("model: {name: inceptiontime, residual: true}", "model: {name: inceptiontime, depth: 2, depth: 3}"),
     "depth: 3", "depth: 2", "depth"),
    (GOOD.replace("  - name: b\n", "  - name: b\n    name: c\n"), "name: c", "name: b", "name"),
    ("defaults: {data: synthetic_whale}\ndefaults: {data: table}\nexperiments: []\n", "data: table",
     "data: synthetic_whale", "defaults"),
    (GOOD.replace("blend: {method: mean}", "blend:\n  method: mean\n  metric: auc\n  metric: log_loss"),
     "log_loss", "metric: auc", "metric"),
]


def line_of(text, snippet, last=False):
    numbers = [i + 1 for i, line in enumerate(text.splitlines()) if snippet in line]
    return numbers[-1] if last else numbers[0]


@pytest.mark.parametrize("text,second,first,key", DUPLICATES, ids=[c[3] for c in DUPLICATES])
def test_duplicate_yaml_keys_are_refused_with_line_numbers(tmp_path, capsys, text, second, first, key):
    text = textwrap.dedent(text)
    code, err, _ = run_main(tmp_path, capsys, text)
    assert code == 2
    expected = f"line {line_of(text, second, last=True)}, column"
    assert expected in err and f"duplicate key {key!r} (first at line {line_of(text, first)})" in err, err


def billion_laughs(where: str) -> str:
    """Nine anchors, each nine aliases of the one before: 9**9 leaves once expanded."""
    lines = ["  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    bomb = "\n".join(lines)
    if where == "model":  # expanded by the error message quoting the value (86 s, then MemoryError)
        return ("defaults:\n  data: synthetic_whale\n  features: mel\n  model: {name: cnn1d, filters: &x 1}\n"
                "lols:\n" + bomb + "\nexperiments:\n  - name: a\n    model: {name: cnn1d, filters: *a8}\n")
    return "experiments:\n  - name: a\n    model:\n" + bomb.replace("  a", "      a") + "\n"


def nested(depth: int, kind: str) -> str:
    if kind == "brackets":
        return "experiments: " + "[" * depth + "]" * depth + "\n"
    return "experiments: [{name: a, model: " + "{a: " * depth + "1" + "}" * depth + "}]\n"


HOSTILE = [
    ("billion-laughs-in-a-value", billion_laughs("model"), "expands to more than"),
    ("billion-laughs-under-a-key", billion_laughs("key"), "expands to more than"),
    ("merge-key-bomb", "b0: &b0 {k: [x, x, x, x, x, x, x, x, x, x]}\n" + "".join(
        f"b{i}: &b{i} {{<<: [" + ", ".join([f"*b{i - 1}"] * 9) + f"], x{i}: [*b{i - 1}, *b{i - 1}, *b{i - 1}]}}\n"
        for i in range(1, 9)) + "experiments: []\n", "expands to more than"),
    ("100000-brackets", nested(100_000, "brackets"), "nested more than"),
    ("deep-valid-mappings", nested(5_000, "mappings"), "nested more than"),
    ("recursive-alias", "experiments: &e [{name: a, model: *e}]\n", "recursive structure"),
    ("duplicate-anchor", "a: &x 1\nb: &x 2\nexperiments: []\n", "anchor &x is defined twice (first at line 1)"),
    ("list-as-key", "? [a, b]\n: 1\nexperiments: []\n", "not valid in a queue file"),
    ("5000-digit-integer", GOOD.replace("epochs: 1", "epochs: " + "9" * 5000), "cannot read this value"),
    ("impossible-date", GOOD.replace("epochs: 1", "epochs: 2026-02-30"), "cannot read this value"),
]


@pytest.mark.parametrize("text,words", [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_yaml_exits_2_within_seconds(tmp_path, capsys, text, words):
    code, err, seconds = run_main(tmp_path, capsys, textwrap.dedent(text))
    assert code == 2 and words in err and "line " in err, err
    assert seconds < 5, f"took {seconds:.1f} s"  # was 86 s then MemoryError, or a RecursionError traceback


def test_huge_queue_file_is_refused_by_size(tmp_path, capsys):
    text = GOOD + "# " + "x" * 1_100_000 + "\n"
    code, err, seconds = run_main(tmp_path, capsys, text)
    assert code == 2 and "at most 1,000,000 bytes" in err and seconds < 5, err


def test_anchors_aliases_and_merge_keys_still_work(tmp_path):
    text = """
    defaults:
      data: {name: synthetic_whale, n_train: 40, n_test: 10}
      features: &feat {name: mel, n_fft: 128, hop_length: 32, n_mels: 32}
    experiments:
      - name: a
        model: &model {name: inceptiontime, filters: 8, depth: 2}
        train: &train {epochs: 1, batch_size: 8}
      - name: b
        model: {<<: *model, depth: 3}
        train: *train
        features: {<<: *feat, n_mels: 16}
    """
    a, b = load_queue(write(tmp_path, text)).experiments
    assert (b.model.params.filters, b.model.params.depth, a.model.params.depth) == (8, 3, 2)
    assert b.train == a.train and b.train.batch_size == 8
    assert (a.features.params.n_mels, b.features.params.n_mels, b.features.params.n_fft) == (32, 16, 128)


# ----------------------------------------------------------------------------- values that failed late


def queue_with(extra="", data="{name: synthetic_whale, n_train: 40, n_test: 10}", features="complexity",
               experiment="model: inceptiontime"):
    """A one-experiment queue; ``extra`` (defaults sections) and ``experiment`` are YAML lines without indent."""
    return (f"defaults:\n  data: {data}\n  features: {features}\n  train: {{epochs: 1}}\n"
            + textwrap.indent(extra + "\n", "  ") + "experiments:\n  - name: a\n" + textwrap.indent(experiment + "\n", "    "))


RFCX = "{name: synthetic_rfcx, n_train: 8, n_test: 2, duration: 4.0}"
RFCX_AUDIO = "audio: {sample_rate: 16000, duration: 4.0}"
RFCX_OK = "model: sed\nloss: sed\nfeatures: {name: mel, n_fft: 1024, hop_length: 512, n_mels: 32}"

LATE = [
    ("seed-2**32", queue_with("folds: {seed: 4294967296}"), "defaults.folds.seed", "<= 4294967295"),
    ("train-seed", queue_with("train: {seed: 4294967296}").replace("  train: {epochs: 1}\n", ""),
     "defaults.train.seed", "<= 4294967295"),
    ("shuffle-1e20", queue_with("train: {shuffle_buffer: 100000000000000000000}").replace("  train: {epochs: 1}\n", ""),
     "defaults.train.shuffle_buffer", "<="),
    ("shard-tiny", queue_with("cache: {shard_mb: 0.0000001}"), "defaults.cache.shard_mb", ">= 0.001"),
    ("n_train-1e8", queue_with(data="{name: synthetic_whale, n_train: 100000000}"), "defaults.data.n_train", "<="),
    ("rfcx-n_train", queue_with(data="{name: synthetic_rfcx, n_train: 100000000}"), "defaults.data.n_train", "<="),
    ("fmin>fmax", queue_with(experiment="model: inceptiontime\nfeatures: {name: mel, fmin: 900, fmax: 400}"),
     "experiments[0].features.fmin", "must be < fmax (400)"),
    ("fmin-default-fmax", queue_with(features="{name: complexity, fmin: 1000}"), "defaults.features.fmin",
     "audio.sample_rate / 2 (1000 Hz)"),
    ("fmax>nyquist", queue_with(features="{name: mel, fmax: 4000}"), "defaults.features.fmax", "Nyquist"),
    ("n_fft>clip", queue_with("audio: {duration: 0.05}"), "defaults.features.n_fft", "clip length"),
    ("n_mels>bins", queue_with(features="{name: mel, n_fft: 16, n_mels: 64}"), "defaults.features.n_mels",
     "no FFT bin"),
    ("clip-too-long", queue_with("audio: {duration: 3600, sample_rate: 384000}"), "defaults.audio.duration",
     "too long"),
    ("features-too-big", queue_with("audio: {duration: 3600, sample_rate: 16000}", features="{name: mel, hop_length: 1}"),
     "defaults.features.hop_length", "values per clip"),
    ("kernel-size-list", queue_with(experiment="model: {name: inceptiontime, kernel_sizes: [4, 100000]}"),
     "experiments[0].model.kernel_sizes", "<= 1025"),
    ("vit-waveform", queue_with(features="waveform", experiment="model: vit"), "experiments[0].model.name",
     "vit takes features mel or complexity; got features waveform"),
    ("vit-patch-3d", queue_with(features="mel", experiment="model: {name: vit, patch_size: [8, 8, 8]}"),
     "experiments[0].model.patch_size", "at most 2"),
    ("time_mask>=frames", queue_with("augment: {time_mask: 500}"), "defaults.augment.time_mask", "frames"),
    ("freq_mask-waveform", queue_with("augment: {freq_mask: 2}", features="waveform", experiment="model: cnn1d"),
     "defaults.augment.freq_mask", "frequency axis"),
    ("freq_mask>=mels", queue_with("augment: {freq_mask: 64}", features="mel"), "defaults.augment.freq_mask",
     "64 feature channels"),
    ("gain-complexity", queue_with("augment: {gain_db: 6}"), "defaults.augment.gain_db", "scale"),
    ("lwlrap-whale", queue_with("train: {monitor: val_lwlrap}").replace("  train: {epochs: 1}\n", ""),
     "defaults.train.monitor", "rfcx data only"),
    ("rfcx-bce", queue_with(RFCX_AUDIO, data=RFCX, experiment="model: sed\nfeatures: mel"),
     "defaults.loss.name", "masked_bce or sed"),
    ("rfcx-mixup", queue_with(RFCX_AUDIO + "\naugment: {mixup_alpha: 0.4}", data=RFCX, experiment=RFCX_OK),
     "defaults.augment.mixup_alpha", "NaN"),
    ("rfcx-crop>duration", queue_with(RFCX_AUDIO + "\ncrops: {crop_seconds: 10.0}", data=RFCX, experiment=RFCX_OK),
     "defaults.crops.crop_seconds", "<= audio.duration (4 s"),
    ("rfcx-hop>window", queue_with(RFCX_AUDIO + "\ncrops: {crop_seconds: 2.0, window_hop_seconds: 3.0}", data=RFCX,
                                   experiment=RFCX_OK), "defaults.crops.window_hop_seconds", "never predicted"),
    ("folds>positives", queue_with("folds: {n_splits: 5}", data="{name: synthetic_whale, n_train: 20, "
                                                                "positive_fraction: 0.1}"),
     "defaults.folds.n_splits", "must be <= 2"),
    ("folds>recordings", queue_with(RFCX_AUDIO + "\nfolds: {n_splits: 9}", data=RFCX, experiment=RFCX_OK),
     "defaults.folds.n_splits", "must be <= data.n_train (8"),
    ("sed-backbone-small-input", queue_with(features="{name: mel, n_mels: 16}",
                                            experiment="model: {name: sed, backbone: EfficientNetB0}"),
     "experiments[0].model.backbone", "at least 32 x 32"),
    ("rfcx-sed-loss-model", queue_with(RFCX_AUDIO, data=RFCX, experiment="model: cnn1d\nloss: sed\n"
                                       "features: {name: mel, n_fft: 1024, hop_length: 512, n_mels: 32}"),
     "experiments[0].loss.name", "needs model.name sed"),
    # Checks that pipeline.rfcx_train and pipeline.augment ran only after the features were built.
    ("rfcx-time_shift", queue_with(RFCX_AUDIO + "\naugment: {time_shift: 0.2}", data=RFCX, experiment=RFCX_OK),
     "defaults.augment.time_shift", "misalign the framewise targets"),
    ("rfcx-class_weight", queue_with(RFCX_AUDIO + "\ntrain: {class_weight: balanced}", data=RFCX,
                                     experiment=RFCX_OK).replace("  train: {epochs: 1}\n", ""),
     "defaults.train.class_weight", "need known labels"),
    ("rfcx-waveform", queue_with(RFCX_AUDIO, data=RFCX, experiment="model: cnn1d\nloss: masked_bce\nfeatures: waveform"),
     "experiments[0].features.name", "time-major features"),
    ("sed-weights-cnn", queue_with("model: {name: sed, weights: queue.yaml}", features="mel", experiment=""),
     "defaults.model.weights", "built-in cnn starts from random weights"),
    ("predict-hop>window", queue_with("predict: {hop_seconds: 3.0}"), "defaults.predict.hop_seconds",
     "never predicted"),
    # Classical families (issue 17): whole clips only; percentiles within 1-100.
    ("rfcx-classical", queue_with(RFCX_AUDIO, data=RFCX, experiment="model: hgb\nloss: masked_bce\n"
                                  "features: {name: mel, n_fft: 1024, hop_length: 512, n_mels: 32}"),
     "experiments[0].model.name", "hgb fits pooled features of whole clips and does not support long recordings"),
    ("logreg-percentile>100", queue_with(experiment="model: {name: logreg, percentiles: [50, 101]}"),
     "experiments[0].model.percentiles", "<= 100"),
    ("logreg-ema", queue_with(experiment="model: logreg\ntrain: {epochs: 2, ema: {momentum: 0.9}}"),
     "experiments[0].train.ema", "logreg is fitted once"),
]


@pytest.mark.parametrize("text,key_path,words", [c[1:] for c in LATE], ids=[c[0] for c in LATE])
def test_values_that_failed_late_exit_2_naming_the_key(tmp_path, capsys, text, key_path, words):
    code, err, _ = run_main(tmp_path, capsys, text)
    assert code == 2, err
    lines = [line.strip() for line in err.splitlines()]
    assert any(line.startswith(key_path + ":") and words in line for line in lines), err


@pytest.mark.parametrize("classes, refused", [("[dog, cat, bird]", True), ("[0, 1]", False), (None, False)])
def test_masked_bce_on_declared_multiclass_table_exits_2(tmp_path, capsys, classes, refused):
    """A table's declared classes fix the task at config time; an inferred task is checked at training."""
    (tmp_path / "train.csv").write_text("file,label\na.wav,dog\n")
    declared = "" if classes is None else f", classes: {classes}"
    text = queue_with(data=f"{{name: table, csv: train.csv, audio_dir: .{declared}}}",
                      experiment="model: inceptiontime\nloss: masked_bce")
    if refused:
        code, err, _ = run_main(tmp_path, capsys, text)
        assert code == 2 and "experiments[0].loss.name: masked_bce needs binary or multilabel targets" in err
        assert "declares 3 classes" in err
    else:
        load_queue(write(tmp_path, text))


def test_cross_section_problems_are_reported_together_with_the_rest(tmp_path):
    text = queue_with(experiment="model: nope") + (
        "  - name: b\n    model: inceptiontime\n    features: {name: complexity, fmin: 1000}\nblend: {metric: f1}\n")
    with pytest.raises(ConfigError) as info:
        load_queue(write(tmp_path, text))
    starts = [p.split(":")[0] for p in info.value.problems]
    assert starts == ["experiments[0].model.name", "experiments[1].features.fmin", "blend.metric"]


def test_cross_section_problems_of_a_valid_experiment_are_all_listed(tmp_path):
    text = queue_with("augment: {gain_db: 6, time_mask: 500}", features="{name: complexity, n_fft: 256}")
    with pytest.raises(ConfigError) as info:
        load_queue(write(tmp_path, text))
    starts = [p.split(":")[0] for p in info.value.problems]
    assert starts == ["defaults.augment.time_mask", "defaults.augment.gain_db"]


def test_empty_mel_bands_match_the_filter_bank():
    """config_checks finds librosa's empty bands without numpy (validation stays light)."""
    import itertools

    from pipeline.config_checks import empty_mel_bands
    from pipeline.features import empty_mel_bands as reference

    for rate, n_fft, n_mels, band in itertools.product((2000, 16000, 22050), (16, 255, 256, 1024), (8, 40, 128),
                                                        ((0.0, None), (30.0, 400.0), (300.0, 900.0))):
        fmin, fmax = band[0], band[1] or rate / 2
        assert empty_mel_bands(sample_rate=rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax) == reference(
            sample_rate=rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax), (rate, n_fft, n_mels, band)


def _numeric_fields():
    import dataclasses
    import typing

    classes = [e.params for kinds in (*schema.COMPONENT_SECTIONS.values(), schema.BLEND_METHODS) for e in kinds.entries()]
    classes += list(schema.PLAIN_SECTIONS.values())
    classes += [schema.EmaSettings, schema.SwaSettings, schema.TtaView]  # nested in train / predict
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
            if args[0] in (int, float, tuple):
                yield pytest.param(cls, f, args[0], id=f"{cls.__name__}.{f.name}")


@pytest.mark.parametrize("cls,field,kind", list(_numeric_fields()))
def test_every_number_has_an_upper_bound(cls, field, kind):
    """A new numeric field cannot be added without a documented maximum (absurd values fail before any work)."""
    import dataclasses

    meta = field.metadata
    if kind is tuple and (meta.get("items") == "label" or dataclasses.is_dataclass(meta.get("items"))):
        assert "max_len" in meta, f"{cls.__name__}.{field.name}: add max_len"
    elif kind is tuple:
        assert "max_len" in meta and "item_max" in meta, f"{cls.__name__}.{field.name}: add max_len and item_max"
    else:
        assert "max" in meta or "choices" in meta, f"{cls.__name__}.{field.name}: add max="
        assert "min" in meta or "min_exclusive" in meta, f"{cls.__name__}.{field.name}: add min="


def test_a_number_in_exponent_form_is_a_number(tmp_path):
    """PyYAML (YAML 1.1) reads 1e-3 as a string: `learning_rate: 1e-3` was refused as "got '1e-3' (a string)"."""
    path = write(tmp_path, GOOD.replace("train: {epochs: 1}", "train: {epochs: 1, learning_rate: 1e-3}"))
    assert load_queue(path).experiments[0].train.learning_rate == 0.001


def test_a_rerun_says_which_keys_of_the_config_changed(tmp_path, capsys):
    """'starting afresh (its config changed)' did not say what changed, nor did the plan."""
    from pipeline import ownership, status
    from pipeline.config import config_changes, dump_experiment

    path = write(tmp_path, GOOD)
    old = load_queue(path).experiments[1]
    changed = write(tmp_path, GOOD.replace("train: {epochs: 1}", "train: {epochs: 2}"), "new.yaml")
    new = load_queue(changed).experiments[1]
    assert config_changes(dump_experiment(old), new) == "train.epochs: 1 -> 2"
    assert config_changes(dump_experiment(old), old) == ""
    exp_dir = tmp_path / "output" / old.name
    ownership.make_owned_dir(str(tmp_path / "output"))
    ownership.make_owned_dir(str(exp_dir))
    (exp_dir / "config.yaml").write_text(dump_experiment(old))
    status.write_status(str(exp_dir), state="done", config_hash=old.config_hash())
    assert main([str(tmp_path / "new.yaml"), "--dry-run"]) == 0
    assert f"{old.name}: run (config changed: train.epochs: 1 -> 2; start afresh)" in capsys.readouterr().out
