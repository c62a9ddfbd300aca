"""What a fold costs TensorFlow besides its training: the step traced once and instantiated once, no iterator that
stalls the process.

The queue tests run a tiny 2-fold, 2-epoch queue in this process (``--jobs 1``) with one TensorFlow or Keras entry
point wrapped to record what it sees.
"""

import random
import textwrap

import keras
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from keras.src.backend.tensorflow.trainer import TensorFlowTrainer  # noqa: E402
from tensorflow.python.data.ops import iterator_ops  # noqa: E402
from tensorflow.python.eager import context  # noqa: E402
from tensorflow.python.framework import random_seed  # noqa: E402

from pipeline.cli import main  # noqa: E402
from pipeline.train import seed_epoch  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_report")


def run_tiny_queue(tmp_path, features: str, model: str, extra: str = "") -> None:
    (tmp_path / "queue.yaml").write_text(textwrap.dedent(f"""
        defaults:
          data: {{name: synthetic_whale, n_train: 40, n_test: 8, seed: 3, root: {tmp_path / "data"}}}
          features: {features}
          cache: {{workers: 1}}
          folds: {{n_splits: 2, seed: 0}}
          train: {{epochs: 2, batch_size: 8}}
          model: {model}
        {extra}
        experiments:
          - name: tiny
        blend: {{method: mean}}
        output: {tmp_path / "output"}
        """))
    assert main([str(tmp_path / "queue.yaml"), "--jobs", "1"]) == 0


def test_a_fold_traces_its_training_step_once(tmp_path, monkeypatch):
    # Keras 3.6 without a distribution strategy builds the optimizer inside the first traced step unless the fold
    # job builds it first; the slots created there made TensorFlow trace the step a second time (fold_job).
    traces = []
    step = TensorFlowTrainer.train_step

    def counted(self, data):  # runs once per trace, not per step
        traces.append(type(self).__name__)
        return step(self, data)

    monkeypatch.setattr(TensorFlowTrainer, "train_step", counted)
    run_tiny_queue(tmp_path, "{name: complexity, n_fft: 128, hop_length: 64, n_mels: 32}",
                   "{name: inceptiontime, filters: 4, depth: 2, bottleneck: 4, kernel_sizes: [4, 8]}")
    assert len(traces) == 2, f"{len(traces)} traces of the training step for 2 folds of 2 epochs"


def test_every_iterator_of_a_fold_runs_without_autotune(tmp_path, monkeypatch):
    # An autotuned iterator's destructor waits for its tuning thread's timer: the process sat idle up to ~1.3 s each
    # time a fold dropped an iterator (every epoch's training and validation batches, every prediction).
    seen = []
    init = iterator_ops.OwnedIterator.__init__

    def recorded(self, dataset=None, **kwargs):
        if dataset is not None:
            seen.append(dataset.options().autotune.enabled is False)  # None: unset, i.e. on
        return init(self, dataset=dataset, **kwargs)

    monkeypatch.setattr(iterator_ops.OwnedIterator, "__init__", recorded)
    run_tiny_queue(tmp_path, "{name: mel, n_fft: 128, hop_length: 64, n_mels: 16}",
                   "{name: sed, widths: [4, 8], dropout: 0.1}", extra="  augment: {time_mask: 2, freq_mask: 2}")
    # 2 folds x 2 epochs x (training, validation), and each fold's OOF and test predictions
    assert len(seen) >= 12, seen
    assert all(seen), f"{len(seen) - sum(seen)} of {len(seen)} iterators were autotuned"


def test_epochs_reseed_without_emptying_the_kernel_cache(tmp_path, monkeypatch):
    # tf.random.set_seed empties TensorFlow's kernel cache: called every epoch, the training and validation steps
    # were instantiated and optimised again at each epoch's first batch (pipeline.train.seed_epoch).
    emptied = []
    set_global_seed = context.Context._set_global_seed

    def recorded(self, seed):
        emptied.append(seed)
        return set_global_seed(self, seed)

    monkeypatch.setattr(context.Context, "_set_global_seed", recorded)
    run_tiny_queue(tmp_path, "{name: mel, n_fft: 128, hop_length: 64, n_mels: 16}",
                   "{name: sed, widths: [4, 8], dropout: 0.1}")
    # once per fold, when its model is built; not per epoch (2 folds x 2 epochs)
    assert len(emptied) <= 2, f"the kernel cache was emptied {len(emptied)} times for 2 folds of 2 epochs"


def test_the_epoch_seed_draws_what_tf_random_set_seed_draws():
    def draws():
        shuffled = tf.data.Dataset.range(20).shuffle(20, seed=5)  # an op seed: combined with the global seed
        return ([random_seed.get_seed(None) for _ in range(3)], random_seed.get_seed(11),
                [int(x) for x in shuffled], np.random.rand(), random.random())

    keras.utils.set_random_seed(1234)  # the public call: empties the kernel cache
    expected = draws()
    keras.utils.set_random_seed(99)
    assert draws() != expected
    seed_epoch(1234)
    assert draws() == expected
