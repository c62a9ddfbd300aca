"""Executors: run fold jobs (:class:`pipeline.fold_job.FoldJob`) in this process, in local worker processes or as Ray tasks.

Every executor runs a job through :func:`pipeline.executors.base.run_in_worker`,
so a fold's files do not depend on where or in which order its job ran.
"""
