"""Names the pipeline writes at the top of the output folder, kept in one place.

Experiment folders live beside these names (``output/<experiment>/``), so an
experiment may not be called like any of them. The queue validation
(:mod:`pipeline.config`) refuses them and the writers (:mod:`pipeline.queue`,
:mod:`pipeline.blend`, :mod:`pipeline.report`) take their file names from
here, so a new queue-level output cannot be forgotten in the reserved list.
Names are compared without case: on a case-insensitive filesystem (macOS,
Windows) an experiment ``OOF.csv`` would be the queue's ``oof.csv``.
"""

from __future__ import annotations

QUEUE_OOF = "oof.csv"  # output/oof.csv: every finished experiment's OOF predictions
SUMMARY = "summary.csv"  # the leaderboard
BLEND = "blend"  # output/blend/
REPORT = "report.html"
SCREENSHOT = "report.png"
QUEUE_PLOTS = "report"  # output/report/*.png, the report's queue-level figures
QUEUE_LOG = "queue.log"
CACHE = "cache"  # output/cache/features/<key>/
FOLDS = "folds"  # output/folds/<key>.csv
WORKERS = "workers"  # output/workers/<task>/ of the non-chief workers of a TF_CONFIG cluster
MARKER = ".pipeline-owned"  # in every folder the pipeline created (pipeline.ownership)
LOCK = ".queue.lock"  # the runner's lock (pipeline.lock)

# Everything the queue itself writes at the top of output/.
QUEUE_LEVEL_NAMES = frozenset({QUEUE_OOF, SUMMARY, BLEND, REPORT, SCREENSHOT, QUEUE_PLOTS, QUEUE_LOG, CACHE, FOLDS,
                               WORKERS, MARKER, LOCK})

# Experiment names are also column names of output/oof.csv (beside `id` and `fold`) and the stems of the
# files above read like them in listings; both are refused too.
RESERVED_NAMES = frozenset(
    name.lower() for name in QUEUE_LEVEL_NAMES | {"id", "fold", "oof", "summary", "queue"}
)

# Longest experiment name: it becomes a folder and a column name; 100 leaves room under the usual 255-byte
# file-name limit for the temporary names of atomic writes (`.<name>.<random>.tmp`).
MAX_NAME_LENGTH = 100


def is_reserved(name: str) -> bool:
    """Whether ``name`` (as an experiment name) would collide with a queue-level output, ignoring case."""
    return name.lower() in RESERVED_NAMES
