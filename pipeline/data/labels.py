"""Label columns of a user's CSV: refuse the values that would silently change the task.

A label column read as text can go wrong without any error: an empty cell or
``NaN`` becomes a class named "NaN", and one ``01`` typo in a 0/1 column turns a
binary task into three classes. The rules here (used by the ``table`` and
``kaggle_whale`` sources) make those cases errors that name the file, the
column and the rows (as an editor numbers them: the header is line 1):

* Surrounding whitespace is ignored (``" 1"`` is ``1``); nothing else is
  rewritten.
* A missing label (empty, ``NaN``, ``NA``, ``N/A``, ``null``, ``None``, ``-``,
  ``?``, in any case) is refused, unless it is a declared class
  (``data.classes: [dog, cat, none]``: "none" is then a label).
* Binary means every label is one of ``0``, ``1``, ``0.0``, ``1.0``. Other
  spellings of 0 and 1 (``01``, ``1e0``, ``true``) are refused, never guessed.
* Without a declared class list, a column whose labels are mostly 0/1 (0 and 1
  both present and more than half the rows) but not only 0/1 is refused as a
  typo; so is a number spelled two ways (``1`` and ``1.0`` or ``01``) among
  multiclass labels. A multiclass task whose classes are 0, 1 and others
  declares them (``data.classes: [0, 1, 2]``).
* With a declared class list (``classes``), every label must be one of them
  (compared as text after stripping); ``[0, 1]`` declares a binary task.
* Inferred multiclass labels that differ only in case (``Dog``, ``dog``) or
  occur on a single row are logged as likely typos (not refused: both can be
  real).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from pipeline.errors import DataError

logger = logging.getLogger(__name__)

MISSING = frozenset({"", "nan", "na", "n/a", "null", "none", "-", "?"})
BINARY = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0}
_SHOWN = 5


def csv_rows(mask, limit: int = _SHOWN) -> list:
    """1-based CSV line numbers of the True entries of ``mask`` (the header is line 1)."""
    return [int(i) + 2 for i in np.flatnonzero(np.asarray(mask, bool))[:limit]]


def _values_and_rows(values: pd.Series, mask) -> str:
    """``"['2', '01'] on row(s) [3, 7]"``: what the rows hold, as the user typed it."""
    mask = np.asarray(mask, bool)
    shown = sorted({str(v) for v in values[mask]})[:_SHOWN]
    more = f" (and {int(mask.sum()) - _SHOWN} more rows)" if mask.sum() > _SHOWN else ""
    return f"{shown} on row(s) {csv_rows(mask)}{more}"


def _text(column: pd.Series) -> pd.Series:
    """The column as stripped text; pandas' NaN (a cell read as missing) becomes ''."""
    return column.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)).str.strip()


def _refuse_missing(text: pd.Series, raw: pd.Series, where: str, expected: str,
                    declared: Sequence[str] = ()) -> None:
    """Refuse empty cells and the usual spellings of "missing"; a declared class (``none``, ``NA``) is a label."""
    missing = (text.str.lower().isin(MISSING) & ~text.isin([c for c in declared if c])).to_numpy()
    if missing.any():
        found = sorted({str(v) for v in raw[missing]})[:_SHOWN]
        hint = ("" if declared or not any(str(v).strip() for v in found)
                else "; if one of these is a real class, declare the class list (data.classes: [...])")
        raise DataError(f"{where} {expected}; row(s) {csv_rows(missing)} have no label (found {found}){hint}")


def binary_labels(column: pd.Series, *, where: str) -> np.ndarray:
    """0/1 labels as float64 [n]; DataError naming the rows of anything else.

    Parameters
    ----------
    column : pd.Series [n]
        The label column as read (text or numbers).
    where : str
        ``"<file>: column '<name>'"`` for the messages.
    """
    raw = column.reset_index(drop=True)
    text = _text(raw)
    _refuse_missing(text, raw, where, "must be 0 or 1")
    bad = ~text.isin(list(BINARY)).to_numpy()
    if bad.any():
        raise DataError(f"{where} must be 0 or 1; found {_values_and_rows(raw, bad)}")
    return text.map(BINARY).to_numpy(dtype=np.float64)


def read_labels(column: pd.Series, *, where: str, name: str,
                classes: Optional[Sequence[str]] = None) -> Tuple[str, tuple, Dict[str, np.ndarray]]:
    """The task, target names and target columns of a label column.

    Parameters
    ----------
    column : pd.Series [n]
        The label column as read (text).
    where : str
        ``"<file>: column '<name>'"`` for the messages.
    name : str
        The label column's name: the target name of a binary task.
    classes : sequence of str, optional
        The declared class list (``data.classes``); None: inferred.

    Returns
    -------
    (task, targets, values)
        ``("binary", (name,), {name: float64 [n] 0/1})`` or
        ``("multiclass", class names, {class: float64 [n] one-hot})``; inferred
        classes are sorted, declared ones keep their order.

    Raises
    ------
    DataError
        See the module docstring.
    """
    raw = column.reset_index(drop=True)
    text = _text(raw)
    if classes is not None:
        classes = tuple(str(c).strip() for c in classes)
    _refuse_missing(text, raw, where, "needs a label on every training row", declared=classes or ())
    if classes is not None:
        outside = ~text.isin(classes).to_numpy()
        if outside.any():
            raise DataError(f"{where}: labels outside data.classes {list(classes)}: {_values_and_rows(raw, outside)}")
        unused = [c for c in classes if c not in set(text)]
        if unused:
            logger.warning("%s: declared class(es) %s have no training row", where, unused)
        if set(classes) <= set(BINARY) and len({BINARY[c] for c in classes}) == 2:
            return "binary", (name,), {name: text.map(BINARY).to_numpy(dtype=np.float64)}
        return "multiclass", classes, {c: (text == c).to_numpy(dtype=np.float64) for c in classes}

    found = sorted(set(text))
    if len(found) < 2:
        raise DataError(f"{where} has a single class {found}; at least two classes are needed")
    is_binary = text.isin(list(BINARY)).to_numpy()
    if is_binary.all() and len({BINARY[v] for v in found}) == 2:
        return "binary", (name,), {name: text.map(BINARY).to_numpy(dtype=np.float64)}
    binary_values = {BINARY[v] for v in text[is_binary]}
    if binary_values == {0.0, 1.0} and is_binary.sum() > len(text) / 2:
        raise DataError(f"{where} looks binary ({int(is_binary.sum())} of {len(text)} rows are 0 or 1) but holds "
                        f"{_values_and_rows(raw, ~is_binary)}; fix those rows, or declare the classes of a "
                        f"multiclass task (data.classes: [...])")
    _refuse_numbers_spelled_twice(text, raw, where)
    _warn_about_likely_typos(text, where)
    return "multiclass", tuple(found), {c: (text == c).to_numpy(dtype=np.float64) for c in found}


def _warn_about_likely_typos(text: pd.Series, where: str) -> None:
    """Classes that differ only in case, and classes of a single row, are often typos: say so (not refused)."""
    by_case: Dict[str, set] = {}
    for value in set(text):
        by_case.setdefault(value.casefold(), set()).add(value)
    twins = [sorted(v) for v in by_case.values() if len(v) > 1]
    if twins:
        logger.warning("%s: classes that differ only in case are separate classes: %s; if they are one class, "
                       "write them one way", where, twins[:_SHOWN])
    counts = text.value_counts()
    single = sorted(counts.index[counts == 1])
    if single and len(single) < len(counts):
        rows = csv_rows(text.isin(single).to_numpy())
        logger.warning("%s: class(es) %s have a single row (row(s) %s); a typo, or a class too rare to be in "
                       "every fold", where, single[:_SHOWN], rows)


def _refuse_numbers_spelled_twice(text: pd.Series, raw: pd.Series, where: str) -> None:
    """``1`` and ``01`` (or ``1.0``) as two classes is a typo, not two classes."""
    numbers = pd.to_numeric(text, errors="coerce")
    spellings: Dict[float, Counter] = {}
    for value, spelled in zip(numbers, text):
        if not pd.isna(value):
            spellings.setdefault(float(value), Counter())[spelled] += 1
    for value, counter in spellings.items():
        if len(counter) > 1:
            common = counter.most_common(1)[0][0]
            odd = (numbers == value).to_numpy() & (text != common).to_numpy()
            raise DataError(f"{where} spells the number {value:g} in {len(counter)} ways ({sorted(counter)}), "
                            f"which would make them different classes: {_values_and_rows(raw, odd)}; write "
                            f"each class one way, or declare the classes (data.classes: [...])")
