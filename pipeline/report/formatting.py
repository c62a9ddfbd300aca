"""Text for the report page: escaping, numbers, durations and the scores table (strings in, HTML out)."""

from __future__ import annotations

import html

import numpy as np


def esc(value) -> str:
    """Text for HTML: ``html.escape`` of ``str(value)`` (quotes too, so it is safe in attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def num(value, fmt: str = "{:.4f}") -> str:
    """A number as escaped text in ``fmt``; empty for a missing, non-numeric or non-finite value."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return ""
    return "" if not np.isfinite(value) else esc(fmt.format(value))


def mean_std(mean, std) -> str:
    """``mean ± std`` as HTML (a missing std reads 0); empty without a mean."""
    m = num(mean)
    return f"{m} &plusmn; {num(std) or '0'}" if m else ""


def format_duration(seconds) -> str:
    """Seconds as ``1h02m03s`` / ``2m03s`` / ``3s``; empty for a missing or non-finite value."""
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        return ""
    if not np.isfinite(seconds):
        return ""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def scores_table(scores: dict) -> str:
    # Scalar scores only (per-class tables such as the rfcx per-species AP stay in scores.json).
    oof = {k: v for k, v in (scores.get("oof") or {}).items() if not isinstance(v, (dict, list))}
    head = "".join(f"<th>{esc(k)}</th>" for k in oof)
    cells = "".join(f"<td>{num(v)}</td>" for v in oof.values())
    rows = [f"<tr><td>OOF ({esc(scores.get('n_oof'))} clips)</td>{cells}</tr>"]
    for fold, s in (scores.get("folds") or {}).items():
        rows.append(f"<tr><td>fold {esc(fold)}</td>" + "".join(f"<td>{num(s.get(k))}</td>" for k in oof) + "</tr>")
    return (f"<p>Task {esc(scores.get('task'))}, targets {esc(', '.join(map(str, scores.get('targets', []))))}; "
            f"fold AUC {mean_std(scores.get('fold_mean'), scores.get('fold_std'))}.</p>"
            f"<table class=\"small scores\"><thead><tr><th></th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
