"""The report page's frame: HTML, style sheet and scripts, kept as files in ``pipeline/report/static/``.

The files ship inside the package and are read with :mod:`importlib.resources`,
so they are found from a clone, from ``python run_queue.py`` in any working
folder and from an installed package alike. They are inlined into the page
(without their final newline), which keeps ``report.html`` one self-contained
file:

``page.html``
    the frame, with the fields ``{title}``, ``{css}``, ``{head_script}``,
    ``{body}`` and ``{check_script}`` (filled by :meth:`str.format`).
``report.css``
    the style sheet.
``error_count.js``
    runs first, in ``<head>``: counts the JavaScript errors anywhere in the page.
``render_check.js``
    runs on ``load``: writes how many images decoded and how many JavaScript
    errors happened into ``#render-check`` (read by
    :func:`pipeline.report.browser.render_in_browser` and the tests).
"""

from __future__ import annotations

from importlib import resources

STATIC = "static"


def asset(name: str) -> str:
    """The text of ``pipeline/report/static/<name>`` without its final newline."""
    text = resources.files(__package__).joinpath(STATIC).joinpath(name).read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text


def page(title: str, body: str) -> str:
    """The whole HTML page around ``body``; ``title`` and ``body`` must already be escaped HTML."""
    return asset("page.html").format(title=title, css=asset("report.css"), head_script=asset("error_count.js"),
                                     body=body, check_script=asset("render_check.js")) + "\n"
