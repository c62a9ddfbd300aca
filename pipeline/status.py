"""An experiment's ``status.json``: its state, stage, timings and data identity, read and written here only.

The queue writes it at every stage; the summary, the report and the
"finished" checks (:mod:`pipeline.results`) read it. Plain file I/O on
:mod:`pipeline.layout` paths, so every layer may import it. A status file
edited by hand or cut short by a kill costs only the fields it spoils, never
a traceback.
"""

from __future__ import annotations

import time

import numpy as np

from pipeline import io, layout

# The states an experiment can be in (``state`` field).
DONE, FAILED, RUNNING, INTERRUPTED = "done", "failed", "running", "interrupted"

# The type of each status.json field the pipeline reads; a field edited into another type is dropped on reading.
_FIELDS = {"state": str, "stage": str, "config_hash": str, "error": str, "traceback": str, "started": str,
           "finished": str, "updated": str, "data": dict, "timings": dict, "wall_seconds": (int, float),
           "jobs": dict}  # jobs: fold<k> -> a pooled fold job's seconds, attempts and peak memory (pipeline.scheduler)


def read_status(exp_dir: str) -> dict:
    """The experiment's status.json; {} when it is missing, truncated or edited into something not a dict."""
    try:
        status = io.read_json(layout.experiment_file(exp_dir, layout.STATUS))
    except (OSError, ValueError):
        return {}
    return _valid(status) if isinstance(status, dict) else {}


def write_status(exp_dir: str, **fields) -> dict:
    """Update the experiment's status.json with ``fields`` (and the time); returns the whole status."""
    status = read_status(exp_dir)
    status.update(fields, updated=now())
    io.write_json(layout.experiment_file(exp_dir, layout.STATUS), status)
    return status


def now() -> str:
    """The local time as status.json records it (``2026-01-31T23:59:59+0100``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _valid(status: dict) -> dict:
    """``status`` without the fields whose value is not of the type the pipeline writes (an edited status.json
    costs only those fields, never a traceback); ``timings`` keeps only its numeric entries."""
    out = {}
    for key, value in status.items():
        kind = _FIELDS.get(key)
        if kind is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            continue
        if key == "wall_seconds" and not np.isfinite(value):
            continue
        if key == "timings":
            value = {str(k): v for k, v in value.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}
        out[key] = value
    return out
