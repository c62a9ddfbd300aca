"""Report figures as PNG bytes: arrays and tables in, images out (no file access).

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas
directly, never through ``pyplot``: no global backend switch, no figure
registry to leak memory over a long queue, and it works without a display.
"""

from __future__ import annotations

import io as _io
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 90
POSITIVE, NEGATIVE, BLEND = "#c0392b", "#2c6fbb", "#e67e22"


def to_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes."""
    FigureCanvasAgg(fig)
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def roc_curve(y_true: np.ndarray, y_pred: np.ndarray, *, title: str = "ROC curve") -> bytes:
    """ROC curve of a binary task with its AUC. y_true, y_pred: [n] (labels 0/1, scores)."""
    from sklearn.metrics import roc_auc_score, roc_curve as _roc

    y_true = np.asarray(y_true, float).ravel() > 0.5
    y_pred = np.asarray(y_pred, float).ravel()
    fig = Figure(figsize=(4.6, 4.2))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--", label="chance")
    if y_true.all() or not y_true.any():
        ax.text(0.5, 0.5, "one class only: no ROC curve", ha="center", va="center")
    else:
        fpr, tpr, _ = _roc(y_true, y_pred)
        ax.plot(fpr, tpr, color=NEGATIVE, lw=2, label=f"AUC {roc_auc_score(y_true, y_pred):.4f}")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.set_aspect("equal")
    ax.legend(loc="lower right")
    return to_png(fig)


def average_precision_bars(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], *,
                           title: str = "Average precision per class") -> bytes:
    """Per-class average precision (multiclass one-vs-rest / multilabel). y_true, y_pred: [n, C]."""
    from sklearn.metrics import average_precision_score

    y_true = np.asarray(y_true, float) > 0.5
    y_pred = np.asarray(y_pred, float)
    ap = np.array([average_precision_score(y_true[:, c], y_pred[:, c]) if y_true[:, c].any() else np.nan
                   for c in range(y_true.shape[1])])
    prevalence = y_true.mean(axis=0)
    fig = Figure(figsize=(max(4.6, 0.35 * len(classes) + 1.5), 4.2))
    ax = fig.add_subplot()
    x = np.arange(len(classes))
    ax.bar(x, np.nan_to_num(ap), color=NEGATIVE, label="average precision")
    ax.scatter(x, prevalence, color="#333", marker="_", s=200, zorder=3, label="prevalence (chance AP)")
    if np.isfinite(ap).any():
        ax.axhline(np.nanmean(ap), color=POSITIVE, ls="--", lw=1, label=f"mean AP {np.nanmean(ap):.3f}")
    ax.set_xticks(x, [str(c) for c in classes], rotation=60 if len(classes) > 6 else 0, ha="right"
                  if len(classes) > 6 else "center")
    ax.set(ylim=(0, 1.05), ylabel="average precision", title=title)
    ax.legend(loc="lower right", fontsize=8)
    return to_png(fig)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, task: str, classes: Sequence[str], *,
                     threshold: float = 0.5) -> bytes:
    """Confusion matrix of OOF predictions [n, C] at ``threshold`` (multiclass: arg-max).

    binary: 2 x 2; multiclass: C x C; multilabel: one row per class with TN, FP, FN, TP counts.
    """
    y_true = np.asarray(y_true, float)
    y_pred = np.asarray(y_pred, float)
    if task == "multiclass":
        t, p = y_true.argmax(1), y_pred.argmax(1)
        n = len(classes)
        m = np.zeros((n, n), int)
        np.add.at(m, (t, p), 1)
        rows, cols, title = list(classes), list(classes), "Confusion matrix (arg-max)"
        ylabel, xlabel = "true class", "predicted class"
    elif task == "multilabel":
        t, p = y_true > 0.5, y_pred >= threshold
        m = np.stack([(~t & ~p).sum(0), (~t & p).sum(0), (t & ~p).sum(0), (t & p).sum(0)], axis=1)
        rows, cols, title = list(classes), ["TN", "FP", "FN", "TP"], f"Per-class counts at threshold {threshold:g}"
        ylabel, xlabel = "class", ""
    else:
        t, p = y_true.ravel() > 0.5, y_pred.ravel() >= threshold
        m = np.array([[(~t & ~p).sum(), (~t & p).sum()], [(t & ~p).sum(), (t & p).sum()]])
        rows, cols, title = ["negative", "positive"], ["negative", "positive"], f"Confusion matrix at {threshold:g}"
        ylabel, xlabel = "true", "predicted"
    fig = Figure(figsize=(max(3.8, 0.45 * len(cols) + 2.2), max(3.4, 0.35 * len(rows) + 1.6)))
    ax = fig.add_subplot()
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    if m.size <= 400:
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=9,
                    color="white" if norm[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(cols)), cols, rotation=60 if len(cols) > 6 else 0)
    ax.set_yticks(range(len(rows)), rows)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    return to_png(fig)


def training_curves(histories: Dict[int, pd.DataFrame]) -> bytes:
    """Loss, metric and learning rate per epoch for every fold.

    histories : {fold: history.csv table} with ``epoch``, ``loss``, ``val_loss``,
    a metric pair such as ``auc`` / ``val_auc``, and ``learning_rate``.
    Solid lines: validation; dashed: training.
    """
    metric = _history_metric(histories)
    panels = [("loss", "loss"), (metric, metric or "metric"), ("learning_rate", "learning rate")]
    fig = Figure(figsize=(12, 3.4))
    axes = fig.subplots(1, 3)
    colors = ["#2c6fbb", "#c0392b", "#27ae60", "#8e44ad", "#e67e22", "#16a085", "#7f8c8d", "#d35400"]
    for (col, label), ax in zip(panels, axes):
        for n, (fold, h) in enumerate(sorted(histories.items())):
            color = colors[n % len(colors)]
            x = h["epoch"] if "epoch" in h else np.arange(1, len(h) + 1)
            if col and f"val_{col}" in h:
                ax.plot(x, h[f"val_{col}"], color=color, lw=1.8, label=f"fold {fold}")
            if col and col in h:
                paired = f"val_{col}" in h  # dashed training line beside a solid validation line
                ax.plot(x, h[col], color=color, lw=1 if paired else 1.8, ls="--" if paired else "-",
                        label=None if paired else f"fold {fold}")
        ax.set(title=label, xlabel="epoch")
        if col == "learning_rate" and ax.get_ylim()[0] > 0 and ax.get_ylim()[1] / ax.get_ylim()[0] > 10:
            ax.set_yscale("log")  # only for schedules spanning decades; a flat rate reads better linear
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        axes[0].legend(fontsize=8, title="solid: validation, dashed: training", title_fontsize=7)
    fig.tight_layout()
    return to_png(fig)


def _history_metric(histories) -> Optional[str]:
    for h in histories.values():
        for col in h.columns:
            if col.startswith("val_") and col != "val_loss":
                return col[4:]
    return None


def feature_gallery(examples: List[Tuple[str, str, np.ndarray]], feature: str) -> bytes:
    """Example features: one panel per (clip id, label text, array).

    feature ``mel``: [frames, mels] image (time on x); ``complexity``: the 4
    series [frames, 4] (H, C_SQ, C_JSD, C_TV); anything else: 1-D line.
    """
    n = len(examples)
    cols = min(4, max(n, 1))
    rows = max(1, -(-n // cols))
    fig = Figure(figsize=(3.4 * cols, 2.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    names = ["H", "C_SQ", "C_JSD", "C_TV"]
    for ax, (clip_id, label, x) in zip(axes, examples):
        x = np.asarray(x)
        if feature == "mel" and x.ndim == 2:
            ax.imshow(x.T, origin="lower", aspect="auto", cmap="magma")
            ax.set(xlabel="frame", ylabel="mel band")
        elif x.ndim == 2:
            for c in range(x.shape[1]):
                ax.plot(x[:, c], lw=1, label=names[c] if x.shape[1] == 4 else f"ch {c}")
            ax.set(xlabel="frame")
            if ax is axes[0]:
                ax.legend(fontsize=7, ncol=2)
        else:
            ax.plot(np.ravel(x), lw=0.6)
            ax.set(xlabel="sample")
        color = POSITIVE if label.startswith("positive") else NEGATIVE if label.startswith("negative") else "black"
        ax.set_title(f"{label}\n{clip_id}", fontsize=9, color=color)
    for ax in axes[n:]:
        ax.axis("off")
    fig.tight_layout()
    return to_png(fig)


def correlation_heatmap(corr: pd.DataFrame, *, title: str = "Spearman correlation of OOF predictions") -> bytes:
    """Square correlation table (experiments x experiments) as an annotated heat-map."""
    k = len(corr)
    fig = Figure(figsize=(max(4.0, 0.6 * k + 2.5), max(3.4, 0.5 * k + 2.0)))
    ax = fig.add_subplot()
    im = ax.imshow(corr.to_numpy(float), cmap="viridis", vmin=min(0.0, float(np.nanmin(corr.to_numpy()))), vmax=1)
    if k <= 15:
        for (i, j), v in np.ndenumerate(corr.to_numpy(float)):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v < 0.7 else "black")
    labels = [str(c) for c in corr.columns]
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return to_png(fig)


def score_bars(scores: Dict[str, float], metric: str, *, blend: Optional[Tuple[str, float]] = None) -> bytes:
    """Bar chart of each experiment's OOF score, with the blend (label, score) as a highlighted bar."""
    items = [(k, v) for k, v in scores.items() if v is not None and np.isfinite(v)]
    names = [k for k, _ in items] + ([blend[0]] if blend else [])
    values = [v for _, v in items] + ([blend[1]] if blend else [])
    colors = [NEGATIVE] * len(items) + ([BLEND] if blend else [])
    fig = Figure(figsize=(max(4.5, 0.7 * len(names) + 2), 3.6))
    ax = fig.add_subplot()
    x = np.arange(len(names))
    ax.bar(x, values, color=colors)
    for xi, v in zip(x, values):
        ax.text(xi, v, f"{v:.4f}", ha="center", va="bottom", fontsize=8)
    if values:
        lo, hi = min(values), max(values)
        pad = max(0.02, (hi - lo) * 0.5)
        ax.set_ylim(max(0.0, lo - pad) if metric != "log_loss" else 0.0, hi + pad)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set(ylabel=f"OOF {metric}", title=f"OOF {metric} ({'higher' if metric != 'log_loss' else 'lower'} is better)")
    ax.grid(axis="y", alpha=0.3)
    return to_png(fig)
