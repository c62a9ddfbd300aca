"""The morning report: ``output/report.html``, built from output files only.

Reads what the queue wrote (``summary.csv``, ``oof.csv``, ``blend/``, each
experiment's ``status.json``, ``scores.json``, ``oof.csv``,
``fold<k>/history.csv``, ``config.yaml``, and the feature caches'
``manifest.json`` and shards), never training code. Writes the figures as PNG
files (``output/<experiment>/plots/``, ``output/report/``) and one
self-contained HTML page that embeds them as base64 data URIs: it can be
mailed or copied off a cloud machine as a single file and opens without
network access.

Every piece of text from the files is escaped (``html.escape``). A figure or
section that fails is replaced by a note saying why, so one bad file never
costs the whole report; :func:`write_report_safely` additionally turns any
failure into a log line, because the report must never fail a queue.

When a Chromium binary is installed, :func:`write_report` also opens the
page headless and saves a screenshot (``output/report.png``), which checks
that it renders.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
import yaml

from pipeline import io, layout, metrics, plots
from pipeline.blend import prediction_columns

log = logging.getLogger(__name__)

REPORT = layout.REPORT
SCREENSHOT = layout.SCREENSHOT
QUEUE_PLOTS = layout.QUEUE_PLOTS  # output/report/*.png ("report" is a reserved experiment name)
EXPERIMENT_PLOTS = "plots"  # output/<experiment>/plots/*.png
MAX_SKIPPED_ROWS = 500
GALLERY_PER_GROUP = 4
GALLERY_SCAN_LIMIT = 5000  # records read from a cache at most while looking for examples
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio")


def esc(value) -> str:
    """Text for HTML: ``html.escape`` of ``str(value)`` (quotes too, so it is safe in attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


# ----------------------------------------------------------------------------- entry points


def write_report(output_dir: str, *, title: Optional[str] = None, screenshot: bool = True) -> str:
    """Build ``<output_dir>/report.html`` (and its PNG figures) from the output files.

    Parameters
    ----------
    output_dir : str
        The queue's output folder.
    title : str, optional
        Page title (default: the output folder).
    screenshot : bool
        Also render the page in headless Chromium, when installed, and save
        ``<output_dir>/report.png``; a browser failure is logged, not raised.

    Returns
    -------
    str
        The report's path.
    """
    started = time.time()
    builder = _Builder(output_dir)
    page = builder.page(title or f"Queue report: {output_dir}")
    path = os.path.join(output_dir, REPORT)
    io.write_text(path, page)
    log.info("report: %s (%d figures, %.0f KB, %.1f s)", path, builder.n_images, len(page) / 1024,
             time.time() - started)
    if screenshot and io.is_remote(path):
        log.info("report: %s is not on a local disk; no browser check or screenshot", path)
    elif screenshot:
        chromium = find_chromium()
        if chromium is None:
            log.info("report: no chromium found; no screenshot (apt-get install chromium)")
        else:
            try:
                check = render_in_browser(path, screenshot=os.path.join(output_dir, SCREENSHOT), chromium=chromium)
                if check.ok:
                    log.info("report: rendered in %s: %d images, screenshot %s", os.path.basename(chromium),
                             check.images_ok, check.screenshot)
                else:
                    log.warning("report: the browser check found problems: %s", "; ".join(check.problems))
            except (OSError, subprocess.SubprocessError) as err:
                log.warning("report: could not run %s for a screenshot: %s", chromium, err)
    return path


def write_report_safely(output_dir: str, **kwargs) -> Optional[str]:
    """:func:`write_report`, but any failure is logged and None returned (the queue must go on)."""
    try:
        return write_report(output_dir, **kwargs)
    except Exception as err:  # noqa: BLE001 - a report problem must never fail the queue
        log.error("report: failed: %s: %s", type(err).__name__, err, exc_info=True)
        return None


# ----------------------------------------------------------------------------- browser check


@dataclasses.dataclass
class BrowserCheck:
    """What headless Chromium saw: the DOM after load, console errors, image counts and the screenshot."""

    dom: str
    console_errors: List[str]
    images_ok: int
    images_bad: int
    js_errors: int
    screenshot: Optional[str]

    @property
    def problems(self) -> List[str]:
        out = []
        if 'data-state="loaded"' not in self.dom:
            out.append("the page's load check never ran")
        if self.images_bad:
            out.append(f"{self.images_bad} image(s) did not decode")
        if self.js_errors or self.console_errors:
            out.append(f"JavaScript errors: {self.console_errors or self.js_errors}")
        if self.screenshot is not None and not os.path.isfile(self.screenshot):
            out.append("no screenshot was written")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems


def find_chromium() -> Optional[str]:
    """Path of a Chromium / Chrome binary on PATH (or /usr/bin/chromium), or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def render_in_browser(html_path: str, *, screenshot: Optional[str] = None, chromium: Optional[str] = None,
                      timeout: float = 120.0, window: Tuple[int, int] = (1400, 2200)) -> BrowserCheck:
    """Open a page in headless Chromium (one run): dump the DOM after load and optionally save a PNG screenshot.

    The page's own script (see :func:`_check_script`) records, on ``load``,
    how many images decoded and how many JavaScript errors happened in
    ``#render-check``; Chromium's console log (stderr) is searched for errors
    too. Raises FileNotFoundError when no browser is found,
    subprocess.TimeoutExpired when it hangs.
    """
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium binary found (apt-get install chromium)")
    url = "file://" + os.path.abspath(html_path)
    with tempfile.TemporaryDirectory(prefix="report-chromium-") as profile:
        base = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}",
                "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000"]
        if screenshot is not None:
            os.makedirs(os.path.dirname(os.path.abspath(screenshot)), exist_ok=True)
            base.append(f"--screenshot={os.path.abspath(screenshot)}")
        dumped = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=timeout)
    if dumped.returncode != 0:
        log.warning("%s exited with %d: %s", os.path.basename(chromium), dumped.returncode, dumped.stderr[-500:])
    dom = dumped.stdout
    console = [line for line in dumped.stderr.splitlines()
               if "CONSOLE" in line and re.search(r"error|uncaught", line, re.IGNORECASE)]
    marker = re.search(r'<div id="render-check"[^>]*>', dom)
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', marker.group(0))) if marker else {}
    return BrowserCheck(dom=dom, console_errors=console, images_ok=int(attrs.get("images-ok", 0)),
                        images_bad=int(attrs.get("images-bad", 0)), js_errors=int(attrs.get("js-errors", 0)),
                        screenshot=screenshot)


# ----------------------------------------------------------------------------- reading output files


def _read_json(path: str) -> Optional[dict]:
    """A JSON object from ``path``; None when missing, unreadable or edited into something not an object."""
    try:
        value = io.read_json(path)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _read_summary(path: str) -> Optional[pd.DataFrame]:
    """summary.csv, or None (with a warning) when missing, unreadable or lacking its columns."""
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


def _read_text(path: str) -> Optional[str]:
    try:
        with io.open_file(path, "r") as f:
            return f.read()
    except OSError:
        return None


def _experiment_names(output_dir: str, summary: Optional[pd.DataFrame]) -> List[str]:
    """Leaderboard order when summary.csv exists, else every folder with a status.json."""
    if summary is not None:
        return [str(n) for n in summary["experiment"]]
    found = io.glob(os.path.join(output_dir, "*", "status.json"))
    return sorted(os.path.basename(os.path.dirname(p)) for p in found)


def _histories(exp_dir: str) -> Dict[int, pd.DataFrame]:
    out = {}
    for path in io.glob(os.path.join(exp_dir, "fold*", "history.csv")):
        match = re.fullmatch(r"fold(\d+)", os.path.basename(os.path.dirname(path)))
        if match:
            try:
                out[int(match.group(1))] = io.read_csv(path)
            except (OSError, ValueError, pd.errors.EmptyDataError):
                continue
    return out


def _caches(output_dir: str) -> List[Tuple[str, dict]]:
    out = []
    for path in sorted(io.glob(os.path.join(output_dir, layout.CACHE, "features", "*", layout.CACHE_MANIFEST))):
        manifest = _read_json(path)
        if manifest is not None:
            out.append((os.path.dirname(path), manifest))
    return out


def _plain(obj):
    """JSON round trip, so YAML- and JSON-read settings compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _cache_for(config: Optional[dict], caches: List[Tuple[str, dict]]) -> Optional[Tuple[str, dict]]:
    """The feature cache an experiment used: the one whose settings match its resolved config."""
    if not config:
        return None
    for folder, manifest in caches:
        settings = manifest.get("settings") or {}
        audio = dict(config.get("audio") or {})
        audio.pop("max_bad_fraction", None)
        if (manifest.get("complete") and _plain(settings.get("data")) == _plain(config.get("data"))
                and _plain(settings.get("features")) == _plain(config.get("features"))
                and _plain(settings.get("audio")) == _plain(audio)):
            return folder, manifest
    return None


# ----------------------------------------------------------------------------- the page


class _Builder:
    """Collects the sections of one report; every figure is written to disk and embedded."""

    def __init__(self, output_dir: str):
        self.output = output_dir
        self.n_images = 0
        self._gallery_memo: Dict[str, bytes] = {}
        summary_path = os.path.join(output_dir, layout.SUMMARY)
        self.summary = _read_summary(summary_path)
        self.blend_scores = _read_json(os.path.join(output_dir, layout.BLEND, "scores.json"))
        self.blend_weights = _read_json(os.path.join(output_dir, layout.BLEND, "weights.json"))
        self.blend_error = _read_json(os.path.join(output_dir, layout.BLEND, "error.json"))
        self.names = _experiment_names(output_dir, self.summary)
        self.caches = _caches(output_dir)

    # -- helpers

    def figure(self, make: Callable[[], bytes], path: str, caption: str) -> str:
        """Draw one figure (``make() -> PNG bytes``), save it at ``path``, return its embedded <figure>."""
        try:
            png = make()
        except Exception as err:  # noqa: BLE001 - one bad figure must not cost the report
            log.warning("report: figure %s failed: %s: %s", os.path.basename(path), type(err).__name__, err)
            return f'<p class="note">Figure {esc(caption)} could not be drawn: {esc(type(err).__name__)}: {esc(err)}</p>'
        try:
            io.makedirs(os.path.dirname(path))
            with io.atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    f.write(png)
        except OSError as err:
            log.warning("report: could not save %s: %s", path, err)
        self.n_images += 1
        data = base64.b64encode(png).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption)}">'
                f"<figcaption>{esc(caption)}</figcaption></figure>")

    def section(self, make: Callable[[], str], name: str) -> str:
        try:
            return make()
        except Exception as err:  # noqa: BLE001
            log.warning("report: section %s failed: %s: %s", name, type(err).__name__, err)
            return (f'<section><h2>{esc(name)}</h2><p class="note">This section could not be built: '
                    f"{esc(type(err).__name__)}: {esc(err)}</p></section>")

    # -- page

    def page(self, title: str) -> str:
        body = [
            f"<header><h1>{esc(title)}</h1><p class=\"meta\">Generated {esc(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}"
            f" from the files in <code>{esc(os.path.abspath(self.output))}</code>.</p></header>",
            self.section(self.leaderboard, "Leaderboard"),
            self.section(self.blend, "Blend"),
            self.section(self.failures, "Failures"),
            self.section(self.skipped, "Skipped files"),
        ]
        for name in self.names:
            body.append(self.section(lambda n=name: self.experiment(n), f"Experiment {name}"))
        body.append('<div id="render-check" data-state="pending" hidden></div>')
        return _TEMPLATE.format(title=esc(title), css=_CSS, head_script=_ERROR_SCRIPT, body="\n".join(body),
                                check_script=_CHECK_SCRIPT)

    def leaderboard(self) -> str:
        if self.summary is None:
            return "<section><h2>Leaderboard</h2><p class=\"note\">No summary.csv yet.</p></section>"
        s = self.summary
        metric_cols = [c for c in s.columns if c.startswith("oof_") and c != "oof_auc"]
        metric_col = metric_cols[0] if metric_cols else "oof_auc"
        metric = metric_col[4:]
        head = ["#", "experiment", "model", "features", f"OOF {metric}"]
        head += ["OOF auc"] if metric != "auc" else []
        head += ["fold AUC mean &plusmn; std", "epochs", "wall time", "status"]
        rows = []
        for rank, (_, r) in enumerate(s.iterrows(), start=1):
            status = str(r.get("status", ""))
            cells = [str(rank), f'<a href="#exp-{esc(r["experiment"])}">{esc(r["experiment"])}</a>',
                     esc(r.get("model", "")), esc(r.get("features", "")), _num(r.get(metric_col))]
            if metric != "auc":
                cells.append(_num(r.get("oof_auc")))
            cells += [_mean_std(r.get("fold_mean"), r.get("fold_std")), _num(r.get("epochs"), "{:.1f}"),
                      esc(format_duration(r.get("wall_seconds"))), f'<span class="status {esc(status)}">{esc(status)}</span>']
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        b = self.blend_scores
        if b and b.get("metric") == metric:
            cells = ["", f"<b>blend: {esc(b.get('method'))}</b>", "", f"{len(b.get('experiments', {}))} experiments",
                     f"<b>{_num(b.get('blend'))}</b>"]
            cells += [""] if metric != "auc" else []
            cells += [esc(b.get("score_kind", "")), "", "", '<span class="status blend">blend</span>']
            rows.append('<tr class="blend-row">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        table = ("<table id=\"leaderboard\"><thead><tr>" + "".join(f"<th>{h}</th>" for h in head)
                 + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
        return (f"<section><h2>Leaderboard</h2><p>Sorted by OOF {esc(metric)} "
                f"({'higher' if metrics.GREATER_IS_BETTER.get(metric, True) else 'lower'} is better). "
                f"Fold spread is the AUC of each held-out fold.</p>{table}</section>")

    def blend(self) -> str:
        parts = ["<section id=\"blend\"><h2>Blend</h2>"]
        b = self.blend_scores
        if self.blend_error:
            parts.append(f'<p class="error">The blend was refused: {esc(self.blend_error.get("error"))}</p>')
        if not b:
            if not self.blend_error:
                parts.append('<p class="note">No blend was written (no finished experiments).</p>')
            parts.append("</section>")
            return "".join(parts)
        best = b.get("best_single", {})
        gain = b.get("gain_over_best_single")
        if gain is None and isinstance(b.get("blend"), (int, float)) and isinstance(best.get("score"), (int, float)):
            gain = b["blend"] - best["score"]
        parts.append(
            f"<p class=\"headline\">Blend <b>{esc(b.get('method'))}</b>: OOF {esc(b.get('metric'))} "
            f"<b>{_num(b.get('blend'))}</b> <span class=\"note\">({esc(b.get('score_kind', 'OOF'))})</span> "
            f"&mdash; best single <b>{esc(best.get('experiment'))}</b> {_num(best.get('score'))} "
            f"(gain {_num(gain, '{:+.4f}')})</p>")
        extra = []
        if "held_out" in b:
            extra.append(f"with weights chosen on the other folds (honest estimate): {_num(b['held_out'])}")
        if "in_sample" in b:
            extra.append(f"in-sample fit of the stacker (optimistic, for comparison only): {_num(b['in_sample'])}")
        if extra:
            parts.append("<ul>" + "".join(f"<li>{esc(e)}</li>" for e in extra) + "</ul>")
        parts.append(self._weights_table())
        parts.append('<div class="figures">')
        singles = b.get("experiments") or {}
        if singles:
            parts.append(self.figure(
                lambda: plots.score_bars(singles, b.get("metric", "auc"),
                                         blend=(f"blend ({b.get('method')})", b.get("blend"))),
                os.path.join(self.output, QUEUE_PLOTS, "scores.png"), "OOF score per experiment and of the blend"))
        corr = self._oof_correlation()
        if corr is not None:
            parts.append(self.figure(lambda: plots.correlation_heatmap(corr),
                                     os.path.join(self.output, QUEUE_PLOTS, "correlation.png"),
                                     "Spearman correlation of the experiments' OOF predictions (output/oof.csv)"))
        parts.append("</div></section>")
        return "".join(parts)

    def _weights_table(self) -> str:
        w = self.blend_weights or {}
        if isinstance(w.get("weights"), dict):
            rows = "".join(f"<tr><td>{esc(k)}</td><td>{_num(v)}</td></tr>"
                           for k, v in sorted(w["weights"].items(), key=lambda kv: -kv[1]))
            return f"<table class=\"small\"><thead><tr><th>experiment</th><th>weight</th></tr></thead><tbody>{rows}</tbody></table>"
        if isinstance(w.get("classes"), list):
            names = w.get("experiments", [])
            head = "".join(f"<th>{esc(n)}</th>" for n in names)
            rows = []
            for c in w["classes"]:
                if "coefficients" in c:
                    cells = "".join(f"<td>{_num(c['coefficients'].get(n))}</td>" for n in names)
                    rows.append(f"<tr><td>{esc(c.get('class'))}</td><td>{_num(c.get('intercept'))}</td>{cells}</tr>")
                else:
                    rows.append(f"<tr><td>{esc(c.get('class'))}</td><td colspan=\"{len(names) + 1}\">"
                                f"{esc(c.get('fallback'))}</td></tr>")
            return (f"<p>Stacker: {esc(w.get('model'))} on the {esc(w.get('inputs'))}; coefficients of the model "
                    f"fit on the whole OOF (used for the test predictions).</p><table class=\"small\"><thead><tr>"
                    f"<th>class</th><th>intercept</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
        return ""

    def _oof_correlation(self) -> Optional[pd.DataFrame]:
        path = os.path.join(self.output, layout.QUEUE_OOF)
        if not io.isfile(path):
            return None
        try:
            oof = io.read_csv(path, dtype={"id": str})
        except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
            log.warning("report: %s unreadable (%s); no correlation figure", path, err)
            return None
        groups: Dict[str, List[str]] = {}
        for col in oof.columns:
            exp = col.split(":", 1)[0]
            if exp in self.names:
                groups.setdefault(exp, []).append(col)
        if len(groups) < 2:
            return None
        flat = pd.DataFrame({exp: oof[cols].to_numpy(float).ravel() for exp, cols in groups.items()})
        return flat.corr(method="spearman")

    def failures(self) -> str:
        items = []
        for name in self.names:
            status = _read_json(os.path.join(self.output, name, "status.json")) or {}
            state = status.get("state")
            if state in ("failed", "interrupted") or (state != "done" and status.get("error")):
                tb = status.get("traceback")
                items.append(
                    f"<li><a href=\"#exp-{esc(name)}\"><b>{esc(name)}</b></a> ({esc(state)}, stage "
                    f"{esc(status.get('stage'))}): <span class=\"error\">{esc(status.get('error'))}</span>"
                    + (f"<details><summary>traceback</summary><pre>{esc(tb)}</pre></details>" if tb else "")
                    + "</li>")
        body = f"<ul>{''.join(items)}</ul>" if items else "<p>None: no experiment failed.</p>"
        return f"<section id=\"failures\"><h2>Failures</h2>{body}</section>"

    def skipped(self) -> str:
        parts = ["<section id=\"skipped\"><h2>Skipped files</h2>"]
        if not self.caches:
            parts.append('<p class="note">No feature cache in this output folder.</p>')
        for folder, manifest in self.caches:
            skipped = manifest.get("skipped") or []
            repaired = manifest.get("repaired") or []
            key = os.path.basename(folder)
            parts.append(f"<h3>Cache <code>{esc(key)}</code> ({esc(manifest.get('feature'))}, "
                         f"{esc(manifest.get('total_files'))} files): {len(skipped)} skipped, {len(repaired)} repaired</h3>")
            if skipped:
                rows = "".join(
                    f"<tr><td>{esc(s.get('id'))}</td><td>{esc(s.get('split'))}</td><td><code>{esc(s.get('path'))}</code>"
                    f"</td><td>{esc(s.get('reason'))}</td></tr>" for s in skipped[:MAX_SKIPPED_ROWS])
                more = (f"<p class=\"note\">... and {len(skipped) - MAX_SKIPPED_ROWS} more (see "
                        f"<code>{esc(os.path.join(folder, 'manifest.json'))}</code>).</p>"
                        if len(skipped) > MAX_SKIPPED_ROWS else "")
                parts.append("<table class=\"small skipped\"><thead><tr><th>id</th><th>split</th><th>path</th>"
                             f"<th>reason</th></tr></thead><tbody>{rows}</tbody></table>{more}")
        parts.append("</section>")
        return "".join(parts)

    def experiment(self, name: str) -> str:
        exp_dir = os.path.join(self.output, name)
        plot_dir = os.path.join(exp_dir, EXPERIMENT_PLOTS)
        status = _read_json(os.path.join(exp_dir, "status.json")) or {}
        scores = _read_json(os.path.join(exp_dir, "scores.json"))
        config_text = _read_text(os.path.join(exp_dir, "config.yaml"))
        state, error = status.get("state", "not run"), status.get("error")
        row = self._summary_row(name)
        if row is not None:  # the summary judged it against the current config and data (stale, ...)
            state, error = row.get("status") or state, row.get("error") or None
        if state != "done":  # a stale or unfinished experiment's scores are not shown as results
            scores = None
        parts = [f"<section class=\"experiment\" id=\"exp-{esc(name)}\"><h2>{esc(name)} "
                 f"<span class=\"status {esc(state)}\">{esc(state)}</span></h2>"]
        if error:
            parts.append(f"<p class=\"error\">{esc(error)}</p>")
        if scores:
            parts.append(_scores_table(scores))
        figures = []
        oof_path = os.path.join(exp_dir, "oof.csv")
        if scores and io.isfile(oof_path):
            oof = io.read_csv(oof_path, dtype={"id": str})
            targets, task = list(scores["targets"]), scores["task"]
            y, p = oof[targets].to_numpy(float), oof[prediction_columns(oof)].to_numpy(float)
            if task == "binary":
                figures.append(self.figure(lambda: plots.roc_curve(y, p, title=f"ROC: {name}"),
                                           os.path.join(plot_dir, "roc.png"), "ROC curve of the OOF predictions"))
            else:
                figures.append(self.figure(lambda: plots.average_precision_bars(y, p, targets),
                                           os.path.join(plot_dir, "average_precision.png"),
                                           "Average precision per class (OOF)"))
            figures.append(self.figure(lambda: plots.confusion_matrix(y, p, task, targets),
                                       os.path.join(plot_dir, "confusion.png"), "Confusion matrix (OOF, threshold 0.5)"))
        histories = _histories(exp_dir)
        if histories:
            figures.append(self.figure(lambda: plots.training_curves(histories),
                                       os.path.join(plot_dir, "training.png"),
                                       "Training curves per fold: loss, metric, learning rate"))
        config = None
        if config_text:
            try:
                config = yaml.safe_load(config_text)
            except yaml.YAMLError:  # an unreadable config only costs the gallery
                config = None
        cache = _cache_for(config, self.caches)
        if cache is not None and scores and os.path.isfile(oof_path):
            figures.append(self.figure(lambda: self._gallery(cache, scores, oof_path),
                                       os.path.join(plot_dir, "examples.png"),
                                       f"Example {cache[1].get('feature')} features of training clips "
                                       f"(cache {os.path.basename(cache[0])})"))
        if figures:
            parts.append('<div class="figures">' + "".join(figures) + "</div>")
        if config_text:
            parts.append(f"<details><summary>resolved config (config.yaml)</summary><pre>{esc(config_text)}</pre></details>")
        parts.append("</section>")
        return "".join(parts)

    def _summary_row(self, name: str) -> Optional[dict]:
        """The experiment's row of summary.csv (its status as judged by the queue), None without one."""
        if self.summary is None:
            return None
        rows = self.summary[self.summary["experiment"].astype(str) == name]
        return None if rows.empty else {k: (None if pd.isna(v) else str(v)) if k in ("status", "error") else v
                                        for k, v in rows.iloc[0].items()}

    def _gallery(self, cache: Tuple[str, dict], scores: dict, oof_path: str) -> bytes:
        folder, manifest = cache
        memo_key = folder + "|" + ",".join(scores["targets"])
        if memo_key not in self._gallery_memo:
            oof = io.read_csv(oof_path, dtype={"id": str})
            examples = gallery_examples(folder, oof, scores["task"], list(scores["targets"]))
            if not examples:
                raise ValueError("no labelled training clip found in the cache")
            self._gallery_memo[memo_key] = plots.feature_gallery(examples, manifest.get("feature", ""))
        return self._gallery_memo[memo_key]


def gallery_examples(cache_folder: str, oof: pd.DataFrame, task: str, targets: List[str],
                     per_group: int = GALLERY_PER_GROUP) -> List[Tuple[str, str, np.ndarray]]:
    """A few training clips' cached features with a label text: positives first, then negatives.

    Reads the cache's training shards in order and stops as soon as every
    group is full (at most :data:`GALLERY_SCAN_LIMIT` records), so memory
    stays small on large caches. Groups: binary and multilabel ``positive``
    (any target) / ``negative``; multiclass one group per class.
    Returns [(clip id, label text, feature array)].
    """
    from pipeline.cache.read import FeatureCache

    labels = oof.set_index("id")[targets]
    if task == "multiclass":
        groups = {t: [] for t in targets}
        quota = {t: max(1, 2 * per_group // len(targets)) for t in targets}
    else:
        groups = {"positive": [], "negative": []}
        quota = {"positive": per_group, "negative": per_group}
    ds = FeatureCache(cache_folder).dataset("train")
    if ds is None:
        return []
    for n, (clip_id, x) in enumerate(ds.as_numpy_iterator()):
        if n >= GALLERY_SCAN_LIMIT or all(len(groups[g]) >= quota[g] for g in groups):
            break
        clip_id = clip_id.decode()
        if clip_id not in labels.index:
            continue
        y = labels.loc[clip_id].to_numpy(float) > 0.5
        if task == "multiclass":
            group = targets[int(y.argmax())]
            text = f"class {group}"
        else:
            group = "positive" if y.any() else "negative"
            text = group if task == "binary" or not y.any() else "positive: " + ", ".join(
                t for t, v in zip(targets, y) if v)
        if len(groups[group]) < quota[group]:
            groups[group].append((clip_id, text, x))
    return [item for g in groups.values() for item in g]


# ----------------------------------------------------------------------------- formatting


def _num(value, fmt: str = "{:.4f}") -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return ""
    return "" if not np.isfinite(value) else esc(fmt.format(value))


def _mean_std(mean, std) -> str:
    m = _num(mean)
    return f"{m} &plusmn; {_num(std) or '0'}" if m else ""


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


def _scores_table(scores: dict) -> str:
    # Scalar scores only (per-class tables such as the rfcx per-species AP stay in scores.json).
    oof = {k: v for k, v in (scores.get("oof") or {}).items() if not isinstance(v, (dict, list))}
    head = "".join(f"<th>{esc(k)}</th>" for k in oof)
    cells = "".join(f"<td>{_num(v)}</td>" for v in oof.values())
    rows = [f"<tr><td>OOF ({esc(scores.get('n_oof'))} clips)</td>{cells}</tr>"]
    for fold, s in (scores.get("folds") or {}).items():
        rows.append(f"<tr><td>fold {esc(fold)}</td>" + "".join(f"<td>{_num(s.get(k))}</td>" for k in oof) + "</tr>")
    return (f"<p>Task {esc(scores.get('task'))}, targets {esc(', '.join(map(str, scores.get('targets', []))))}; "
            f"fold AUC {_mean_std(scores.get('fold_mean'), scores.get('fold_std'))}.</p>"
            f"<table class=\"small scores\"><thead><tr><th></th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1300px;
       padding: 16px 28px 60px; color: #222; background: #fafafa; }
h1 { font-size: 1.6em; margin-bottom: 4px; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
h3 { font-size: 1.05em; margin: 18px 0 6px; }
.meta, .note { color: #666; } .error { color: #b03a2e; }
table { border-collapse: collapse; margin: 8px 0 14px; background: white; }
th, td { border: 1px solid #ddd; padding: 5px 10px; text-align: left; font-size: 0.92em; vertical-align: top; }
th { background: #f0f2f5; } tbody tr:nth-child(even) { background: #fafbfc; }
table.small td, table.small th { font-size: 0.85em; padding: 3px 8px; }
#leaderboard td:nth-child(n+5) { font-variant-numeric: tabular-nums; }
tr.blend-row { background: #fdf2e6 !important; }
.status { display: inline-block; padding: 1px 8px; border-radius: 9px; font-size: 0.8em; font-weight: 600;
          background: #ddd; color: #333; }
.status.done { background: #d4efdf; color: #1e8449; } .status.failed { background: #f5d5d1; color: #b03a2e; }
.status.running, .status.interrupted, .status.stale { background: #fcf3cf; color: #9a7d0a; }
.status.blend { background: #fae5d3; color: #ba4a00; }
.headline { font-size: 1.1em; }
.figures { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
figure { margin: 0; background: white; border: 1px solid #e3e3e3; padding: 6px; }
figure img { display: block; max-width: 100%; height: auto; }
figcaption { font-size: 0.82em; color: #555; margin-top: 4px; }
pre { background: #f4f4f4; padding: 8px; overflow-x: auto; font-size: 0.82em; }
details { margin: 8px 0; } summary { cursor: pointer; color: #2c6fbb; }
code { font-size: 0.9em; }
"""

# Installed first, so that errors anywhere in the page are counted.
_ERROR_SCRIPT = "window.reportErrors = []; window.addEventListener('error', function (e) { window.reportErrors.push(String(e.message)); });"

# On load: how many images decoded, how many JS errors happened -> #render-check attributes (read by tests).
_CHECK_SCRIPT = """window.addEventListener('load', function () {
  var ok = 0, bad = 0;
  for (var i = 0; i < document.images.length; i++) {
    var img = document.images[i];
    if (img.complete && img.naturalWidth > 0) { ok++; } else { bad++; }
  }
  var el = document.getElementById('render-check');
  el.setAttribute('data-images-ok', ok);
  el.setAttribute('data-images-bad', bad);
  el.setAttribute('data-js-errors', window.reportErrors.length);
  el.setAttribute('data-state', 'loaded');
});"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
<script>{head_script}</script>
</head>
<body>
{body}
<script>{check_script}</script>
</body>
</html>
"""
