"""The HTML report, built from hand-made output folders (no training) and opened in headless Chromium."""

import json
import logging
import re
import textwrap

import numpy as np
import pandas as pd
import pytest

from pipeline.report import browser, build, sections, template
from pipeline.cli import main
from pipeline.config import dump_experiment, load_queue

# End to end: builds feature caches with TensorFlow and opens the page in Chromium (tens of seconds).
pytestmark = pytest.mark.slow

EVIL_ERROR = 'ValueError: bad <script>alert("x")</script> & value'
EVIL_REASON = '<b>truncated</b> & "odd"'

QUEUE = """
defaults:
  data: {name: synthetic_whale, n_train: 48, n_test: 6}
  model: inceptiontime
  folds: {n_splits: 3}
experiments:
  - name: mel_model
    features: {name: mel, n_mels: 16}
  - name: complexity_model
    features: complexity
  - name: broken
    features: complexity
    model: {name: inceptiontime, depth: 2}
blend: {method: stacking, metric: auc}
"""

FRAMES = 20


def _write_cache(output, exp, ids, test_ids, y, rng):
    """A tiny feature cache for ``exp`` in the documented layout: one TFRecord shard per split of
    ``tf.train.Example(id: bytes, x: raw float32)`` plus ``manifest.json``."""
    import tensorflow as tf

    from pipeline import layout
    from pipeline.cache.build import cache_key, cache_settings

    specs = (exp.data, exp.audio, exp.features, exp.predict)
    key = cache_key(*specs, "hand-made")
    folder = output / "cache" / "features" / key
    folder.mkdir(parents=True, exist_ok=True)
    width = 16 if exp.features.name == "mel" else 4
    splits = {}
    for split, split_ids in (("train", ids), ("test", test_ids)):
        shard = f"{split}-00000-of-00001.tfrecord"
        with tf.io.TFRecordWriter(str(folder / shard)) as writer:
            for n, clip_id in enumerate(split_ids):
                x = rng.normal(size=(FRAMES, width)).astype(np.float32)
                if split == "train" and y[n]:
                    x[8:12] += 3.0  # an "upcall"
                feature = {"id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[clip_id.encode()])),
                           "x": tf.train.Feature(bytes_list=tf.train.BytesList(value=[x.tobytes()]))}
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
        splits[split] = {"count": len(split_ids), "shards": [shard], "ids": list(split_ids)}
    manifest = {"complete": True, "key": key, "settings": cache_settings(*specs), "feature": exp.features.name,
                "shape": [FRAMES, width], "dtype": "float32", "total_files": len(ids) + len(test_ids) + 1,
                "splits": splits, "repaired": [],
                "skipped": [{"id": "bad.aiff", "split": "train", "path": "/data/bad.aiff", "reason": EVIL_REASON}]}
    (folder / layout.CACHE_MANIFEST).write_text(json.dumps(manifest))


def make_output(folder, rng, *, caches=True):
    """A queue file and its output folder as a finished run leaves it: two done experiments, one failed."""
    path = folder / "queue.yaml"
    path.write_text(textwrap.dedent(QUEUE))
    queue = load_queue(str(path))
    output = folder / "output"
    n, n_test = 48, 6
    ids = [f"train{i:03d}.aiff" for i in range(n)]
    test_ids = [f"test{i}.aiff" for i in range(n_test)]
    y = (np.arange(n) % 3 == 0).astype(float)
    folds = (np.arange(n) // 3) % 3  # every fold holds both classes
    for exp, signal in zip(queue.experiments, (1.2, 0.6, None)):
        d = output / exp.name
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(dump_experiment(exp))
        for k in range(3 if signal else 1):
            (d / f"fold{k}").mkdir()
            epochs = np.arange(1, 6)
            pd.DataFrame({"epoch": epochs, "auc": 0.6 + 0.05 * epochs, "loss": 0.7 - 0.05 * epochs,
                          "val_auc": 0.55 + 0.04 * epochs + 0.01 * k, "val_loss": 0.72 - 0.04 * epochs,
                          "learning_rate": 0.003 * 0.5 ** (epochs // 3), "seconds": 1.5}).to_csv(
                d / f"fold{k}" / "history.csv", index=False)
            if signal:
                (d / f"fold{k}" / "done.json").write_text(json.dumps({"fold": k, "epochs": 5, "seconds": 12.0 + k}))
        if signal is None:
            (d / "status.json").write_text(json.dumps({
                "state": "failed", "stage": "train", "config_hash": exp.config_hash(), "error": EVIL_ERROR,
                "traceback": "Traceback (most recent call last):\n  File <x>\n" + EVIL_ERROR}))
            continue
        pred = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(size=n))))
        pd.DataFrame({"id": ids, "fold": folds, "label": y, "pred": pred}).to_csv(d / "oof.csv", index=False)
        pd.DataFrame({"id": test_ids, "pred": rng.random(n_test)}).to_csv(d / "test.csv", index=False)
        from pipeline.metrics import binary_scores

        per_fold = {str(k): binary_scores(y[folds == k], pred[folds == k]) for k in range(3)}
        fold_auc = [s["auc"] for s in per_fold.values()]
        scores = {"metric": "auc", "oof": binary_scores(y, pred), "folds": per_fold,
                  "fold_mean": float(np.mean(fold_auc)), "fold_std": float(np.std(fold_auc)), "n_oof": n,
                  "task": "binary", "targets": ["label"], "submission": "whale"}
        (d / "scores.json").write_text(json.dumps(scores))
        (d / "status.json").write_text(json.dumps({"state": "done", "stage": "done", "config_hash": exp.config_hash(),
                                                   "wall_seconds": 150.0 if signal > 1 else 75.0}))
        if caches:
            _write_cache(output, exp, ids, test_ids, y, rng)
    return str(path)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The report of a hand-made output folder, generated the way users do: ``run_queue.py ... --blend-only``."""
    folder = tmp_path_factory.mktemp("report")
    path = make_output(folder, np.random.default_rng(7))
    code = main([path, "--blend-only"])
    return folder / "output", code


def test_report_contents(built):
    output, code = built
    assert code == 0
    page = (output / "report.html").read_text()
    assert '<table id="leaderboard">' in page
    # Leaderboard: sorted by OOF AUC, the blend row, the failure with its (escaped) reason.
    board = page[page.index('<table id="leaderboard">'):page.index("</table>")]
    assert board.index("mel_model") < board.index("complexity_model") < board.index("broken")
    assert "blend: stacking" in board
    assert "held-out folds" in page
    assert "<th>fold time</th>" in board and "<td>13s</td>" in board  # mean done.json seconds of mel_model's folds
    # Escaping: user-controlled text never becomes markup.
    assert "<script>alert(" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&lt;b&gt;truncated&lt;/b&gt; &amp; &quot;odd&quot;" in page and "/data/bad.aiff" in page
    # Self-contained: every image is embedded, nothing is fetched.
    images = re.findall(r'<img src="([^"]*)"', page)
    assert len(images) == 11  # 2 x (roc, confusion, training, examples) + failed's training + scores + correlation
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="(https?:)?//', page)
    # Resolved config of each experiment.
    assert page.count("resolved config (config.yaml)") == 3 and "n_mels: 16" in page
    # The figures are PNG files too.
    for name in ("roc", "confusion", "training", "examples"):
        assert (output / "mel_model" / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (output / "report" / "correlation.png").is_file() and (output / "report" / "scores.png").is_file()


def test_summary_csv_and_printed_leaderboard(built, tmp_path, capsys):
    output, _ = built
    summary = pd.read_csv(output / "summary.csv")
    assert list(summary["experiment"]) == ["mel_model", "complexity_model", "broken"]
    assert list(summary["status"]) == ["done", "done", "failed"]
    assert summary.loc[0, "epochs"] == 5 and summary.loc[0, "wall_seconds"] == 150
    assert summary.loc[0, "fold_seconds"] == 13  # the mean of the folds' done.json seconds
    path = make_output(tmp_path, np.random.default_rng(7), caches=False)
    assert main([path, "--blend-only"]) == 0
    printed = capsys.readouterr().out
    table = printed[printed.index("experiment"):]
    for text in ("OOF auc", "fold AUC mean +- std", "mel_model", "13s", "2m30s", "failed", "blend (stacking of 2)",
                 "best single mel_model", "FAILED broken: ValueError"):
        assert text in table, text


def test_report_renders_in_chromium(built, tmp_path):
    chromium = browser.find_chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (CI installs it: apt-get install chromium)")
    output, _ = built
    shot = tmp_path / "shot.png"
    check = browser.render_in_browser(str(output / "report.html"), screenshot=str(shot), chromium=chromium)
    assert 'data-state="loaded"' in check.dom, check.dom[-2000:]
    assert '<table id="leaderboard">' in check.dom and "mel_model" in check.dom
    assert check.images_ok == 11 and check.images_bad == 0
    assert check.js_errors == 0 and check.console_errors == []
    assert check.ok, check.problems
    assert shot.is_file() and shot.stat().st_size > 20_000
    from matplotlib.image import imread

    pixels = imread(str(shot))
    assert pixels.shape[0] > 500 and pixels.shape[1] > 800
    assert pixels[..., :3].std() > 0.05  # not a blank page
    # The queue run saved its own screenshot under output/.
    assert (output / "report.png").is_file()


def test_report_failure_is_logged_not_raised(built, monkeypatch, caplog):
    output, _ = built

    def broken(self, title):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(sections.PageBuilder, "page", broken)
    with caplog.at_level(logging.ERROR):
        assert build.write_report_safely(str(output), screenshot=False) is None
    assert "report: failed: RuntimeError: disk on fire" in caplog.text


def test_queue_survives_a_broken_report(tmp_path, monkeypatch, caplog):
    path = make_output(tmp_path, np.random.default_rng(3), caches=False)
    monkeypatch.setattr(sections.PageBuilder, "page", lambda self, title: 1 / 0)
    assert main([path, "--blend-only"]) == 0
    assert "report: failed: ZeroDivisionError" in (tmp_path / "output" / "queue.log").read_text()
    assert (tmp_path / "output" / "blend" / "scores.json").is_file()


def test_a_bad_file_costs_one_figure_not_the_report(tmp_path):
    path = make_output(tmp_path, np.random.default_rng(4), caches=False)
    output = tmp_path / "output"
    assert main([path, "--blend-only"]) == 0
    # Corrupt one experiment's OOF after the blend: its figures fail, the rest of the report stays.
    (output / "mel_model" / "oof.csv").write_text("id,fold,label,pred\na,0,1,not-a-number\n")
    build.write_report(str(output), screenshot=False)
    page = (output / "report.html").read_text()
    assert "could not be drawn" in page or "could not be built" in page
    assert '<table id="leaderboard">' in page and "complexity_model" in page
    assert page.count("<img ") >= 4


def test_browser_check_detects_broken_pages(tmp_path):
    """The checker itself: a JavaScript error and an undecodable image must be reported."""
    chromium = browser.find_chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (CI installs it: apt-get install chromium)")
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><head><script>" + template.asset("error_count.js") + "</script></head><body>"
        '<img src="data:image/png;base64,bm90IGEgcG5n" alt="not a png"><script>undefinedFunction();</script>'
        '<div id="render-check" data-state="pending" hidden></div><script>' + template.asset("render_check.js")
        + "</script></body></html>")
    check = browser.render_in_browser(str(page), chromium=chromium)
    assert check.images_bad == 1 and check.js_errors == 1
    assert any("undefinedFunction" in line for line in check.console_errors)
    assert not check.ok


def _section(page, name):
    start = page.index(f'id="exp-{name}"')
    end = page.find('<section class="experiment"', start)
    return page[start:end if end > 0 else len(page)]


def test_a_stale_experiment_is_not_shown_as_done_with_scores(tmp_path):
    path = make_output(tmp_path, np.random.default_rng(5), caches=False)
    output = tmp_path / "output"
    assert main([path, "--blend-only"]) == 0
    assert "OOF (" in _section((output / "report.html").read_text(), "mel_model")
    status_path = output / "mel_model" / "status.json"
    status = json.loads(status_path.read_text())
    status_path.write_text(json.dumps(dict(status, config_hash="an older config")))
    assert main([path, "--blend-only"]) == 0
    section = _section((output / "report.html").read_text(), "mel_model")
    assert 'class="status stale"' in section and 'class="status done"' not in section
    assert "OOF (" not in section  # no scores presented as results


def test_damaged_queue_level_files_cost_their_part_not_the_report(tmp_path):
    path = make_output(tmp_path, np.random.default_rng(6), caches=False)
    output = tmp_path / "output"
    assert main([path, "--blend-only"]) == 0
    (output / "summary.csv").write_text("garbage\n\"unclosed\n")
    (output / "oof.csv").write_bytes(b"\xff\xfe\x00garbage")
    (output / "mel_model" / "status.json").write_text("[1, 2]")
    (output / "blend" / "scores.json").write_text('"x"')
    build.write_report(str(output), screenshot=False)
    page = (output / "report.html").read_text()
    assert "complexity_model" in page and "mel_model" in page


def test_the_gallery_reads_the_experiments_training_cache_not_a_predict_runs():
    """A --predict run's cache of new audio carries the experiment's own settings but no training clip; listed
    first, it broke the gallery ('no labelled training clip found in the cache') in every later report."""
    from pipeline.report.files import cache_for

    config = {"data": {"name": "synthetic_whale", "root": "/d"}, "features": {"name": "mel", "n_mels": 32},
              "audio": {"sample_rate": 2000, "duration": 2.0, "max_bad_fraction": 0.2}}
    settings = {"data": config["data"], "features": config["features"],
                "audio": {"sample_rate": 2000, "duration": 2.0}}

    def manifest(n_train):
        return {"complete": True, "settings": settings,
                "splits": {"train": {"count": n_train}, "test": {"count": 3}}}

    found = [("cache/predict", manifest(0)), ("cache/train", manifest(60))]
    assert cache_for(config, found)[0] == "cache/train"
    assert cache_for(config, found[:1]) is None
