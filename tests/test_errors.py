"""One exception root: every user-caused error is a PipelineError of the kind that says whose fault it is."""

import json
import textwrap

import pytest

from pipeline import errors
from pipeline.config import ConfigError, load_queue
from pipeline.distribute import DistributeError
from pipeline.folds import FoldError
from pipeline.lock import LockBusy
from pipeline.ownership import OwnershipError
from pipeline.queue_yaml import QueueYAMLError
from pipeline.registry import UnknownNameError

pytestmark = pytest.mark.usefixtures("no_report")  # the report: tests/test_report.py


@pytest.mark.parametrize("cls, kind", [
    (ConfigError, errors.QueueError), (QueueYAMLError, errors.QueueError), (UnknownNameError, errors.QueueError),
    (FoldError, errors.DataError), (errors.AudioError, errors.DataError),
    (OwnershipError, errors.OutputError), (LockBusy, errors.OutputError),
    (DistributeError, errors.TrainingError),
], ids=lambda c: c.__name__)
def test_each_error_class_has_the_kind_of_its_cause(cls, kind):
    assert issubclass(cls, kind) and issubclass(kind, errors.PipelineError)
    # No builtin semantics to lean on: a caller catches the pipeline's kinds, not KeyError or ValueError.
    assert not issubclass(cls, (KeyError, ValueError, RuntimeError))


def _queue(tmp_path):
    (tmp_path / "queue.yaml").write_text(textwrap.dedent("""
        defaults:
          data: {name: synthetic_whale, n_train: 12, n_test: 0, seed: 1}
          features: {name: mel, n_fft: 128, hop_length: 64, n_mels: 16}
          folds: {n_splits: 2}
        experiments:
          - name: small
            model: cnn1d
    """))
    return load_queue(str(tmp_path / "queue.yaml"))


@pytest.mark.parametrize("raised, traceback_kept", [
    (errors.DataError("data.root: the labels of clip 3 are missing"), False),
    (ZeroDivisionError("a bug"), True),
], ids=["user-error", "bug"])
def test_a_user_error_fails_the_experiment_with_its_message_and_no_traceback(tmp_path, monkeypatch, raised,
                                                                             traceback_kept):
    import pipeline.queue as q

    queue = _queue(tmp_path)

    def stages(*args, **kwargs):
        raise raised

    monkeypatch.setattr(q, "_stages", stages)
    status = q.run_experiment(queue.experiments[0], q.Paths(queue.output_dir))
    assert status["state"] == "failed" and status["error"] == f"{type(raised).__name__}: {raised}"
    written = json.loads((tmp_path / "output" / "small" / "status.json").read_text())
    assert (written.get("traceback") is not None) == traceback_kept


def test_a_user_error_outside_the_experiments_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    import pipeline.queue as q
    from pipeline.cli import main

    _queue(tmp_path)

    def run(*args, **kwargs):
        raise errors.BlendError("blend.include names experiments on different folds")

    monkeypatch.setattr(q, "run", run)
    assert main([str(tmp_path / "queue.yaml")]) == 1
    err = capsys.readouterr().err
    assert err == "error: BlendError: blend.include names experiments on different folds\n"
