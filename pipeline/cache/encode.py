"""Wire encoding of the feature cache: TFRecord-framed ``tf.train.Example`` records, and the shard writer.

A record is a tf.train.Example {"id": bytes, "x": raw float32 bytes}, framed
as TFRecord: uint64 length, masked CRC-32C of the length, data, masked
CRC-32C of the data. Encoded here without TensorFlow so that workers need
none (importing it costs seconds and ~0.5 GB per process): the protobuf
wire format of such an Example is fixed and tiny, and the checksums come
from google-crc32c (the SSE4.2 / ARM CRC instructions, ~0.4 us for a whale
clip's 2 KB record; a numpy table-driven version took ~20 us).
"""

from __future__ import annotations

import functools
import logging
import os
import struct
from typing import List, Sequence, Tuple

import google_crc32c
import numpy as np

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4096)
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@functools.lru_cache(maxsize=1024)
def _bytes_entry_head(key: bytes, n: int) -> bytes:
    """Wire bytes of one ``Features.feature`` map entry ``key -> BytesList[<n bytes>]``, up to the value."""
    bytes_list = 1 + len(_varint(n)) + n  # BytesList{value: 1}
    feature = 1 + len(_varint(bytes_list)) + bytes_list  # Feature{bytes_list: 1}
    entry = 1 + len(_varint(len(key))) + len(key) + 1 + len(_varint(feature)) + feature  # {key: 1, value: 2}
    return (b"\x0a" + _varint(entry) + b"\x0a" + _varint(len(key)) + key + b"\x12" + _varint(feature)
            + b"\x0a" + _varint(bytes_list) + b"\x0a" + _varint(n))


def example_bytes(clip_id: str, x: np.ndarray) -> bytes:
    """A serialised ``tf.train.Example`` with features ``id`` (utf-8) and ``x`` (raw little-endian float32)."""
    payload = np.ascontiguousarray(x, dtype="<f4").tobytes()
    key = clip_id.encode()
    features = _bytes_entry_head(b"id", len(key)) + key + _bytes_entry_head(b"x", len(payload)) + payload
    return b"\x0a" + _varint(len(features)) + features


if google_crc32c.implementation != "c":  # pragma: no cover - the wheels ship the C extension
    log.warning("google-crc32c has no C extension here: writing the feature cache will be slow")


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data`` (``crc32c(b"123456789") == 0xE3069283``)."""
    return google_crc32c.value(bytes(data))


def _masked(crc: int) -> bytes:
    """TFRecord's checksum masking of a CRC-32C, as 4 little-endian bytes."""
    return ((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF).to_bytes(4, "little")


def frame_examples(ids: Sequence[str], features: np.ndarray) -> Tuple[bytes, List[int]]:
    """TFRecord-framed Examples ``{"id", "x"}`` of a batch, concatenated, and each framed record's size.

    Parameters
    ----------
    ids : sequence of str [R]
    features : np.ndarray [shape=(R, ...)], float32, one clip per row

    Returns
    -------
    (bytes, list of int)
        The bytes ``tf.io.TFRecordWriter`` writes for :func:`example_bytes`
        of each clip, in order, and the size of each framed record.
    """
    payload = np.ascontiguousarray(features, dtype="<f4").reshape(len(ids), -1)
    n = payload.shape[1] * 4
    x_head = _bytes_entry_head(b"x", n)
    parts, sizes = [], []
    for clip_id, row in zip(ids, payload):
        key = clip_id.encode()
        id_entry = _bytes_entry_head(b"id", len(key)) + key
        head = b"\x0a" + _varint(len(id_entry) + len(x_head) + n) + id_entry + x_head
        x = row.tobytes()
        length = struct.pack("<Q", len(head) + n)
        data_crc = google_crc32c.extend(google_crc32c.value(head), x)
        parts += [length, _masked(google_crc32c.value(length)), head, x, _masked(data_crc)]
        sizes.append(16 + len(head) + n)
    return b"".join(parts), sizes


# ----------------------------------------------------------------------------- writing


class ShardWriter:
    """Streams framed records of one split into ``<split>-NNNNN.partial`` files, then names them ``-of-``."""

    def __init__(self, folder: str, split: str, shard_bytes: int):
        self.folder, self.split, self.shard_bytes = folder, split, shard_bytes
        self.partials: List[str] = []
        self.file = None
        self.size = 0
        self.count = 0

    def write_chunk(self, records: bytes, sizes: Sequence[int]) -> None:
        """Append a chunk's framed records (as :func:`frame_examples` returns them), starting shards as they fill.

        A shard is closed once it holds ``shard_bytes`` or more, so shard
        boundaries fall between records and do not depend on the chunking.
        """
        view = memoryview(records)
        offset = 0
        i = 0
        while i < len(sizes):
            if self.file is None or self.size >= self.shard_bytes:
                self._next_shard()
            start = offset
            while i < len(sizes) and self.size < self.shard_bytes:
                self.size += sizes[i]
                offset += sizes[i]
                self.count += 1
                i += 1
            self.file.write(view[start:offset])

    def _next_shard(self) -> None:
        self._close()
        path = os.path.join(self.folder, f"{self.split}-{len(self.partials):05d}.partial")
        self.partials.append(path)
        self.file = open(path, "wb", buffering=1 << 20)
        self.size = 0

    def _close(self):
        if self.file is not None:
            self.file.close()
            self.file = None

    def finish(self) -> List[str]:
        self._close()
        names = []
        for i, partial in enumerate(self.partials):
            name = f"{self.split}-{i:05d}-of-{len(self.partials):05d}.tfrecord"
            os.replace(partial, os.path.join(self.folder, name))
            names.append(name)
        return names
