"""Command line for the queue runner (``run_queue.py`` is a thin wrapper around :func:`main`)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import List, Optional

from pipeline.config import ConfigError, load_queue
from pipeline.errors import PipelineError

EXIT_CONFIG = 2
EXIT_FAILED = 1  # as pipeline.queue.run when an experiment failed


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="run_queue.py",
        description="Run a YAML queue of audio experiments: features -> folds -> models -> OOF/test -> blend.",
    )
    parser.add_argument("queue", help="queue file (YAML), e.g. experiments.yaml")
    parser.add_argument("--only", metavar="NAME[,NAME]", help="run only these experiments (comma-separated)")
    parser.add_argument("--force", action="store_true", help="rerun the selected experiments from scratch")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (experiments, cache hits, folds); write nothing")
    parser.add_argument("--blend-only", action="store_true", help="skip training; rebuild oof.csv, summary and blend")
    # Issue 18: trained fold models predict new audio; exported models predict without the training code.
    parser.add_argument("--predict", metavar="PATH",
                        help="predict a folder of audio (or a YAML file with a data block) with every finished "
                             "experiment and the blend; writes output/predict/<run>/. Trains nothing")
    parser.add_argument("--predict-name", metavar="RUN", help="the --predict run's folder name (default: a timestamp)")
    parser.add_argument("--export", action="store_true",
                        help="write every finished experiment's fold models as SavedModels and TFLite models to "
                             "output/export/ (predict with: python -m pipeline.exported output/export PATH --out DIR)")
    parser.add_argument("--jobs", metavar="N|auto",
                        help="fold jobs in flight at once (overrides the queue file's execution.jobs); 1: in this "
                             "process, one after another; auto: one per GPU, or one per core on CPU")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        queue = load_queue(args.queue)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    if args.jobs is not None:
        from pipeline.config import parse_jobs

        problem, jobs = parse_jobs(args.jobs)
        if problem:
            print(f"error: --jobs: {problem}", file=sys.stderr)
            return EXIT_CONFIG
        queue = dataclasses.replace(queue, execution=dataclasses.replace(queue.execution, jobs=jobs))
    only = None
    if args.only is not None:  # given: exactly these experiments, never "all" (with --force that deletes results)
        only = [n.strip() for n in args.only.split(",") if n.strip()]
        if not only:
            print(f"error: --only: no experiment names given ({args.only!r}); name one or more experiments, "
                  f"comma-separated", file=sys.stderr)
            return EXIT_CONFIG
        unknown = [n for n in only if n not in {e.name for e in queue.experiments}]
        if unknown:
            names = ", ".join(e.name for e in queue.experiments)
            print(f"error: --only: {', '.join(map(repr, unknown))} not in {args.queue}; experiments are: {names}",
                  file=sys.stderr)
            return EXIT_CONFIG
    if args.predict is not None or args.predict_name is not None or args.export:
        return _predict(args, queue, only)
    if args.blend_only and (args.force or only is not None):
        # The blend takes every finished experiment (blend.include chooses): these would be ignored in silence.
        given = " and ".join(flag for flag, on in (("--force", args.force), ("--only", only is not None)) if on)
        print(f"error: --blend-only trains nothing and blends every finished experiment (blend.include chooses); "
              f"it cannot be combined with {given}", file=sys.stderr)
        return EXIT_CONFIG
    from pipeline.data import root_problem
    from pipeline.ownership import check_output

    # The output folder against the filesystem (ownership, overlap with the data): read-only, also for --dry-run.
    problems = check_output(queue, names=only, blend_only=args.blend_only, root_problem=root_problem)
    if problems:
        print(f"error: {ConfigError(args.queue, problems)}", file=sys.stderr)
        return EXIT_CONFIG
    from pipeline.queue import run  # imports TensorFlow lazily: config errors stay fast

    try:
        return run(queue, only=only, force=args.force, dry_run=args.dry_run, blend_only=args.blend_only)
    except PipelineError as err:  # a user's mistake outside any one experiment: its message, not a traceback
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED


def _predict(args, queue, only) -> int:
    """``--predict PATH`` (pipeline.predict_new) or ``--export`` (pipeline.export): the finished experiments'
    fold models predict new audio, or are exported."""
    flag = "--export" if args.export else "--predict"
    clash = [f for f, on in (("--force", args.force), ("--dry-run", args.dry_run), ("--blend-only", args.blend_only),
                             ("--predict", args.export and args.predict is not None)) if on]
    if (args.predict is None and not args.export) or (args.export and args.predict_name is not None) or clash:
        why = (f"{flag} trains nothing and cannot be combined with {', '.join(clash)}" if clash
               else "--predict-name needs --predict PATH")
        print(f"error: {why}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.export:
            from pipeline.export import run_export

            return run_export(queue, only=only)
        from pipeline.predict_new import run_predict

        return run_predict(queue, args.predict, name=args.predict_name, only=only)
    except PipelineError as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED
