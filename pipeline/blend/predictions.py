"""An experiment's prediction files as the blend reads them: loaded, then checked against each other.

Reads only ``output/<experiment>/scores.json``, ``oof.csv`` and ``test.csv``
(never training code, never test labels). Refuses experiments whose files are
unreadable, hold a value that is not a probability, or whose task, targets,
folds or id sets differ, because their OOF scores would not be comparable;
every message names the file (and the column and CSV line).
"""

from __future__ import annotations

import os
from typing import Dict, List

import numpy as np
import pandas as pd

from pipeline import io, layout
from pipeline.errors import BlendError


def load_predictions(exp_dir: str) -> Dict[str, object]:
    """Read one experiment's ``scores.json``, ``oof.csv`` and (when present) ``test.csv``; nothing else.

    Raises
    ------
    BlendError
        Naming the file, when one is missing, truncated or unparsable, or when
        scores.json lacks what the blend needs (task, targets, submission).
        The values themselves are checked by :func:`check_compatible`.
    """
    scores_path = layout.experiment_file(exp_dir, layout.SCORES)
    scores = _read(scores_path, io.read_json)
    if not isinstance(scores, dict):
        raise BlendError(f"{scores_path}: expected a JSON object; found {type(scores).__name__}")
    lacking = [k for k in ("task", "targets", "submission") if k not in scores]
    if lacking:
        raise BlendError(f"{scores_path}: lacks {lacking}; rerun the experiment (--force --only "
                         f"{os.path.basename(exp_dir)})")
    if scores["task"] not in ("binary", "multiclass", "multilabel") or not isinstance(scores["targets"], list) \
            or not scores["targets"] or not all(isinstance(t, str) for t in scores["targets"]):
        raise BlendError(f"{scores_path}: 'task' must be binary, multiclass or multilabel and 'targets' a list of "
                         f"names; found task={scores['task']!r}, targets={scores['targets']!r}")
    all_test_ids = scores.get("all_test_ids")
    if all_test_ids is not None and not (isinstance(all_test_ids, list) and all(
            isinstance(i, (str, int)) and not isinstance(i, bool) for i in all_test_ids)):
        raise BlendError(f"{scores_path}: 'all_test_ids' must be a list of test ids; found "
                         f"{type(all_test_ids).__name__}")
    oof = _read(layout.experiment_file(exp_dir, layout.OOF), lambda p: io.read_csv(p, dtype={"id": str}))
    test_path = layout.experiment_file(exp_dir, layout.TEST)
    test = _read(test_path, lambda p: io.read_csv(p, dtype={"id": str})) if io.isfile(test_path) else None
    if test is None and scores.get("all_test_ids") and io.isfile(layout.experiment_file(exp_dir, layout.SUBMISSION)):
        # The experiment predicted a test set (it wrote a submission), so its test.csv was deleted.
        raise BlendError(f"{test_path}: missing, but the experiment has test predictions (submission.csv); "
                         f"rerun it (--force --only {os.path.basename(exp_dir)})")
    return {"scores": scores, "oof": oof, "test": test}


def _read(path: str, reader):
    """``reader(path)``, with a BlendError naming the file for a missing, empty or unparsable one."""
    try:
        return reader(path)
    except FileNotFoundError:
        raise BlendError(f"{path}: missing; rerun the experiment (--force --only "
                         f"{os.path.basename(os.path.dirname(path))})") from None
    except pd.errors.EmptyDataError:
        raise BlendError(f"{path}: empty") from None
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise BlendError(f"{path}: unreadable ({type(err).__name__}: {err})") from None


def check_compatible(names: List[str], loaded: List[dict]) -> None:
    """Raise BlendError unless every experiment's files are valid and all share task, targets, OOF ids and
    folds, and test ids.

    Valid: oof.csv has ``id``, ``fold``, the targets of scores.json (0/1 or
    empty) and the prediction columns; test.csv has ``id`` and the same
    prediction columns; every prediction is a finite probability in [0, 1]
    (every blend metric - auc, log_loss, lwlrap - and every method reads
    probabilities; a 1.5 or a NaN would be averaged or ranked without a
    word). Messages name the file (``<experiment>/oof.csv`` inside the
    output folder), the column and the CSV line.
    """
    if not names:
        raise BlendError("nothing to blend: no experiments given")
    ref_name, ref = names[0], loaded[0]
    for name, item in zip(names[1:], loaded[1:]):  # first: a mismatch explains more than a column it lacks
        for key in ("task", "targets"):
            if item["scores"].get(key) != ref["scores"].get(key):
                raise BlendError(f"cannot blend {ref_name} and {name}: their {key} differ "
                                 f"({ref['scores'].get(key)!r} vs {item['scores'].get(key)!r})")
    for name, item in zip(names, loaded):
        oof = item["oof"]
        for col in ("id", "fold"):
            if col not in oof.columns:
                raise BlendError(f"cannot blend {name}: {name}/oof.csv has no {col!r} column")
        if not layout.prediction_columns_of(oof.columns):
            raise BlendError(f"cannot blend {name}: {name}/oof.csv has no prediction column (pred or pred:<class>)")
        if oof["id"].duplicated().any():
            dup = oof.loc[oof["id"].duplicated(), "id"].iloc[:3].tolist()
            raise BlendError(f"cannot blend {name}: {name}/oof.csv repeats ids (e.g. {dup})")
        _check_values(name, item)
        if item["test"] is not None and item["test"]["id"].duplicated().any():
            raise BlendError(f"cannot blend {name}: {name}/test.csv repeats ids")
    ref_oof = ref["oof"].set_index("id")["fold"]
    for name, item in zip(names[1:], loaded[1:]):
        if layout.prediction_columns_of(item["oof"].columns) != layout.prediction_columns_of(ref["oof"].columns):
            raise BlendError(f"cannot blend {ref_name} and {name}: their prediction columns differ")
        oof = item["oof"].set_index("id")["fold"]
        if set(oof.index) != set(ref_oof.index):
            diff = set(oof.index) ^ set(ref_oof.index)
            raise BlendError(f"cannot blend {ref_name} and {name}: their OOF ids differ ({len(diff)} ids, e.g. "
                             f"{sorted(diff)[:3]}); blend only experiments on the same training clips")
        differ = (oof != ref_oof.loc[oof.index]).to_numpy()
        if differ.any():
            example = oof.index[differ][:3].tolist()
            raise BlendError(f"cannot blend {ref_name} and {name}: their folds differ ({int(differ.sum())} clips, "
                             f"e.g. {example}); experiments must share the same fold table (same data and folds "
                             f"settings), otherwise their OOF scores are not comparable")
        if (item["test"] is None) != (ref["test"] is None) or (
            item["test"] is not None and set(item["test"]["id"]) != set(ref["test"]["id"])
        ):
            raise BlendError(f"cannot blend {ref_name} and {name}: their test ids differ")


def _check_values(name: str, item: dict) -> None:
    """BlendError naming file, column and CSV line for a label or prediction a blend must not read."""
    oof, test = item["oof"], item["test"]
    pred = layout.prediction_columns_of(oof.columns)
    targets = [str(t) for t in item["scores"].get("targets", [])]
    missing = [t for t in targets if t not in oof.columns]
    if missing:
        raise BlendError(f"cannot blend {name}: {name}/oof.csv has no label column(s) {missing[:5]} "
                         f"(scores.json lists the targets {targets[:5]})")
    if not pd.to_numeric(oof["fold"], errors="coerce").notna().all():
        bad = pd.to_numeric(oof["fold"], errors="coerce").isna().to_numpy()
        raise BlendError(f"cannot blend {name}: {name}/oof.csv column 'fold' line {_line(bad)} holds "
                         f"{oof['fold'][bad].iloc[0]!r}; expected a fold number")
    for col in targets:
        values = pd.to_numeric(oof[col], errors="coerce")
        bad = (values.notna() & ~values.isin([0, 1])) | (values.isna() & oof[col].notna())
        if bad.any():
            raise BlendError(f"cannot blend {name}: {name}/oof.csv label column {col!r} line {_line(bad)} holds "
                             f"{oof[col][bad].iloc[0]!r}; labels are 0 or 1")
    frames = [(layout.OOF, oof)]
    if test is not None:
        if "id" not in test.columns or layout.prediction_columns_of(test.columns) != pred:
            raise BlendError(f"cannot blend {name}: {name}/test.csv needs the columns id, {', '.join(pred)}; "
                             f"found {list(map(str, test.columns))[:8]}")
        frames.append((layout.TEST, test))
    for file, frame in frames:
        for col in pred:
            values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float)
            bad = ~((values >= 0.0) & (values <= 1.0))  # NaN, inf, text and out-of-range values alike
            if bad.any():
                raise BlendError(f"cannot blend {name}: {name}/{file} column {col!r} line {_line(bad)} holds "
                                 f"{frame[col].iloc[int(np.flatnonzero(bad)[0])]!r} ({int(bad.sum())} such "
                                 f"row(s)); predictions must be finite probabilities in [0, 1]")


def _line(mask) -> int:
    """The CSV line (header = line 1) of the first True entry of ``mask``."""
    return int(np.flatnonzero(np.asarray(mask, bool))[0]) + 2
