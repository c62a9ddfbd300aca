"""Which experiments' results count now: finished, with their current config, on the data as it is now.

A finished experiment's predictions reach ``output/oof.csv``, the summary's
scores and the blend only when its config is unchanged and its data (ids,
files' size and mtime, labels, groups: :mod:`pipeline.data.identity`) is the
data it ran on. And only experiments on one fold table can share the queue's
OOF table or be blended: their OOF scores are comparable. Both rules live
here, for the queue (its summary and ``output/oof.csv``) and the blend.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

from pipeline import layout
from pipeline.config import Experiment, Queue
from pipeline.hashing import stable_hash
from pipeline.status import DONE, read_status

log = logging.getLogger("pipeline")


def current_data(queue: Queue) -> Dict[str, object]:
    """The data each experiment of ``queue`` would use now, loaded once per distinct data block, writing nothing.

    Returns ``{data key: value}`` (key: :func:`data_key`) where value is a
    :class:`~pipeline.data.base.Dataset`, ``None`` for synthetic data not on
    disk (a function of the config, so unchanged by definition), or the error
    message (str) when the data cannot be read.
    """
    from pipeline.data import load_dataset, needs_generation

    out: Dict[str, object] = {}
    # The sources' own messages (clip counts, missing files) were logged when the experiments loaded the data.
    sources = logging.getLogger("pipeline.data")
    level = sources.level
    sources.setLevel(logging.ERROR)
    try:
        for exp in queue.experiments:
            key = data_key(exp)
            if key in out:
                continue
            if needs_generation(exp.data.name, exp.data.params):
                out[key] = None
                continue
            try:
                dataset = load_dataset(exp.data.name, exp.data.params)
                _ = dataset.identity
                out[key] = dataset
            except Exception as err:  # noqa: BLE001 - unreadable data is reported per experiment, never a crash
                out[key] = f"{type(err).__name__}: {err}"
    finally:
        sources.setLevel(level)
    return out


def data_key(exp: Experiment) -> str:
    """The key of ``exp``'s data block in :func:`current_data`."""
    return stable_hash(exp.data.to_dict())


def data_changes(exp_dir: str, status: dict, dataset) -> str:
    """What changed in the data since the run recorded in ``exp_dir`` (its status and per-clip table); '' if nothing."""
    from pipeline.data.identity import describe_changes, read_clips

    return describe_changes(status.get("data"), dataset.identity,
                            read_clips(layout.experiment_file(exp_dir, layout.CLIPS)))


def stale_reason(exp: Experiment, output: str, current: Dict[str, object]) -> str:
    """Why a finished experiment's results are not results on the current data; '' when they are.

    ``current`` comes from :func:`current_data`.
    """
    data = current.get(data_key(exp))
    if data is None:
        return ""
    if isinstance(data, str):
        return f"its data cannot be read now, so its results cannot be checked: {data}"
    exp_dir = layout.experiment_dir(output, exp.name)
    changed = data_changes(exp_dir, read_status(exp_dir), data)
    return f"data changed since this run: {changed}" if changed else ""


def finished(queue: Queue, output: str, current: Optional[Dict[str, object]] = None) -> List[Experiment]:
    """Experiments of ``queue`` finished with their current config on the current data (:func:`stale_reason` empty).

    ``output``: the queue's output folder. ``current``: :func:`current_data`
    of the queue, computed here when None.
    """
    if current is None:
        current = current_data(queue)
    out = []
    for exp in queue.experiments:
        status = read_status(layout.experiment_dir(output, exp.name))
        if status.get("state") == DONE and status.get("config_hash") == exp.config_hash():
            reason = stale_reason(exp, output, current)
            if reason:
                log.warning("%s: %s; its results are stale and left out (rerun the queue to update them)",
                            exp.name, reason)
                continue
            out.append(exp)
    return out


def on_shared_folds(experiments: List[Experiment]) -> Tuple[List[Experiment], List[Experiment]]:
    """``(kept, left out)``: the experiments on the first one's data and fold table, and the others.

    Only predictions held out by the same folds can sit in one OOF table or be
    blended; the first experiment (in queue order) decides which folds those are.
    """
    from pipeline.folds import fold_key

    if not experiments:
        return [], []
    key = fold_key(experiments[0].data, experiments[0].folds)
    kept = [e for e in experiments if fold_key(e.data, e.folds) == key]
    return kept, [e for e in experiments if fold_key(e.data, e.folds) != key]
