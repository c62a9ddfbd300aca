"""Kaggle's raw-audio rfcx TFRecords: read in the tf.data graph, or export to the kaggle_rfcx layout.

Each record is a ``tf.train.Example`` with

* ``recording_id`` (bytes);
* ``audio_wav`` (bytes): 16-bit little-endian PCM samples, either bare or as a
  WAV file (``RIFF`` header; then decoded by ``tf.audio.decode_wav`` and mixed
  to mono);
* ``label_info`` (bytes): boxes separated by ``;``, each a comma-separated
  ``species_id,songtype_id,t_min,f_min,t_max,f_max`` with an optional 7th
  field ``is_tp``; empty for test records;
* ``is_tp`` (int64, optional): whether the record's boxes are true positives,
  used for boxes without their own 7th field (default 1).

:func:`read_raw_audio_records` decodes them inside the graph (no Python per
record); :func:`export_layout` writes them out as ``ROOT/train/*.flac``,
``ROOT/test/*.flac``, ``train_tp.csv`` and ``train_fp.csv`` so that the
``kaggle_rfcx`` source (and its feature cache) can use them.
"""

from __future__ import annotations

import csv
import logging
import os
from typing import Sequence

import numpy as np

from pipeline.data.rfcx import BOX_COLUMNS, N_SPECIES
from pipeline.memory import without_autotune

log = logging.getLogger(__name__)

PCM_SCALE = 32768.0


def parse_label_info(label_info, is_tp):
    """``label_info`` string -> boxes float32 [n, 6]: (species, t_min, t_max, f_min, f_max, is_tp).

    The column order is that of :func:`pipeline.data.rfcx.boxes_of`. ``is_tp`` (int scalar)
    fills the is_tp of boxes that have only six fields.
    """
    import tensorflow as tf

    entries = tf.strings.split(tf.strings.strip(label_info), ";")
    entries = tf.boolean_mask(entries, tf.strings.length(tf.strings.strip(entries)) > 0)
    fields = tf.strings.split(entries, ",")  # ragged [n, 6 or 7]
    values = tf.strings.to_number(tf.strings.strip(fields), tf.float32).to_tensor(default_value=-1.0, shape=[None, 7])
    own = values[:, 6]
    tp = tf.where(own >= 0, own, tf.cast(is_tp, tf.float32))
    # (species, songtype, t_min, f_min, t_max, f_max) -> (species, t_min, t_max, f_min, f_max, is_tp)
    return tf.stack([values[:, 0], values[:, 2], values[:, 4], values[:, 3], values[:, 5], tp], axis=1)


def decode_audio_wav(data):
    """``audio_wav`` bytes -> float32 samples [n] in [-1, 1): bare 16-bit PCM or a WAV file."""
    import tensorflow as tf

    def wav():
        audio, _ = tf.audio.decode_wav(data, desired_channels=-1)
        return tf.reduce_mean(audio, axis=1)

    def pcm():
        return tf.cast(tf.io.decode_raw(data, tf.int16, little_endian=True), tf.float32) / PCM_SCALE

    return tf.cond(tf.equal(tf.strings.substr(data, 0, 4), "RIFF"), wav, pcm)


def read_raw_audio_records(files: Sequence[str]):
    """tf.data.Dataset of dicts ``recording_id`` (string), ``audio`` (float32 [samples]),
    ``boxes`` (float32 [n, 6], see :func:`parse_label_info`) and ``target`` (float32 [24]:
    1 for species with a tp box), decoded in the graph.

    Raises FileNotFoundError (before building the graph) for a file that does not exist.
    """
    import tensorflow as tf

    files = [str(f) for f in files]
    missing = [f for f in files if not tf.io.gfile.exists(f)]
    if missing:
        raise FileNotFoundError(f"rfcx TFRecord file(s) not found: {missing[:5]}")
    spec = {
        "recording_id": tf.io.FixedLenFeature([], tf.string),
        "audio_wav": tf.io.FixedLenFeature([], tf.string),
        "label_info": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "is_tp": tf.io.FixedLenFeature([], tf.int64, default_value=1),
    }

    @tf.autograph.experimental.do_not_convert
    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        boxes = parse_label_info(ex["label_info"], ex["is_tp"])
        species = tf.cast(boxes[:, 0], tf.int32)
        target = tf.reduce_max(tf.concat([tf.one_hot(species, N_SPECIES) * boxes[:, 5:6],
                                          tf.zeros([1, N_SPECIES])], 0), axis=0)
        return {"recording_id": ex["recording_id"], "audio": decode_audio_wav(ex["audio_wav"]), "boxes": boxes,
                "target": target}

    return without_autotune(tf.data.TFRecordDataset(files).map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                                                               deterministic=True))


def export_layout(train_files: Sequence[str], test_files: Sequence[str], root: str, *, sample_rate: int = 48000) -> dict:
    """Write raw-audio TFRecords out in the kaggle_rfcx layout under ``root``; returns counts.

    A record id seen twice keeps its first audio and the union of its boxes. Records
    with empty audio are skipped with a warning. Files are written under temporary names
    and renamed.
    """
    import soundfile as sf

    counts = {"train": 0, "test": 0, "skipped": 0}
    rows = {1: [], 0: []}
    for split, files in (("train", train_files), ("test", test_files)):
        folder = os.path.join(root, split)
        os.makedirs(folder, exist_ok=True)
        if not files:
            continue
        for ex in read_raw_audio_records(files).as_numpy_iterator():
            rid = ex["recording_id"].decode()
            audio = ex["audio"]
            if split == "train":
                for s, t0, t1, f0, f1, tp in ex["boxes"]:
                    rows[int(tp > 0.5)].append([rid, int(s), 1, float(t0), float(f0), float(t1), float(f1)])
            path = os.path.join(folder, rid + ".flac")
            if os.path.exists(path):
                continue
            if audio.size == 0 or not np.isfinite(audio).all():
                log.warning("rfcx records: %s has empty or non-finite audio; skipped", rid)
                counts["skipped"] += 1
                continue
            tmp = path + ".tmp"
            sf.write(tmp, audio, sample_rate, format="FLAC", subtype="PCM_16")
            os.replace(tmp, path)
            counts[split] += 1
    for name, tp in (("train_tp.csv", 1), ("train_fp.csv", 0)):
        tmp = os.path.join(root, "." + name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(BOX_COLUMNS)
            writer.writerows(rows[tp])
        os.replace(tmp, os.path.join(root, name))
    return counts
