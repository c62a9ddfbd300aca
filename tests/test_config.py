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


def test_missing_queue_file(tmp_path, capsys):
    assert main([str(tmp_path / "nope.yaml")]) == 2
    assert "queue file not found" in capsys.readouterr().err


def test_only_unknown_name(tmp_path, capsys):
    assert main([write(tmp_path, GOOD), "--only", "zzz"]) == 2
    assert "--only" in capsys.readouterr().err
    assert not (tmp_path / "output").exists()


def test_schema_defaults_are_valid():
    """Every schema dataclass can be built with its defaults (no contradictory rules)."""
    for kinds in (*schema.COMPONENT_SECTIONS.values(), schema.BLEND_METHODS):
        for cls in kinds.values():
            cls()
    for cls in schema.PLAIN_SECTIONS.values():
        cls()
