"""One root for every error a user can cause, and a few kinds that say whose fault it is.

A runner catches :class:`PipelineError` to report a user's mistake as one clear
message (no traceback); anything else is a bug in the pipeline and keeps its
traceback. Each module's own error classes (``ConfigError``, ``FoldError``,
``OwnershipError``, ...) derive from the kind below that names who can fix it:

- :class:`QueueError`: the queue file or the command line (a setting that cannot work).
- :class:`DataError`: the dataset (its layout, labels, groups) or the feature cache built from it.
- :class:`AudioError`: audio files (too many of them are unreadable to train on the rest).
- :class:`TrainingError`: training a fold (no usable metric, a device setup that cannot run here).
- :class:`BlendError`: the experiments' predictions cannot be blended.
- :class:`OutputError`: the output folder (not the pipeline's, or held by another runner).

Plain Python, imported by the queue's validation, which must stay fast.
"""

from __future__ import annotations


class PipelineError(Exception):
    """An error the user can fix; its message names the key, file or folder at fault."""


class QueueError(PipelineError):
    """The queue file or the command line asks for something that cannot work."""


class DataError(PipelineError):
    """The dataset (layout, labels, groups) or its feature cache is unusable as it is."""


class AudioError(DataError):
    """The audio files themselves: too many cannot be decoded to train on the rest."""


class TrainingError(PipelineError):
    """A fold cannot be trained as configured (on this data or on this machine)."""


class BlendError(PipelineError):
    """The experiments' predictions cannot be blended (incompatible or invalid files)."""


class OutputError(PipelineError):
    """The output folder cannot be used: not the pipeline's, or another runner holds it."""
