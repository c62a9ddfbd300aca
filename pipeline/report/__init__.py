"""The morning report, ``output/report.html``: one self-contained page built from the output files only.

:mod:`pipeline.report.build`
    the entry points (:func:`~pipeline.report.build.write_report`, and
    :func:`~pipeline.report.build.write_report_safely` for the queue).
:mod:`pipeline.report.sections`
    the page's sections and figures.
:mod:`pipeline.report.files`
    reading the output files, each failure costing only its part.
:mod:`pipeline.report.formatting`
    escaping and number formats.
:mod:`pipeline.report.template`
    the page frame, style sheet and scripts (files in ``static/``).
:mod:`pipeline.report.browser`
    the headless-Chromium check and screenshot.
"""
