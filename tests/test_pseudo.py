"""Pseudo-labels and distillation with honest CV (issue 17): a student's fold k learns only from its teacher's fold k.

Teachers are written directly (their fold folders with predictions or models whose outputs are known), so
the tests need no teacher training: a memorising teacher, a naive all-data teacher, and marker teachers whose
fold-j outputs carry the value j, which lets a test trace which teacher fold reached a student's fold.
"""

import os
import textwrap

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import pseudo
from pipeline.cli import main
from pipeline.config import ConfigError, parse_queue, run_order

pytestmark = pytest.mark.usefixtures("no_report")  # the report: tests/test_report.py

RATE = 2000
N_CLIPS = 32

HEAD = """
defaults:
  data: {name: synthetic_whale, n_train: 40, n_test: 10}
  features: complexity
  model: inceptiontime
experiments:
"""


def queue_of(text: str, base_dir: str = "/tmp"):
    return parse_queue(yaml.safe_load(textwrap.dedent(HEAD) + textwrap.dedent(text)), source="q.yaml",
                       base_dir=base_dir)


# ----------------------------------------------------------------------------- the queue file


@pytest.mark.parametrize("experiments,message", [
    ("""
  - name: a
  - name: b
    pseudo: {teacher: nope}
""", "experiments[1].pseudo.teacher: 'nope' is not an experiment in this queue; choose one of: a"),
    ("""
  - name: a
    pseudo: {teacher: zz}
""", "'zz' is not an experiment in this queue; the queue has no other experiment"),  # was "choose one of: " (none)
    ("""
  - name: a
    pseudo: {teacher: b}
  - name: b
    pseudo: {teacher: c}
  - name: c
    pseudo: {teacher: a}
""", "experiments[0].pseudo.teacher: teachers form a cycle (a -> b -> c -> a"),
    ("""
  - name: a
    pseudo: {teacher: a}
""", "experiments[0].pseudo.teacher: 'a' cannot be its own teacher"),
    ("""
  - name: a
  - name: b
    data: {n_train: 60}
    pseudo: {teacher: a}
""", "experiments[1].pseudo.teacher: 'a' has another data section"),
    ("""
  - name: a
  - name: b
    folds: {seed: 1}
    pseudo: {teacher: a}
""", "experiments[1].pseudo.teacher: 'a' has another folds section"),
    ("""
  - name: a
  - name: b
    pseudo: {teacher: a, on: [unknown]}
""", "experiments[1].pseudo.on: unknown needs data with unknown labels"),
    ("""
  - name: a
  - name: b
    pseudo: {teacher: a, on: [test, test], mode: soft}
""", "experiments[1].pseudo.on: lists ['test', 'test']"),
    ("""
  - name: a
  - name: b
    pseudo: {teacher: a, threshold: 0.4}
""", "experiments[1].pseudo.threshold: must be >= 0.5"),
    ("""
  - name: a
  - name: b
    pseudo: {teacher: a, weight: 0}
""", "experiments[1].pseudo.weight: must be > 0.0"),
    ("""
  - name: a
  - name: b
    pseudo: {teacher: a, temperature: 2}
""", "experiments[1].pseudo.temperature: unknown key"),
    ("""
  - name: a
  - name: b
    pseudo: {on: [test]}
""", "experiments[1].pseudo.teacher: required"),
])
def test_bad_teachers_exit_2_before_anything_is_written(tmp_path, capsys, experiments, message):
    path = tmp_path / "queue.yaml"
    path.write_text(textwrap.dedent(HEAD) + textwrap.dedent(experiments))
    assert main([str(path)]) == 2
    assert message in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["queue.yaml"]


def test_unknown_labels_and_test_clips_need_the_right_data():
    text = HEAD.replace("synthetic_whale, n_train: 40, n_test: 10", "synthetic_rfcx, n_train: 8, unknown: negative")
    text = text.replace("features: complexity", "features: mel\n  loss: masked_bce")
    with pytest.raises(ConfigError) as err:
        parse_queue(yaml.safe_load(textwrap.dedent(text) + "  - name: a\n  - name: b\n    pseudo: {teacher: a, "
                                   "on: [unknown, test]}\n"), source="q.yaml", base_dir="/tmp")
    assert "experiments[1].pseudo.on: unknown needs data with unknown labels" in str(err.value)
    assert "experiments[1].pseudo.on: test pseudo-labels are for clip data" in str(err.value)
    with pytest.raises(ConfigError, match=r"pseudo.on: test needs a test set; synthetic_whale has none here"):
        queue_of("""
  - name: a
    data: {n_test: 0}
  - name: b
    data: {n_test: 0}
    pseudo: {teacher: a}
""")


def test_teachers_run_first_rounds_chain_and_the_default_config_is_unchanged():
    q = queue_of("""
  - name: round2
    pseudo: {teacher: round1, mode: hard, threshold: 0.9}
  - name: other
  - name: round1
    pseudo: {teacher: base, weight: 0.5}
  - name: base
""")
    by = {e.name: e for e in q.experiments}
    assert [e.name for e in q.experiments] == ["round2", "other", "round1", "base"]  # file order kept in the queue
    assert [e.name for e in run_order(q.experiments)] == ["base", "round1", "round2", "other"]
    assert by["round2"].requires == ("round1",) and by["base"].requires == ()
    assert by["round2"].teacher.teacher.name == "base"  # rounds: the whole chain is resolved
    assert "pseudo" not in by["base"].to_dict() and by["round1"].to_dict()["pseudo"]["teacher"] == "base"
    # A student's identity covers its teachers': a changed base retrains round1 and round2.
    changed = queue_of("""
  - name: round2
    pseudo: {teacher: round1, mode: hard, threshold: 0.9}
  - name: round1
    pseudo: {teacher: base, weight: 0.5}
  - name: base
    model: {filters: 16}
""")
    new = {e.name: e for e in changed.experiments}
    for name in ("base", "round1", "round2"):
        assert new[name].config_hash() != by[name].config_hash(), name
    assert by["other"].config_hash() == queue_of("  - name: other\n").experiments[0].config_hash()
    # `on` is read as a key although YAML 1.1 reads a bare `on` as true
    assert by["round1"].pseudo.on == ("test",)


def test_a_student_of_a_failed_or_unfinished_teacher_fails_naming_it(tmp_path):
    from pipeline.status import write_status

    q = queue_of("""
  - name: base
  - name: student
    pseudo: {teacher: base}
""")
    base, student = q.experiments
    folder = str(tmp_path / "base")
    with pytest.raises(pseudo.TeacherError, match=r"the teacher 'base' of 'student' is not finished \(it has not run\)"):
        pseudo.check_teacher(student, folder)
    os.makedirs(folder)
    write_status(folder, state="failed", error="TrainingError: the loss became NaN", config_hash=base.config_hash())
    with pytest.raises(pseudo.TeacherError, match=r"'base' of 'student' is not finished \(it failed: TrainingError"):
        pseudo.check_teacher(student, folder)
    write_status(folder, state="done")
    with pytest.raises(pseudo.TeacherError, match=r"'base' of 'student' lacks finished folds \[0, 1, 2, 3, 4\]"):
        pseudo.check_teacher(student, folder)
    write_status(folder, state="done", config_hash="another config")
    with pytest.raises(pseudo.TeacherError, match=r"not finished \(it has not finished on its current config\)"):
        pseudo.check_teacher(student, folder)


def test_a_student_refuses_a_teacher_that_ran_on_other_data(tmp_path):
    """A teacher trained before clips were relabelled split them by another fold table: its fold-k model may
    have seen the student's fold-k validation clips (e.g. ``--only student`` after editing the data)."""
    import pandas as pd

    from pipeline import layout
    from pipeline.data import load_dataset
    from pipeline.data.identity import write_clips
    from pipeline.queue import Paths, _check_teacher
    from pipeline.status import write_status

    base, student = queue_of("""
  - name: base
  - name: student
    pseudo: {teacher: base}
""", base_dir=str(tmp_path)).experiments
    paths = Paths(str(tmp_path / "output"))
    dataset = load_dataset(base.data.name, base.data.params)
    folder = paths.experiment("base")
    for k in range(base.folds.n_splits):
        os.makedirs(layout.fold_dir(folder, k))
        open(layout.fold_file(folder, k, layout.DONE), "w").close()
    write_clips(layout.experiment_file(folder, layout.CLIPS), dataset.identity)
    write_status(folder, state="done", config_hash=base.config_hash(), data=dataset.identity.checked())
    assert _check_teacher(student, paths, dataset) == folder
    table = os.path.join(base.data.params.root, "train.csv")
    train = pd.read_csv(table)
    train.loc[0, "label"] = 1 - train.loc[0, "label"]
    train.to_csv(table, index=False)
    with pytest.raises(pseudo.TeacherError, match=r"the teacher 'base' of 'student' ran on other data \("):
        _check_teacher(student, paths, load_dataset(base.data.name, base.data.params))


def test_hard_targets_keep_only_confident_labels_and_fill_never_overwrites_known_ones():
    p = np.array([[0.95, 0.3], [0.6, 0.05]])
    np.testing.assert_array_equal(pseudo.hard_targets(p, "multilabel", 0.9), [[1, np.nan], [np.nan, 0]])
    np.testing.assert_array_equal(pseudo.hard_targets(p, "multilabel", 0.5), [[1, 0], [1, 0]])
    np.testing.assert_array_equal(pseudo.hard_targets(np.array([[0.7, 0.3], [0.45, 0.55]]), "multiclass", 0.6),
                                  [[1, 0], [np.nan, np.nan]])
    # rfcx rows: a tp species (target 1, NaN outside its boxes), unknown ones (NaN, target 0), a known absent one;
    # two windows per recording
    targets = np.array([[1, 0], [0, 0]], np.float32)
    defaults = np.array([[np.nan, np.nan], [np.nan, 0]], np.float32)
    labels = np.concatenate([defaults, np.full((2, 3), 7.0, np.float32)], axis=1)  # frame defaults + boxes
    windows = np.array([[[0.2, 0.8], [0.3, 0.1]], [[np.nan, 0.9], [0.4, 0.6]]])  # [n, W, C]
    filled_labels, filled, n = pseudo.fill_unknown(labels, targets, windows)
    np.testing.assert_array_equal(filled, np.array([[1, 0.8], [0.4, 0]], np.float32))  # the largest window value
    np.testing.assert_array_equal(filled_labels[:, :5], labels)  # defaults and boxes as they were
    # then per window the values of the unknown labels only (W-major: window 0's C values, window 1's)
    np.testing.assert_array_equal(filled_labels[:, 5:], np.array([[np.nan, 0.8, np.nan, 0.1],
                                                                  [np.nan, np.nan, 0.4, np.nan]], np.float32))
    assert n == 2


def test_each_frame_takes_the_pseudo_labels_of_the_nearest_window():
    # 10 frames of 0.1 s; windows centred at 0.2 s and 0.7 s
    np.testing.assert_array_equal(pseudo.frame_segments(10, 0.1, np.array([0.2, 0.7])),
                                  [0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    # the teacher's frames can be longer than the student's: seconds decide
    np.testing.assert_array_equal(pseudo.frame_segments(4, 0.5, np.array([0.1, 0.8, 1.3])), [0, 1, 1, 2])


# ----------------------------------------------------------------------------- clips: a memorising teacher

LEAK_QUEUE = f"""
defaults:
  data: {{name: table, csv: train.csv, audio_dir: audio, test_csv: test.csv, test_audio_dir: test_audio}}
  audio: {{sample_rate: {RATE}, duration: 0.5}}
  features: {{name: mel, n_fft: 512, hop_length: 128, n_mels: 96}}
  cache: {{workers: 1}}
  folds: {{n_splits: 2, seed: 0}}
  train: {{epochs: 3, batch_size: 2, learning_rate: 0.01, patience: 100, monitor: val_loss}}
  model: {{name: inceptiontime, filters: 16, depth: 1, bottleneck: 0, kernel_sizes: [1]}}
experiments:
  - name: teacher
  - name: student
    pseudo: {{teacher: teacher, weight: 4.0}}
"""


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    """Clips that a model can only memorise: a pure tone each (its own frequency), labels by coin flip.

    The test set holds a quieter copy of every training clip (``t<i>`` of ``c<i>``), so a teacher's
    test predictions can carry training labels: a student that trains on the copy of a validation
    clip with its label learns that validation clip's label.
    """
    import soundfile as sf

    from pipeline.cache.build import ensure_features
    from pipeline.data import load_dataset
    from pipeline.folds import ensure_folds

    tmp = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(0)
    (tmp / "audio").mkdir()
    (tmp / "test_audio").mkdir()
    freqs = rng.permutation(np.linspace(80, 900, N_CLIPS))
    labels = rng.permutation(np.arange(N_CLIPS) % 2)
    t = np.arange(int(0.5 * RATE)) / RATE
    for i in range(N_CLIPS):
        x = (0.5 * np.sin(2 * np.pi * freqs[i] * t)).astype(np.float32)
        sf.write(tmp / "audio" / f"c{i}.wav", x, RATE)
        sf.write(tmp / "test_audio" / f"t{i}.wav", 0.9 * x, RATE)
    pd.DataFrame({"file": [f"c{i}.wav" for i in range(N_CLIPS)], "label": labels}).to_csv(tmp / "train.csv",
                                                                                        index=False)
    pd.DataFrame({"file": [f"t{i}.wav" for i in range(N_CLIPS)]}).to_csv(tmp / "test.csv", index=False)
    q = parse_queue(yaml.safe_load(LEAK_QUEUE), source="q.yaml", base_dir=str(tmp))
    teacher, student = q.experiments
    dataset = load_dataset(teacher.data.name, teacher.data.params)
    cache = ensure_features(dataset, str(tmp / "cache"), data=teacher.data, audio=teacher.audio,
                            features=teacher.features, cache=teacher.cache, predict=teacher.predict, progress=False)
    folds = ensure_folds(dataset, teacher.data, teacher.folds, str(tmp / "folds"))
    return {"tmp": tmp, "student": student, "dataset": dataset, "cache": cache, "folds": folds,
            "fold_of": dict(zip(folds["id"], folds["fold"])), "label_of": dict(zip(dataset.train["id"],
                                                                                   dataset.train["label"]))}


def write_teacher(folder, tones, output) -> str:
    """A teacher's fold folders with ``test.csv`` = ``output(k, training twin of the test clip)`` per fold k."""
    test_ids = list(tones["dataset"].test["id"])
    for k in range(2):
        os.makedirs(folder / f"fold{k}", exist_ok=True)
        preds = [float(output(k, "c" + clip[1:])) for clip in test_ids]
        pd.DataFrame({"id": test_ids, "pred": preds}).to_csv(folder / f"fold{k}" / "test.csv", index=False)
    return str(folder)


def memorising(tones):
    """Fold k's model knows the labels of fold k's training clips only (unseen clips: the prior, 0.5)."""
    return lambda k, clip: tones["label_of"][clip] if tones["fold_of"][clip] != k else 0.5


def student_oof_auc(tones, teacher_dir, out) -> float:
    from pipeline.fold_job import run_fold_job
    from pipeline.fold_loop import plan_folds
    from pipeline.metrics import auc

    plan = plan_folds(tones["student"], tones["dataset"], tones["cache"], tones["folds"], str(tones["tmp"] / out),
                      teacher_dir)
    oof = pd.concat([run_fold_job(plan.job(k))[0] for k in range(2)])
    return auc(oof[["label"]].to_numpy(), oof[["pred"]].to_numpy())


@pytest.mark.slow
def test_a_memorising_teacher_does_not_inflate_the_cv_but_a_naive_one_does(tones):
    """The leak test: the fold-k rule keeps the CV at chance; a naive all-data teacher inflates it.

    Labels are coin flips independent of the audio, so a student without pseudo-labels - or with
    pseudo-labels that carry no validation label - scores chance (OOF AUC 0.5) in expectation.
    """
    honest = write_teacher(tones["tmp"] / "honest", tones, memorising(tones))
    naive = write_teacher(tones["tmp"] / "naive", tones, lambda k, clip: tones["label_of"][clip])
    honest_auc = student_oof_auc(tones, honest, "honest_student")
    naive_auc = student_oof_auc(tones, naive, "naive_student")
    assert honest_auc < 0.5 + 0.2, honest_auc  # chance, within the noise of 32 clips
    assert naive_auc > honest_auc + 0.25, (naive_auc, honest_auc)  # the leak is there to be detected


def test_a_student_fold_trains_only_on_its_teacher_fold_outputs_and_never_on_validation_clips(tones):
    """Trace: the ids and targets that reach each student fold's training examples."""
    from pipeline.cache.read import FeatureCache
    from pipeline.fold_loop import plan_folds
    from pipeline.fold_strategies import ClipStrategy

    marker = {0: 0.25, 1: 0.75}  # teacher fold j predicts marker[j] for every test clip
    teacher = write_teacher(tones["tmp"] / "marker", tones, lambda k, clip: marker[k])
    plan = plan_folds(tones["student"], tones["dataset"], tones["cache"], tones["folds"],
                      str(tones["tmp"] / "trace"), teacher)
    for k in range(2):
        job = plan.job(k)
        examples, n, n_pseudo = ClipStrategy().training_examples(job, FeatureCache(job.cache_dir))
        seen = [(i.decode(), float(y[0]), float(w)) for i, _, y, w in examples.as_numpy_iterator()]
        ids = [i for i, _, _ in seen]
        assert len(ids) == n == len(job.train_ids) + n_pseudo and n_pseudo == N_CLIPS
        assert not set(ids) & set(job.valid_ids)
        assert all(tones["fold_of"][i] != k for i in job.train_ids)
        real = [(i, y, w) for i, y, w in seen if i in set(job.train_ids)]
        assert [(y, w) for _, y, w in real] == [(tones["label_of"][i], 1.0) for i, _, _ in real]
        extra = [(y, w) for i, y, w in seen if i not in set(job.train_ids)]
        assert extra == [(marker[k], 4.0)] * N_CLIPS  # only the teacher's fold-k outputs


@pytest.mark.slow
def test_a_killed_student_fold_resumes_to_the_same_files(tones, monkeypatch):
    from dataclasses import replace

    from pipeline import io
    from pipeline.fold_job import run_fold_job
    from pipeline.fold_loop import plan_folds

    teacher = write_teacher(tones["tmp"] / "resume_teacher", tones, memorising(tones))
    student = replace(tones["student"], train=replace(tones["student"].train, epochs=2, batch_size=8))
    args = (student, tones["dataset"], tones["cache"], tones["folds"])
    run_fold_job(plan_folds(*args, str(tones["tmp"] / "whole"), teacher).job(0))

    job = plan_folds(*args, str(tones["tmp"] / "killed"), teacher).job(0)
    write_json = io.write_json

    def killed_after_epoch_1(path, data, *a, **kw):
        write_json(path, data, *a, **kw)
        if path.endswith("state.json") and data["epoch"] == 1:
            raise KeyboardInterrupt  # as a kill right after the epoch's commit point

    monkeypatch.setattr(io, "write_json", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        run_fold_job(job)
    monkeypatch.setattr(io, "write_json", write_json)
    run_fold_job(job)
    for name in ("oof.csv", "test.csv"):
        whole = (tones["tmp"] / "whole" / "fold0" / name).read_bytes()
        assert (tones["tmp"] / "killed" / "fold0" / name).read_bytes() == whole, name


# ----------------------------------------------------------------------------- recordings: unknown labels

RFCX_QUEUE = """
defaults:
  data: {name: synthetic_rfcx, n_train: 8, n_test: 0, duration: 2.0, sample_rate: 8000, seed: 3}
  audio: {sample_rate: 8000, duration: 2.0}
  features: {name: mel, n_fft: 256, hop_length: 128, n_mels: 16}
  cache: {workers: 1}
  folds: {n_splits: 2, seed: 0}
  crops: {crop_seconds: 1.0, window_hop_seconds: 0.5}
  model: {name: inceptiontime, filters: 4, depth: 1, bottleneck: 4}
  loss: masked_bce
  train: {monitor: val_lwlrap}
experiments:
  - name: teacher
  - name: student
    pseudo: {teacher: teacher, on: [unknown]}
"""


def constant_model(path, value: float, bins: int, n_classes: int) -> None:
    """A saved fold model that predicts ``value`` for every class of every window."""
    import keras

    model = keras.Sequential([
        keras.Input((None, bins)), keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(n_classes, activation="sigmoid", kernel_initializer="zeros",
                           bias_initializer=keras.initializers.Constant(float(np.log(value / (1 - value))))),
    ])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    model.save(path)


def test_unknown_labels_of_fold_k_training_recordings_come_from_the_teacher_fold_k_model_only(tmp_path):
    """Trace for ``on: [unknown]``: teacher fold j predicts the marker value of j for everything.

    Each student fold's training rows must hold marker k exactly in their unknown entries, their
    known entries untouched, and its validation recordings must be neither filled nor trained on.
    """
    from pipeline import layout
    from pipeline.cache.build import ensure_features
    from pipeline.data import load_dataset
    from pipeline.fold_loop import plan_folds
    from pipeline.folds import ensure_folds

    q = parse_queue(yaml.safe_load(RFCX_QUEUE), source="q.yaml", base_dir=str(tmp_path))
    teacher, student = q.experiments
    dataset = load_dataset(student.data.name, student.data.params)
    cache = ensure_features(dataset, str(tmp_path / "cache"), data=student.data, audio=student.audio,
                            features=student.features, cache=student.cache, predict=student.predict, progress=False)
    folds = ensure_folds(dataset, student.data, student.folds, str(tmp_path / "folds"))
    marker = {0: 0.2, 1: 0.7}
    teacher_dir = str(tmp_path / "teacher")
    for j, value in marker.items():
        constant_model(layout.fold_file(teacher_dir, j, layout.MODEL), value, int(cache.shape[1]),
                       len(dataset.targets))
    plan = plan_folds(student, dataset, cache, folds, str(tmp_path / "student"), teacher_dir, cache)
    for k in range(2):
        job = plan.job(k)
        assert job.teacher_windows["window"] < cache.shape[0]  # the teacher's sliding windows, as its fold job
        filled, n = pseudo.with_unknown_filled(job)
        c = len(dataset.targets)
        unknown = np.isnan(job.train_labels[:, :c]) & (job.train_targets < 0.5)  # mask 0: no box of the species
        assert n == unknown.sum() > 0
        np.testing.assert_allclose(filled.train_targets[unknown], marker[k], rtol=1e-5)
        np.testing.assert_array_equal(filled.train_targets[~unknown], job.train_targets[~unknown])
        width = job.train_labels.shape[1]
        np.testing.assert_array_equal(filled.train_labels[:, :width], job.train_labels)  # defaults, boxes untouched
        # one value per teacher window and label: the marker where the label is unknown, NaN where it is known
        windows = filled.train_labels[:, width:].reshape(len(job.train_ids), -1, c)
        assert windows.shape[1] == len(filled.pseudo_centres) > 1
        np.testing.assert_allclose(windows[np.broadcast_to(unknown[:, None], windows.shape)], marker[k], rtol=1e-5)
        assert np.isnan(windows[np.broadcast_to(~unknown[:, None], windows.shape)]).all()
        assert not set(filled.train_ids) & set(filled.valid_ids)
        assert filled.valid_labels is job.valid_labels and filled.valid_targets is job.valid_targets
