"""The prediction stage: a fold model -> predictions for any examples, and the gathering over folds.

:func:`predict_examples` is the one place where a trained fold model meets
examples; the OOF and test predictions of every kind of data go through it:

* an example as long as the model's input (a clip cut to ``audio.duration``)
  is predicted in batches across examples;
* an example longer than the window (a whole rfcx recording) is cut into
  sliding windows (:func:`window_starts`), predicted a recording at a time, and
  the windows are combined by ``max`` or ``mean``;
* a clip longer than ``audio.duration`` has its later windows in the feature
  cache (``FeatureCache.extra_windows``); their predictions are combined with
  the clip's own (first-window) prediction the same way.

Test-time augmentation happens here too (``views``, from ``predict.tta`` by
:func:`tta_views`): every model input (a clip, a window) is predicted in each
view and the views' probabilities are averaged (arithmetic mean) before windows
are combined, so OOF, test and new-audio predictions see the same views.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

AGGREGATES = ("max", "mean")


def window_starts(n_frames: int, window: int, hop: int) -> List[int]:
    """Starts of windows of ``window`` frames every ``hop`` frames; the last window ends at the last frame.

    The same rule as the cache's extra windows of long clips (:func:`pipeline.cache.featurise.window_starts`,
    the windows after the first), here over a whole example's frames.
    """
    from pipeline.cache.featurise import window_starts as later_windows

    return [0, *later_windows(n_frames, window, hop)]


def _clipwise(predictions) -> np.ndarray:
    """Model output -> [n, C] float32; a packed SED output [n, 1 + T, C] contributes its clipwise row."""
    p = np.asarray(predictions, np.float32)
    return p[:, 0] if p.ndim == 3 else p


def _combine(stacked: np.ndarray, aggregate: str) -> np.ndarray:
    """Predictions of one example's windows [w, C] -> [C]."""
    return stacked.max(0) if aggregate == "max" else stacked.mean(0)


@dataclass(frozen=True)
class View:
    """One test-time view of a batch of model inputs x [B, T, ...] (T: frames, or samples of a waveform).

    A circular shift along T by ``shift`` steps (circular like ``augment.time_shift``, so a
    trained model has seen such inputs; positive shifts move content later), then a gain:
    ``+ gain_db`` on log-mel (dB), ``* 10 ** (gain_db / 20)`` on a waveform (complexity series are
    scale invariant; config_checks refuses a gain there). A plain value, so that the prediction
    settings holding it pickle into a fold job.
    """

    shift: int
    gain_db: float
    feature: str

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.shift:
            x = np.roll(x, self.shift, axis=1)
        if self.gain_db:
            x = x + np.float32(self.gain_db) if self.feature == "mel" else x * np.float32(10.0 ** (self.gain_db / 20.0))
        return x


def tta_views(tta, *, feature: str, steps_per_second: float) -> Tuple[View, ...]:
    """The test-time views of ``predict.tta`` (a tuple of :class:`pipeline.schema.TtaView`); () = no TTA.

    steps_per_second : frames per second of the feature (sample_rate / hop_length), or the sample rate;
    a view's ``shift`` in seconds becomes ``round(shift * steps_per_second)`` steps.
    """
    return tuple(View(int(round(v.shift * steps_per_second)), float(v.gain_db), feature) for v in tta)


def _predictor(model, views: Sequence[View]) -> Callable[[np.ndarray], np.ndarray]:
    """A batch of model inputs -> clipwise probabilities [B, C] float32, averaged over ``views`` (if any)."""
    if not views:
        return lambda x: _clipwise(model.predict_on_batch(x))

    def predict(x):
        x = np.asarray(x)
        return np.mean([_clipwise(model.predict_on_batch(view(x))) for view in views], axis=0)

    return predict


def predict_examples(model, examples, *, batch_size: int, window: Optional[int] = None, hop: Optional[int] = None,
                     aggregate: str = "max", extra_windows=None,
                     views: Sequence[View] = ()) -> Tuple[List[str], np.ndarray]:
    """Predict ``(id, x)`` examples with a fold model: (ids in dataset order, predictions [n, C] float32).

    examples : tf.data.Dataset of ``(id: string, x: float32 [T, ...])``, unbatched; every example
        has the same time axis T (frames, or samples of a waveform).
    window : time steps per window (default: the model's input length). When ``T > window`` each
        example is cut into windows every ``hop`` steps (default ``window // 2``; the last window
        ends at the example's end), a recording's windows are predicted ``batch_size`` at a time
        and combined by ``aggregate``. Otherwise the examples are predicted ``batch_size`` at a time.
    extra_windows : None, or tf.data.Dataset of ``(id, x [T, ...])`` with the later windows of clips
        longer than the cache's clip length (``FeatureCache.extra_windows``; a clip's windows
        consecutive). Windows of ids among ``examples`` are predicted ``batch_size`` at a time and
        each clip's prediction becomes ``aggregate`` over its first window and its extra windows.
    aggregate : ``max`` or ``mean``.
    views : test-time views (:func:`tta_views`); each model input's prediction is the mean of its
        views' predictions. () predicts the inputs as they are.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be 'max' or 'mean'. Received: aggregate={aggregate!r}")
    n_outputs = int(model.outputs[0].shape[-1])
    window = window or model.inputs[0].shape[1]
    predict = _predictor(model, views)
    ids: List[str] = []
    outs: List[np.ndarray] = []
    for batch_ids, xs in examples.batch(_examples_per_batch(examples, window, batch_size)):
        if window is None or xs.shape[1] <= window:
            ids.extend(v.decode() for v in batch_ids.numpy())
            outs.append(predict(xs))
            continue
        for rid, x in zip(batch_ids.numpy(), xs.numpy()):
            outs.append(_combine(_window_predictions(predict, x, window, hop, batch_size), aggregate)[None])
            ids.append(rid.decode())
    if not outs:
        return [], np.zeros((0, n_outputs), np.float32)
    preds = np.concatenate(outs)
    if extra_windows is not None:
        preds = _with_extra_windows(predict, ids, preds, extra_windows, batch_size=batch_size, aggregate=aggregate)
    return ids, preds


def predict_windows(model, examples, *, batch_size: int, window: int, hop: Optional[int] = None,
                    views: Sequence[View] = ()) -> Tuple[List[str], List[int], np.ndarray]:
    """Each example's sliding-window predictions, not combined: (ids, window starts, predictions [n, W, C]).

    The windows of :func:`predict_examples` (same ``window``, ``hop``, ``views``) over examples of T time
    steps each (the same T for all: whole cached recordings); ``starts`` are the windows' first steps.
    Used where a prediction must keep its place in time (pseudo-labels of a recording's unknown frames).
    """
    hop = hop or max(1, window // 2)
    predict = _predictor(model, views)
    ids: List[str] = []
    outs: List[np.ndarray] = []
    starts: List[int] = []
    for batch_ids, xs in examples.batch(_examples_per_batch(examples, window, batch_size)):
        for rid, x in zip(batch_ids.numpy(), xs.numpy()):
            starts = window_starts(len(x), window, hop)
            outs.append(_window_predictions(predict, x, window, hop, batch_size))
            ids.append(rid.decode())
    n_outputs = int(model.outputs[0].shape[-1])
    return ids, starts, np.stack(outs) if outs else np.zeros((0, 0, n_outputs), np.float32)


def _window_predictions(predict, x: np.ndarray, window: int, hop: Optional[int], batch_size: int) -> np.ndarray:
    """One example x [T, ...] cut into windows (:func:`window_starts`) and predicted: [W, C]."""
    starts = window_starts(len(x), window, hop or max(1, window // 2))
    windows = np.stack([x[s: s + window] for s in starts])
    return np.concatenate([predict(windows[b: b + batch_size]) for b in range(0, len(windows), batch_size)])


def _examples_per_batch(examples, window: Optional[int], batch_size: int) -> int:
    """Examples read per batch: ``batch_size``, or for examples longer than the window (whole recordings, cut
    into windows one at a time) at most :data:`pipeline.memory.PARSE_BYTES` of them."""
    from pipeline.memory import parse_batch

    shape = examples.element_spec[1].shape
    if window is None or not shape.is_fully_defined() or shape[0] <= window:
        return batch_size
    return min(batch_size, parse_batch(int(np.prod(shape)) * 4))


def _with_extra_windows(predict, ids: List[str], preds: np.ndarray, extra_windows, *, batch_size: int,
                        aggregate: str) -> np.ndarray:
    """``preds`` [n, C] of the first windows, each clip with extra windows combined with theirs."""
    from pipeline.cache.read import labelled

    # Only the windows of these clips (e.g. one fold's validation clips), each labelled with its clip's row.
    rows = np.arange(len(ids), dtype=np.float32)[:, None]
    windows = labelled(extra_windows, ids, rows).map(lambda i, x, row: (row, x))
    per_clip: Dict[int, List[np.ndarray]] = {}
    for row, x in windows.batch(batch_size):
        for n, p in zip(row.numpy()[:, 0].astype(int), predict(x)):
            per_clip.setdefault(n, []).append(p)
    combined = preds.copy()
    for n, extra in per_clip.items():
        combined[n] = _combine(np.stack([preds[n], *extra]), aggregate)
    return combined


def mean_over_folds(per_fold: List[np.ndarray]) -> np.ndarray:
    """Test predictions averaged over fold models: list of [n, C] -> [n, C]."""
    return np.mean(np.stack(per_fold), axis=0)


def collect_folds(oof_parts: List[pd.DataFrame], test_parts: List[pd.DataFrame], ids: Sequence[str],
                  test_ids: Sequence[str], pred_cols: Sequence[str]) -> Tuple[pd.DataFrame, Optional[pd.DataFrame]]:
    """The fold loop's result: OOF rows in the order of ``ids`` (clips without a prediction
    left out) and the test predictions averaged over folds (None without a test set)."""
    oof = pd.concat(oof_parts, ignore_index=True)
    present = set(oof["id"])
    oof = oof.set_index("id").loc[[i for i in ids if i in present]].reset_index()
    test = None
    if test_parts:
        aligned = [p.set_index("id").loc[list(test_ids), list(pred_cols)].to_numpy() for p in test_parts]
        test = pd.DataFrame({"id": list(test_ids)})
        test[list(pred_cols)] = mean_over_folds(aligned)
    return oof, test
