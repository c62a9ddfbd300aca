"""What a fold job's input holds in memory, and the choice between caching its examples and streaming them.

A fold job reads its examples from the feature cache's TFRecord shards. When
all of them fit the memory budget, tf.data keeps them after the first epoch
(``Dataset.cache()``); otherwise every epoch streams them from the shards
again. The choice (:func:`input_plan`) counts everything the input holds, not
only the feature arrays:

* ``cached``: the fold's training and validation examples (all the
  experiment's training ids, float32) and, for long recordings, the fixed
  validation crops - held only when cached;
* ``shuffle``: the training shuffle buffer. Cached examples are shared with
  it; streamed ones are copies, so it counts only when streaming. Its length is
  ``train.shuffle_buffer`` elements, at most :data:`SHUFFLE_BYTES` of them
  (:func:`shuffle_elements`) - the same cap in both modes, so caching never
  changes what a fold computes;
* ``buffers``: what either mode holds at once: records parsed a batch at a
  time (:func:`parse_batch`: at most :data:`PARSE_BYTES` per batch,
  :data:`PARSE_IN_FLIGHT` batches in the parse map and as many in the label
  join, per reader), the per-example maps over whole examples (one example per
  core each), shard read-ahead, training batches prefetched and a prediction
  batch of examples.

The budget is ``execution.memory_budget_gb``, or by default
:data:`DEFAULT_FRACTION` of the memory available when the experiment's folds
are planned (the machine's, or the container's when its cgroup sets a limit).
None of these numbers depends on how many examples there are except
``cached``: streaming holds the same memory for a thousand recordings as for
a hundred thousand (what does grow is per-example metadata: ids, label rows,
predictions - bytes per example, not feature data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pipeline.machine import available_memory, machine_cores

MIB = 2**20
GIB = 2**30
DEFAULT_FRACTION = 0.25  # of the memory available when the folds are planned
PARSE_BYTES = 32 * MIB  # records parsed per tf.data batch: at most this many bytes (and at most MAX_PARSE_BATCH)
MAX_PARSE_BATCH = 256
PARSE_IN_FLIGHT = 4  # parallel calls of a reader's parse map and of its label join (each holds that many batches)
READ_AHEAD = 4 * 8 * MIB  # shards read at once x read buffer per shard (pipeline.cache.read)
PREFETCHED_BATCHES = 4  # training batches tf.data prefetches (AUTOTUNE), counted with their augmentation copy
SHUFFLE_BYTES = GIB  # the training shuffle buffer holds at most this many bytes of examples


def without_autotune(ds):
    """``ds`` (and every dataset built on it: tf.data merges options downstream) with tf.data's autotuning off.

    An autotuned iterator starts a thread that re-tunes the pipeline between timed waits, and the iterator's
    destructor can wait for that thread with the whole process idle. A fold drops iterators all the time (each
    epoch's training and validation batches, every prediction): a ``vit_mel`` fold on a 2-core machine sat idle in
    16 % of its samples (one per 20 ms) with autotuning, 1.6 % without (``python -m benchmarks.fold_runtime
    --change autotune`` times a whole experiment both ways). The pipelines fix their order
    (``deterministic=True``), so predictions are byte-identical; ``num_parallel_calls=AUTOTUNE`` then runs as
    many calls as the machine has cores, and ``prefetch(AUTOTUNE)`` keeps its own buffer autotuner.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def release_freed_memory() -> None:
    """Hand memory the C allocator keeps after frees back to the kernel (glibc ``malloc_trim``; elsewhere nothing).

    Streamed examples are megabytes each; glibc keeps the heap they were read into after an epoch's input
    pipeline is gone, so without a trim a fold's prediction would allocate on top of its training's high-water
    mark, and the process's peak would grow with the number of recordings an epoch streams. Called after each
    epoch and between training and prediction; it changes no result.
    """
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def parse_batch(example_bytes: int) -> int:
    """Records parsed per tf.data batch for examples of ``example_bytes``: at most :data:`MAX_PARSE_BATCH` and
    :data:`PARSE_BYTES` (a 60 s recording's log-mel is megabytes; 256 of them would be a gigabyte per batch)."""
    return max(1, min(MAX_PARSE_BATCH, PARSE_BYTES // max(1, int(example_bytes))))


def shuffle_elements(configured: int, element_bytes: int) -> int:
    """The training shuffle buffer's length: ``train.shuffle_buffer`` elements, at most :data:`SHUFFLE_BYTES`."""
    return max(1, min(int(configured), SHUFFLE_BYTES // max(1, int(element_bytes))))


@dataclass(frozen=True)
class InputNeeds:
    """What a fold job's input would hold, in bytes (see the module doc); from a fold strategy's ``memory_needs``."""

    cached: int  # training + validation examples (+ validation crops) when cached in memory
    shuffle: int  # the shuffle buffer when streaming (its elements are copies then)
    shuffle_elements: int  # its length (elements)
    buffers: int  # parse batches, read-ahead, prefetched training batches, a prediction batch
    unit: str  # what one example is, for the log: clips, recordings


def input_needs(*, n_examples: int, example_bytes: int, shuffle_buffer: int, per_epoch: int, input_bytes: int,
                batch_size: int, unit: str, label_bytes: int = 0, extra_cached: int = 0) -> InputNeeds:
    """:class:`InputNeeds` of a fold job whose shuffle buffer holds whole examples.

    n_examples : the experiment's training ids (a fold caches its training and validation ones: all of them);
    example_bytes : one cached example's features; label_bytes : its label row; shuffle_buffer :
    ``train.shuffle_buffer`` (the cap :func:`shuffle_elements` is on the features, as in the fold strategies);
    per_epoch : elements the shuffle sees per epoch (it never holds more); input_bytes : one model input with
    its targets (a clip, a crop); extra_cached : more bytes cached with the examples (validation crops).
    """
    elements = min(shuffle_elements(shuffle_buffer, example_bytes), max(1, per_epoch))
    example = example_bytes + label_bytes
    parsed = parse_batch(example_bytes) * example
    buffers = (2 * 2 * PARSE_IN_FLIGHT * parsed  # the training and the validation reader: parse and label join
               + 2 * 2 * machine_cores() * example  # per-example maps (targets, crops) of both readers
               + READ_AHEAD
               + PREFETCHED_BATCHES * 2 * batch_size * input_bytes  # prefetched batches and their augmentation
               + parsed)  # a prediction batch of examples
    return InputNeeds(cached=n_examples * example + extra_cached, shuffle=elements * example,
                      shuffle_elements=elements, buffers=buffers, unit=unit)


@dataclass(frozen=True)
class InputPlan:
    """The choice for one experiment's fold jobs and the numbers behind it."""

    in_memory: bool
    budget: int
    needs: InputNeeds
    default_budget: bool  # the budget is DEFAULT_FRACTION of the available memory (not execution.memory_budget_gb)

    @property
    def held(self) -> int:
        """Bytes the input is expected to hold in the chosen mode."""
        n = self.needs
        return n.buffers + (n.cached if self.in_memory else n.shuffle)

    def describe(self) -> str:
        n = self.needs
        budget = (f"{_gib(self.budget)} budget ({DEFAULT_FRACTION:g} of the memory available)" if self.default_budget
                  else f"{_gib(self.budget)} budget (execution.memory_budget_gb)")
        if self.in_memory:
            return (f"cached in memory: {_gib(n.cached)} of {n.unit} + {_gib(n.buffers)} of buffers within the "
                    f"{budget} (shuffle buffer of {n.shuffle_elements} elements, shared with the cache)")
        return (f"streamed from the shards every epoch: caching would hold {_gib(n.cached)} of {n.unit} + "
                f"{_gib(n.buffers)} of buffers, over the {budget}; streaming holds about {_gib(self.held)} "
                f"(shuffle buffer of {n.shuffle_elements} elements, {_gib(n.shuffle)})")


def input_plan(needs: InputNeeds, budget: Optional[int] = None) -> InputPlan:
    """Cache the examples in memory when ``needs.cached + needs.buffers`` fits ``budget`` bytes (None: the
    default budget, :data:`DEFAULT_FRACTION` of :func:`available_memory`), else stream them."""
    default = budget is None
    if default:
        budget = int(DEFAULT_FRACTION * available_memory())
    return InputPlan(in_memory=needs.cached + needs.buffers <= budget, budget=int(budget), needs=needs,
                     default_budget=default)


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"
