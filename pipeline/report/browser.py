"""Open the report in headless Chromium: does it render, do its images decode, did any script fail?

:func:`pipeline.report.build.write_report` runs it after writing the page
(when a Chromium binary is installed) and saves a screenshot; the tests run
it to check the page as a browser sees it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import subprocess
import tempfile
from typing import List, Optional, Tuple

log = logging.getLogger(__name__)

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio")


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

    The page's own script (``static/render_check.js``) records, on ``load``,
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
