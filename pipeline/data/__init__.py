"""Data sources: dataset layouts -> :class:`~pipeline.data.base.Dataset` manifests.

Every source is an entry of :data:`pipeline.schema.DATA_SOURCES` whose builder
is one of the ``load_*`` functions here: it takes the source's frozen
parameter dataclass and returns a :class:`Dataset`. Decoding lives
in :mod:`pipeline.data.audio` and is shared by every source.
"""

from __future__ import annotations

import logging
from typing import Optional
from collections import Counter

import numpy as np
import pandas as pd

from pipeline import schema
from pipeline.data.base import SUBMISSION_FORMATS, Dataset
from pipeline.data.checks import check_duplicate_files
from pipeline.data.rfcx import read_kaggle_rfcx
from pipeline.data import synthetic, synthetic_rfcx
from pipeline.data.synthetic import read_synthetic_whale
from pipeline.data.synthetic_rfcx import read_synthetic_rfcx
from pipeline.data.table import read_table
from pipeline.data.whale import read_kaggle_whale
from pipeline.errors import DataError

__all__ = ["Dataset", "complete_submission", "format_submission", "load_dataset", "load_kaggle_rfcx",
           "load_kaggle_whale", "load_synthetic_rfcx", "load_synthetic_whale", "load_table", "needs_generation",
           "submission_frame"]

logger = logging.getLogger(__name__)

# rfcx: one column per species, s0..s23 in the competition; the rule is s<k> for target k.
_RFCX_ID = "recording_id"


def load_kaggle_whale(params: schema.KaggleWhaleParams) -> Dataset:
    """The kaggle_whale source: ROOT/train.csv and the .aiff clips beside it."""
    return read_kaggle_whale(params.root)


def load_synthetic_whale(params: schema.SyntheticWhaleParams) -> Dataset:
    """The synthetic_whale source: generated in the kaggle_whale layout on first use."""
    if params.root is None:
        # The queue resolves the default (input/<dataset name>); a None here is a caller bug.
        raise ValueError("synthetic_whale needs a resolved root folder. Received: root=None")
    if "://" in params.root:
        raise DataError(f"data.root: synthetic_whale generates its clips in a local folder; got {params.root!r}. "
                        f"Generate it locally, copy the folder to the bucket and read it with "
                        f"data: {{name: kaggle_whale, root: {params.root}}}")
    return read_synthetic_whale(
        params.root,
        n_train=params.n_train,
        n_test=params.n_test,
        positive_fraction=params.positive_fraction,
        seed=params.seed,
    )


def load_table(params: schema.TableParams) -> Dataset:
    """The table source: a CSV of files and labels, audio in a folder."""
    return read_table(
        params.csv,
        params.audio_dir,
        params.file_column,
        params.label_column,
        group_column=params.group_column,
        test_csv=params.test_csv,
        test_audio_dir=params.test_audio_dir,
        classes=params.classes,
    )


def load_kaggle_rfcx(params: schema.KaggleRfcxParams) -> Dataset:
    """The kaggle_rfcx source: tp/fp boxes and long recordings."""
    return read_kaggle_rfcx(params.root, unknown=params.unknown)


def load_synthetic_rfcx(params: schema.SyntheticRfcxParams) -> Dataset:
    """The synthetic_rfcx source: generated in the kaggle_rfcx layout on first use."""
    if params.root is None:
        raise ValueError("synthetic_rfcx needs a resolved root folder. Received: root=None")
    return read_synthetic_rfcx(params.root, unknown=params.unknown, n_train=params.n_train, n_test=params.n_test,
                               duration=params.duration, sample_rate=params.sample_rate, seed=params.seed,
                               confusers=params.confusers)


def load_dataset(name: str, params) -> Dataset:
    """Build the manifest of data source ``name``.

    Parameters
    ----------
    name : str
        A key of :data:`pipeline.schema.DATA_SOURCES`.
    params : dataclass
        The matching parameters (``schema.DATA_SOURCES[name]``) with paths
        already absolute.

    Returns
    -------
    Dataset

    Raises
    ------
    pipeline.registry.UnknownNameError
        For an unregistered name (the message lists the choices).
    TypeError
        When ``params`` is not the source's parameter class.
    DataError
        When the data on disk does not match the source's layout. One audio
        file under several ids is a warning naming them
        (:func:`pipeline.data.checks.check_duplicate_files`).
    """
    entry = schema.DATA_SOURCES[name]
    expected = entry.params
    if not isinstance(params, expected):
        raise TypeError(
            f"data source {name!r} takes {expected.__name__}. Received: params={type(params).__name__}"
        )
    dataset = entry.load()(params)
    # Every source: one audio file under several ids (opposite labels would train against each other).
    check_duplicate_files(dataset.manifest, dataset.targets)
    return dataset


def root_problem(name: str, params) -> Optional[str]:
    """Why the source ``name`` may not write its data at ``params.root`` (None: it may, or it writes nothing).

    Only the synthetic generators write, and only into a missing or empty
    folder or a dataset they wrote themselves - never a folder of the user's.
    """
    root = getattr(params, "root", None)
    if root is None or "://" in root:
        return None  # a remote synthetic root is refused with its own message when the data is read
    if name == "synthetic_whale":
        return synthetic.root_problem(root)
    if name == "synthetic_rfcx":
        return synthetic_rfcx.root_problem(root)
    return None


def needs_generation(name: str, params) -> bool:
    """Whether :func:`load_dataset` would first write the data: a synthetic dataset not (or differently) generated.

    Such data is a function of its parameters, which the experiment's config
    covers, so checks that must not write (``--dry-run``, whether a finished
    run is still current) can treat it as unchanged instead of generating it.
    """
    if name == "synthetic_whale" and params.root is not None and "://" not in params.root:
        return not synthetic.is_generated(params.root, n_train=params.n_train, n_test=params.n_test,
                                          positive_fraction=params.positive_fraction, seed=params.seed)
    if name == "synthetic_rfcx" and params.root is not None:
        return not synthetic_rfcx.is_generated(params.root, n_train=params.n_train, n_test=params.n_test,
                                               duration=params.duration, sample_rate=params.sample_rate,
                                               seed=params.seed, confusers=params.confusers)
    return False


def submission_frame(dataset: Dataset, ids: list, predictions: np.ndarray, *,
                     oof_mean: Optional[np.ndarray] = None) -> pd.DataFrame:
    """The competition submission for ``dataset``: one row per test clip, in the manifest's order.

    Parameters
    ----------
    dataset : Dataset
        Decides the format (``dataset.submission``), the target order and the
        test ids the submission must cover, in their order.
    ids : list of str [n]
        Test clip ids, unique, each one of the dataset's test ids, in any order.
    predictions : np.ndarray [shape=(n, len(dataset.targets))]
        Probabilities in [0, 1], columns in ``dataset.targets`` order (a 1-D
        array is accepted for single-target data).
    oof_mean : np.ndarray [shape=(len(dataset.targets),)] or None
        The mean OOF prediction, for when no test clip has a prediction.

    Returns
    -------
    pd.DataFrame
        See :func:`complete_submission`.

    Raises
    ------
    ValueError
        See :func:`complete_submission`.
    """
    return complete_submission(dataset.submission, dataset.targets, list(dataset.test["id"]), ids, predictions,
                               oof_mean=oof_mean)


def complete_submission(submission: str, targets, test_ids: list, ids: list, predictions: np.ndarray, *,
                        oof_mean: Optional[np.ndarray] = None, label: str = "submission") -> pd.DataFrame:
    """A submission with one row per test clip, in the order of ``test_ids`` (the test manifest's).

    The one place where every submission writer (experiments, the blend,
    ``--predict`` and exported models) decides the rows: a competition
    submission must list every test clip, and a bad file must not stop the
    run. Test clips absent from ``ids`` (the decoder skipped their audio) get
    the mean prediction of each column, at their own place; when no test clip
    has a prediction they all get ``oof_mean``. Either is logged as a warning
    with the count.

    Parameters
    ----------
    submission : str
        The format, see :func:`format_submission`.
    targets : sequence of str [C]
        Target names in prediction-column order.
    test_ids : list of str [m]
        Every test clip, in the order the rows must have.
    ids : list of str [n]
        The test clips with a prediction, unique, each one of ``test_ids``.
    predictions : np.ndarray [shape=(n, C)]
        Probabilities in [0, 1] (1-D accepted when C == 1).
    oof_mean : np.ndarray [shape=(C,)] or None
        The mean OOF prediction, used only when ``ids`` is empty.
    label : str
        What the warning calls the table (``submission``, ``blend submission``).

    Returns
    -------
    pd.DataFrame [m rows]
        See :func:`format_submission`.

    Raises
    ------
    ValueError
        For a shape mismatch, values outside [0, 1] or NaN, duplicated ids,
        ids that are not in ``test_ids``, or no prediction at all without
        ``oof_mean``.
    """
    test_ids = [str(i) for i in test_ids]
    ids = [str(i) for i in ids]
    predictions = _check_predictions(ids, predictions, n_targets=len(targets))
    unknown = sorted(set(ids) - set(test_ids))
    if unknown:
        raise ValueError(f"ids must be test ids of the dataset. Received {len(unknown)} others, e.g. {unknown[:5]}")
    row_of = {clip: n for n, clip in enumerate(ids)}
    absent = [i for i in test_ids if i not in row_of]
    fill = None
    if absent and ids:
        logger.warning("%s: %d of %d test clips have no prediction (skipped audio?); "
                       "they get the mean prediction, e.g. %s", label, len(absent), len(test_ids), absent[:3])
        fill = predictions.mean(axis=0)
    elif absent:
        if oof_mean is None:
            raise ValueError(f"no predictions for any of the {len(test_ids)} test clips")
        fill = _check_predictions(["oof mean"], np.reshape(oof_mean, (1, -1)), n_targets=len(targets))[0]
        logger.warning("%s: none of the %d test clips has a prediction (all skipped as bad audio?); "
                       "every row gets the mean OOF prediction %s", label, len(test_ids), np.round(fill, 4).tolist())
    rows = np.empty((len(test_ids), predictions.shape[1]))
    for n, clip in enumerate(test_ids):
        rows[n] = predictions[row_of[clip]] if clip in row_of else fill
    return format_submission(submission, targets, test_ids, rows)


def format_submission(submission: str, targets, ids: list, predictions: np.ndarray) -> pd.DataFrame:
    """A submission table in one competition format, without needing the Dataset.

    For stages that only have prediction files (blending); it checks shapes
    and values but cannot check the ids against the test set - use
    :func:`submission_frame` when the dataset is at hand.

    Parameters
    ----------
    submission : str
        ``whale``, ``rfcx`` or ``table`` (:data:`pipeline.data.base.SUBMISSION_FORMATS`).
    targets : sequence of str [C]
        Target names in prediction-column order.
    ids : list of str [n]
        Row ids, unique.
    predictions : np.ndarray [shape=(n, C)]
        Probabilities in [0, 1] (1-D accepted when C == 1).

    Returns
    -------
    pd.DataFrame
        ``whale``: ``clip, probability`` (C must be 1); ``table``:
        ``id, <targets...>``; ``rfcx``: ``recording_id, s0, ..., s<C-1>``.

    Raises
    ------
    ValueError
        For an unknown format, a shape mismatch, values outside [0, 1] or NaN,
        or duplicated ids.
    """
    targets = [str(t) for t in targets]
    ids = [str(i) for i in ids]
    predictions = _check_predictions(ids, predictions, n_targets=len(targets))
    if submission == "whale":
        if len(targets) != 1:
            raise ValueError(f"the whale format has one probability column. Received: targets={targets}")
        columns = ["clip", "probability"]
    elif submission == "rfcx":
        columns = [_RFCX_ID] + [f"s{k}" for k in range(len(targets))]
    elif submission == "table":
        columns = ["id", *targets]
    else:
        raise ValueError(f"submission must be one of {SUBMISSION_FORMATS}. Received: submission={submission!r}")
    frame = pd.DataFrame(predictions, columns=columns[1:])
    frame.insert(0, columns[0], ids)
    return frame


def _check_predictions(ids: list, predictions, *, n_targets: int) -> np.ndarray:
    """``predictions`` as float64 [len(ids), n_targets], after checking shape, range and id uniqueness."""
    predictions = np.asarray(predictions, dtype=np.float64)
    if predictions.ndim == 1 and n_targets == 1:
        predictions = predictions[:, None]
    if predictions.shape != (len(ids), n_targets):
        raise ValueError(
            f"predictions must have shape (len(ids), n_targets) = ({len(ids)}, {n_targets}). "
            f"Received: predictions.shape={predictions.shape}"
        )
    inside = (predictions >= 0.0) & (predictions <= 1.0)  # False for NaN too
    if not inside.all():
        raise ValueError(
            f"predictions must be probabilities in [0, 1]. Received values such as {predictions[~inside][:3].tolist()}"
        )
    if len(set(ids)) != len(ids):
        dup = sorted(i for i, count in Counter(ids).items() if count > 1)
        raise ValueError(f"ids must be unique. Received duplicates: {dup[:5]}")
    return predictions
