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

import logging
import os
import subprocess
import time
from typing import Optional

from pipeline import io, layout
from pipeline.report.browser import find_chromium, render_in_browser
from pipeline.report.sections import PageBuilder

log = logging.getLogger(__name__)


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
    builder = PageBuilder(output_dir)
    page = builder.page(title or f"Queue report: {output_dir}")
    path = layout.queue_file(output_dir, layout.REPORT)
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
                shot = layout.queue_file(output_dir, layout.SCREENSHOT)
                check = render_in_browser(path, screenshot=shot, chromium=chromium)
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
