"""Feature-cache stage: every clip's features computed once and stored as sharded TFRecords.

Modules, bottom up: :mod:`~pipeline.cache.encode` (TFRecord bytes without
TensorFlow, the shard writer), :mod:`~pipeline.cache.featurise` (the worker's
task: decode, featurise, serialise a chunk of clips and the extra windows of
long clips), :mod:`~pipeline.cache.workers` (the crash-isolated, limited
process pool), :mod:`~pipeline.cache.read` (:class:`~pipeline.cache.read.FeatureCache`
and the tf.data readers) and :mod:`~pipeline.cache.build` (the stage:
``ensure_features`` and the cache key).
"""
