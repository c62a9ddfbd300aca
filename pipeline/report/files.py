"""The output files the report reads, each read so that a missing or damaged file costs only its part.

The report reads only what the queue wrote (paths from :mod:`pipeline.layout`),
never training code: a missing, truncated or edited file gives None (or is
left out) and the page says so where that part would be.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Dict, List, Optional, Tuple

import pandas as pd

from pipeline import io, layout

log = logging.getLogger(__name__)


def read_json_object(path: str) -> Optional[dict]:
    """A JSON object from ``path``; None when missing, unreadable or edited into something not an object."""
    try:
        value = io.read_json(path)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_summary(output_dir: str) -> Optional[pd.DataFrame]:
    """summary.csv, or None (with a warning) when missing, unreadable or lacking its columns."""
    path = layout.queue_file(output_dir, layout.SUMMARY)
    if not io.isfile(path):
        return None
    try:
        summary = io.read_csv(path, dtype={"experiment": str, "status": str, "error": str})
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        log.warning("report: %s unreadable (%s); experiments are listed from their folders", path, err)
        return None
    if not {"experiment", "status"} <= set(summary.columns):
        log.warning("report: %s lacks the experiment/status columns; experiments are listed from their folders", path)
        return None
    return summary


def read_text(path: str) -> Optional[str]:
    """The text of ``path``; None when it cannot be read."""
    try:
        with io.open_file(path, "r") as f:
            return f.read()
    except OSError:
        return None


def experiment_names(output_dir: str, summary: Optional[pd.DataFrame]) -> List[str]:
    """Leaderboard order when summary.csv exists, else every folder with a status.json."""
    if summary is not None:
        return [str(n) for n in summary["experiment"]]
    found = io.glob(layout.experiment_file(layout.experiment_dir(output_dir, "*"), layout.STATUS))
    return sorted(os.path.basename(os.path.dirname(p)) for p in found)


def histories(exp_dir: str) -> Dict[int, pd.DataFrame]:
    """``{fold: history.csv table}`` of the experiment's folds that have a readable history."""
    out = {}
    folds = [layout.fold_index(name) for name in io.listdir(exp_dir)] if io.isdir(exp_dir) else []
    for k in sorted(k for k in folds if k is not None):
        path = layout.fold_file(exp_dir, k, layout.HISTORY)
        if io.isfile(path):
            try:
                out[k] = io.read_csv(path)
            except (OSError, ValueError, pd.errors.EmptyDataError):
                continue
    return out


def caches(output_dir: str) -> List[Tuple[str, dict]]:
    """``[(folder, manifest)]`` of every feature cache in the output folder with a readable manifest."""
    out = []
    for path in sorted(io.glob(os.path.join(layout.cache_root(output_dir), "*", layout.CACHE_MANIFEST))):
        manifest = read_json_object(path)
        if manifest is not None:
            out.append((os.path.dirname(path), manifest))
    return out


def _plain(obj):
    """JSON round trip, so YAML- and JSON-read settings compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def cache_for(config: Optional[dict], found: List[Tuple[str, dict]]) -> Optional[Tuple[str, dict]]:
    """The feature cache an experiment used (of ``found``, see :func:`caches`): the one whose settings match its
    resolved config and that holds training clips (a ``--predict`` run's cache of new audio has the experiment's
    settings and test clips only)."""
    if not config:
        return None
    for folder, manifest in found:
        settings = manifest.get("settings") or {}
        if not ((manifest.get("splits") or {}).get("train") or {}).get("count"):
            continue
        audio = dict(config.get("audio") or {})
        audio.pop("max_bad_fraction", None)
        if (manifest.get("complete") and _plain(settings.get("data")) == _plain(config.get("data"))
                and _plain(settings.get("features")) == _plain(config.get("features"))
                and _plain(settings.get("audio")) == _plain(audio)):
            return folder, manifest
    return None
