"""Every tf.data iterator a fold makes has tf.data's autotuning off (pipeline.memory.without_autotune).

An autotuned iterator's destructor waits for its tuning thread's timer: the process sat idle up to ~1.3 s each time
a fold dropped an iterator (every epoch's training and validation batches, every prediction).
"""

import textwrap

import pytest

pytest.importorskip("tensorflow")

from tensorflow.python.data.ops import iterator_ops  # noqa: E402

from pipeline.cli import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_report")


def test_every_iterator_of_a_fold_runs_without_autotune(tmp_path, monkeypatch):
    seen = []
    init = iterator_ops.OwnedIterator.__init__

    def recorded(self, dataset=None, **kwargs):
        if dataset is not None:
            seen.append(dataset.options().autotune.enabled is False)  # None: unset, i.e. on
        return init(self, dataset=dataset, **kwargs)

    monkeypatch.setattr(iterator_ops.OwnedIterator, "__init__", recorded)
    (tmp_path / "queue.yaml").write_text(textwrap.dedent(f"""
        defaults:
          data: {{name: synthetic_whale, n_train: 40, n_test: 8, seed: 3, root: {tmp_path / "data"}}}
          features: {{name: mel, n_fft: 128, hop_length: 64, n_mels: 16}}
          cache: {{workers: 1}}
          folds: {{n_splits: 2, seed: 0}}
          train: {{epochs: 2, batch_size: 8}}
          augment: {{time_mask: 2, freq_mask: 2}}
          model: {{name: sed, widths: [4, 8], dropout: 0.1}}
        experiments:
          - name: sed_a
        blend: {{method: mean}}
        output: {tmp_path / "output"}
        """))
    assert main([str(tmp_path / "queue.yaml"), "--jobs", "1"]) == 0
    # 2 folds x 2 epochs x (training, validation), and each fold's OOF and test predictions
    assert len(seen) >= 12, seen
    assert all(seen), f"{len(seen) - sum(seen)} of {len(seen)} iterators were autotuned"
