"""TensorFlow traces a fold's training step once: every retrace costs seconds of CPU time per fold."""

import textwrap

import pytest

pytest.importorskip("tensorflow")

from keras.src.backend.tensorflow.trainer import TensorFlowTrainer  # noqa: E402

from pipeline.cli import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_report")


def test_a_fold_traces_its_training_step_once(tmp_path, monkeypatch):
    # Keras 3.6 without a distribution strategy builds the optimizer inside the first traced step unless the fold
    # job builds it first; the slots created there made TensorFlow trace the step a second time (fold_job).
    traces = []
    step = TensorFlowTrainer.train_step

    def counted(self, data):  # runs once per trace, not per step
        traces.append(type(self).__name__)
        return step(self, data)

    monkeypatch.setattr(TensorFlowTrainer, "train_step", counted)
    (tmp_path / "queue.yaml").write_text(textwrap.dedent(f"""
        defaults:
          data: {{name: synthetic_whale, n_train: 40, n_test: 8, seed: 3, root: {tmp_path / "data"}}}
          features: {{name: complexity, n_fft: 128, hop_length: 64, n_mels: 32}}
          cache: {{workers: 1}}
          folds: {{n_splits: 2, seed: 0}}
          train: {{epochs: 2, batch_size: 8}}
          model: {{name: inceptiontime, filters: 4, depth: 2, bottleneck: 4, kernel_sizes: [4, 8]}}
        experiments:
          - name: inceptiontime_a
        blend: {{method: mean}}
        output: {tmp_path / "output"}
        """))
    assert main([str(tmp_path / "queue.yaml"), "--jobs", "1"]) == 0
    assert len(traces) == 2, f"{len(traces)} traces of the training step for 2 folds of 2 epochs"
