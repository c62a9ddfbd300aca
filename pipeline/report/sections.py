"""The sections of the report page, each built from output files, each figure saved as a PNG and embedded.

A section or figure that fails is replaced by a note saying why (one bad file
never costs the whole report). Every piece of text from the files is escaped
(:func:`pipeline.report.formatting.esc`).
"""

from __future__ import annotations

import base64
import logging
import os
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
import yaml

from pipeline import io, layout, metrics, plots
from pipeline.report import files, template
from pipeline.report.formatting import esc, format_duration, mean_std, num, scores_table
from pipeline.status import read_status

log = logging.getLogger(__name__)

MAX_SKIPPED_ROWS = 500
GALLERY_PER_GROUP = 4
GALLERY_SCAN_LIMIT = 5000  # records read from a cache at most while looking for examples


class PageBuilder:
    """Collects the sections of one report; every figure is written to disk and embedded."""

    def __init__(self, output_dir: str):
        self.output = output_dir
        self.n_images = 0
        self._gallery_memo: Dict[str, bytes] = {}
        self.summary = files.read_summary(output_dir)
        blend = layout.blend_dir(output_dir)
        self.blend_scores = files.read_json_object(layout.blend_file(blend, layout.SCORES))
        self.blend_weights = files.read_json_object(layout.blend_file(blend, layout.WEIGHTS))
        self.blend_error = files.read_json_object(layout.blend_file(blend, layout.BLEND_ERROR))
        self.names = files.experiment_names(output_dir, self.summary)
        self.caches = files.caches(output_dir)

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
        return template.page(esc(title), "\n".join(body))

    def leaderboard(self) -> str:
        if self.summary is None:
            return "<section><h2>Leaderboard</h2><p class=\"note\">No summary.csv yet.</p></section>"
        s = self.summary
        metric_cols = [c for c in s.columns if c.startswith("oof_") and c != "oof_auc"]
        metric_col = metric_cols[0] if metric_cols else "oof_auc"
        metric = metric_col[4:]
        head = ["#", "experiment", "model", "features", f"OOF {metric}"]
        head += ["OOF auc"] if metric != "auc" else []
        head += ["fold AUC mean &plusmn; std", "epochs", "fold time", "wall time", "status"]
        rows = []
        for rank, (_, r) in enumerate(s.iterrows(), start=1):
            status = str(r.get("status", ""))
            cells = [str(rank), f'<a href="#exp-{esc(r["experiment"])}">{esc(r["experiment"])}</a>',
                     esc(r.get("model", "")), esc(r.get("features", "")), num(r.get(metric_col))]
            if metric != "auc":
                cells.append(num(r.get("oof_auc")))
            cells += [mean_std(r.get("fold_mean"), r.get("fold_std")), num(r.get("epochs"), "{:.1f}"),
                      esc(format_duration(r.get("fold_seconds"))), esc(format_duration(r.get("wall_seconds"))), f'<span class="status {esc(status)}">{esc(status)}</span>']
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        b = self.blend_scores
        if b and b.get("metric") == metric:
            cells = ["", f"<b>blend: {esc(b.get('method'))}</b>", "", f"{len(b.get('experiments', {}))} experiments",
                     f"<b>{num(b.get('blend'))}</b>"]
            cells += [""] if metric != "auc" else []
            cells += [esc(b.get("score_kind", "")), "", "", "", '<span class="status blend">blend</span>']
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
            f"<b>{num(b.get('blend'))}</b> <span class=\"note\">({esc(b.get('score_kind', 'OOF'))})</span> "
            f"&mdash; best single <b>{esc(best.get('experiment'))}</b> {num(best.get('score'))} "
            f"(gain {num(gain, '{:+.4f}')})</p>")
        extra = []
        if "held_out" in b:
            extra.append(f"with weights chosen on the other folds (honest estimate): {num(b['held_out'])}")
        if "in_sample" in b:
            extra.append(f"in-sample fit of the stacker (optimistic, for comparison only): {num(b['in_sample'])}")
        if extra:
            parts.append("<ul>" + "".join(f"<li>{esc(e)}</li>" for e in extra) + "</ul>")
        parts.append(self._weights_table())
        parts.append('<div class="figures">')
        singles = b.get("experiments") or {}
        if singles:
            parts.append(self.figure(
                lambda: plots.score_bars(singles, b.get("metric", "auc"),
                                         blend=(f"blend ({b.get('method')})", b.get("blend"))),
                layout.queue_figure(self.output, layout.SCORES_FIGURE), "OOF score per experiment and of the blend"))
        corr = self._oof_correlation()
        if corr is not None:
            parts.append(self.figure(lambda: plots.correlation_heatmap(corr),
                                     layout.queue_figure(self.output, layout.CORRELATION_FIGURE),
                                     "Spearman correlation of the experiments' OOF predictions (output/oof.csv)"))
        parts.append("</div></section>")
        return "".join(parts)

    def _weights_table(self) -> str:
        w = self.blend_weights or {}
        if isinstance(w.get("weights"), dict):
            rows = "".join(f"<tr><td>{esc(k)}</td><td>{num(v)}</td></tr>"
                           for k, v in sorted(w["weights"].items(), key=lambda kv: -kv[1]))
            return f"<table class=\"small\"><thead><tr><th>experiment</th><th>weight</th></tr></thead><tbody>{rows}</tbody></table>"
        if isinstance(w.get("classes"), list):
            names = w.get("experiments", [])
            head = "".join(f"<th>{esc(n)}</th>" for n in names)
            rows = []
            for c in w["classes"]:
                if "coefficients" in c:
                    cells = "".join(f"<td>{num(c['coefficients'].get(n))}</td>" for n in names)
                    rows.append(f"<tr><td>{esc(c.get('class'))}</td><td>{num(c.get('intercept'))}</td>{cells}</tr>")
                else:
                    rows.append(f"<tr><td>{esc(c.get('class'))}</td><td colspan=\"{len(names) + 1}\">"
                                f"{esc(c.get('fallback'))}</td></tr>")
            return (f"<p>Stacker: {esc(w.get('model'))} on the {esc(w.get('inputs'))}; coefficients of the model "
                    f"fit on the whole OOF (used for the test predictions).</p><table class=\"small\"><thead><tr>"
                    f"<th>class</th><th>intercept</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
        return ""

    def _oof_correlation(self) -> Optional[pd.DataFrame]:
        path = layout.queue_file(self.output, layout.QUEUE_OOF)
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
            status = read_status(layout.experiment_dir(self.output, name))
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
                        f"<code>{esc(os.path.join(folder, layout.CACHE_MANIFEST))}</code>).</p>"
                        if len(skipped) > MAX_SKIPPED_ROWS else "")
                parts.append("<table class=\"small skipped\"><thead><tr><th>id</th><th>split</th><th>path</th>"
                             f"<th>reason</th></tr></thead><tbody>{rows}</tbody></table>{more}")
        parts.append("</section>")
        return "".join(parts)

    def experiment(self, name: str) -> str:
        exp_dir = layout.experiment_dir(self.output, name)
        status = read_status(exp_dir)
        scores = files.read_json_object(layout.experiment_file(exp_dir, layout.SCORES))
        config_text = files.read_text(layout.experiment_file(exp_dir, layout.CONFIG))
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
            parts.append(scores_table(scores))
        figures = []
        oof_path = layout.experiment_file(exp_dir, layout.OOF)
        if scores and io.isfile(oof_path):
            oof = io.read_csv(oof_path, dtype={"id": str})
            targets, task = list(scores["targets"]), scores["task"]
            y, p = oof[targets].to_numpy(float), oof[layout.prediction_columns_of(oof.columns)].to_numpy(float)
            if task == "binary":
                figures.append(self.figure(lambda: plots.roc_curve(y, p, title=f"ROC: {name}"),
                                           layout.experiment_figure(exp_dir, layout.ROC_FIGURE),
                                           "ROC curve of the OOF predictions"))
            else:
                figures.append(self.figure(lambda: plots.average_precision_bars(y, p, targets),
                                           layout.experiment_figure(exp_dir, layout.PRECISION_FIGURE),
                                           "Average precision per class (OOF)"))
            figures.append(self.figure(lambda: plots.confusion_matrix(y, p, task, targets),
                                       layout.experiment_figure(exp_dir, layout.CONFUSION_FIGURE),
                                       "Confusion matrix (OOF, threshold 0.5)"))
        histories = files.histories(exp_dir)
        if histories:
            figures.append(self.figure(lambda: plots.training_curves(histories),
                                       layout.experiment_figure(exp_dir, layout.TRAINING_FIGURE),
                                       "Training curves per fold: loss, metric, learning rate"))
        config = None
        if config_text:
            try:
                config = yaml.safe_load(config_text)
            except yaml.YAMLError:  # an unreadable config only costs the gallery
                config = None
        cache = files.cache_for(config, self.caches)
        if cache is not None and scores and os.path.isfile(oof_path):
            figures.append(self.figure(lambda: self._gallery(cache, scores, oof_path),
                                       layout.experiment_figure(exp_dir, layout.EXAMPLES_FIGURE),
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
