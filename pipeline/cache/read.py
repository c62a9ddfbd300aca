"""Reading the feature cache: its manifest, tf.data readers over its shards, and the label join.

A cache folder (:mod:`pipeline.cache.build`) holds per split ``<split>-NNNNN-of-NNNNN.tfrecord``
shards of ``tf.train.Example {"id", "x"}`` records (:mod:`pipeline.cache.encode`) and
``manifest.json``, which lists each split's shards, ids and count.
"""

from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import numpy as np

from pipeline import io, layout
from pipeline.memory import PARSE_IN_FLIGHT, parse_batch, without_autotune

# Read-ahead per open shard, bytes.
_READ_BUFFER = 8 << 20


class FeatureCache:
    """A complete cache folder: its manifest and tf.data readers over its shards."""

    def __init__(self, folder: str):
        self.folder = folder
        self.manifest = io.read_json(os.path.join(folder, layout.CACHE_MANIFEST))
        self.shape = tuple(self.manifest["shape"])

    def count(self, split: str) -> int:
        return self.manifest["splits"].get(split, {}).get("count", 0)

    def ids(self, split: str) -> List[str]:
        return list(self.manifest["splits"].get(split, {}).get("ids", []))

    @property
    def skipped(self) -> List[dict]:
        return list(self.manifest["skipped"])

    def files(self, split: str) -> List[str]:
        names = self.manifest["splits"].get(split, {}).get("shards", [])
        return [os.path.join(self.folder, n) for n in names]

    def dataset(self, split: str):
        """tf.data.Dataset of ``(id: string, x: float32 [shape])`` in a deterministic order, or None when empty.

        One example per clip: its first ``audio.duration`` seconds. Shards are
        read by a parallel interleave with large read buffers; records are
        parsed a batch at a time (at most 256 records or 32 MiB:
        :func:`pipeline.memory.parse_batch`) (``tf.io.parse_example`` and one
        ``decode_raw`` per batch cost about as much as parsing a single
        record, so per-record parsing would dominate), then unbatched.
        """
        return _records(self.files(split), self.shape, cycle_length=4)

    def extra_windows(self, split: str):
        """tf.data.Dataset of ``(id: string, x: float32 [shape])``: the extra windows of the split's long clips.

        For every clip longer than ``audio.duration``, its windows after the
        first (:func:`pipeline.cache.featurise.window_starts`), each
        featurised as a clip of that audio; all windows of a clip are
        consecutive, clips in the order of :meth:`dataset`'s shards. None
        when the split has none. Its shards are read one after the other, so
        a clip's windows stay together.
        """
        return _records(self.files(windows_split(split)), self.shape, cycle_length=1)

    def window_count(self, split: str) -> int:
        """Number of extra windows of the split (:meth:`extra_windows`), 0 when none."""
        return self.count(windows_split(split))

    def load(self, split: str) -> Tuple[List[str], np.ndarray]:
        """All of a split in memory: (ids, x [n, *shape]); for small data, plots and tests."""
        ds = self.dataset(split)
        if ds is None:
            return [], np.zeros((0, *self.shape), np.float32)
        ids, xs = [], []
        for i, x in ds.batch(1024).as_numpy_iterator():
            ids.extend(v.decode() for v in i)
            xs.append(x)
        return ids, np.concatenate(xs)


def windows_split(split: str) -> str:
    """The manifest's name for the extra windows of ``split`` (``test`` -> ``test.windows``)."""
    return f"{split}.windows"


def _records(files: Sequence[str], shape: Tuple[int, ...], *, cycle_length: int):
    """tf.data.Dataset of ``(id, x [shape])`` over the shards ``files`` (None when there are none).

    ``cycle_length``: shards read in parallel, records alternating between
    them (deterministically); 1 reads them one after the other.
    """
    import tensorflow as tf

    if not files:
        return None
    spec = {"id": tf.io.FixedLenFeature([], tf.string), "x": tf.io.FixedLenFeature([], tf.string)}

    # Plain graph code: AutoGraph has nothing to convert (and would re-read this file's source).
    @tf.autograph.experimental.do_not_convert
    def parse(records):
        parsed = tf.io.parse_example(records, spec)
        x = tf.reshape(tf.io.decode_raw(parsed["x"], tf.float32), (-1, *shape))
        return parsed["id"], x

    ds = tf.data.Dataset.from_tensor_slices(list(files))

    @tf.autograph.experimental.do_not_convert
    def read(path):
        return tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER)

    ds = ds.interleave(
        read,
        cycle_length=max(1, min(len(files), cycle_length)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.batch(parse_batch(int(np.prod(shape)) * 4)).map(parse, num_parallel_calls=PARSE_IN_FLIGHT,
                                                             deterministic=True)
    return without_autotune(ds.unbatch())


# ----------------------------------------------------------------------------- input pipelines


def labelled(ds, ids: Sequence[str], labels: np.ndarray):
    """Keep only examples whose id is in ``ids`` and pair each with its label row.

    ds : tf.data.Dataset of (id, x); labels : [len(ids), C] float32 aligned with ``ids``.
    Returns a dataset of (id, x, y) in the order of ``ds``. Labels come from the manifest,
    never from the cache, so the cache holds no label information at all. The join runs a
    batch at a time (one hash-table lookup and one mask per batch, not per example).
    """
    import tensorflow as tf

    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(list(ids), tf.string), tf.range(len(ids), dtype=tf.int64)),
        default_value=-1,
    )
    label_table = tf.constant(np.asarray(labels, np.float32))

    @tf.autograph.experimental.do_not_convert
    def join(i, x):
        row = table.lookup(i)
        keep = row >= 0
        row = tf.boolean_mask(row, keep)
        return tf.boolean_mask(i, keep), tf.boolean_mask(x, keep), tf.gather(label_table, row)

    ds = ds.batch(parse_batch(_example_bytes(ds))).map(join, num_parallel_calls=PARSE_IN_FLIGHT, deterministic=True)
    return ds.unbatch()


def _example_bytes(ds) -> int:
    """Bytes of one ``(id, x)`` example's x (1 when its shape is not known before running)."""
    shape = ds.element_spec[1].shape
    return int(np.prod(shape)) * 4 if shape.is_fully_defined() else 1
