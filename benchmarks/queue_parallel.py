"""Queue benchmark: the same queue with ``--jobs 1`` (folds one after another in the runner) and ``--jobs auto``
(folds side by side in child processes), back to back on this machine.

Usage, from the repository root (``-m`` so that ``pipeline`` is importable)::

    python -m benchmarks.queue_parallel [--queue experiments.yaml] [--repeat 1] [--keep] [--unpinned]

Each run is ``python run_queue.py <queue> --jobs <1|auto>`` as a subprocess,
into its own fresh temporary output folder (the queue is rewritten with its
experiments fully resolved, so relative data paths still point where the
original file says, and ``output:`` set to that folder). With ``--repeat 2``
the runs are interleaved (1, auto, 1, auto), so a drift of the machine's
speed touches both modes alike.

Printed per run: wall time, CPU time (user + system of the runner and every
process it waited for: ``resource.getrusage(RUSAGE_CHILDREN)`` of this
process around the run), CPU utilisation (CPU time / wall time, 200 % = two
busy cores) and the ratio of the fastest ``auto`` run to the fastest ``1`` run.
Then whether ``output/oof.csv``, the summary's scores and every submission
(each experiment's and the blend's) are byte for byte the same in all runs.
Exit status 1 when they differ.

``--unpinned`` adds a third mode to each round, ``auto-unpinned``: ``--jobs
auto`` with the local executor's CPU job slots not pinned to cores of their
own (``pipeline.executors.local.core_slots`` replaced by one that splits
nothing, in the runner), to measure what pinning gives; its outputs are
compared too.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import pandas as pd
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("1", "auto")
# The runner with the CPU job slots' pinning switched off (the slots are made in the runner's executor); run from
# the repository root, where `python -c` finds the pipeline package.
UNPINNED = ("import sys; import pipeline.executors.local as local; "
            "local.core_slots = lambda cores, jobs: []; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))")


def resolved_queue(source: str, output: str) -> str:
    """The queue file ``source`` as YAML text with every experiment resolved (absolute paths), its blend and
    execution sections, and ``output``."""
    from pipeline.config import load_queue

    queue = load_queue(source)
    blend = {"method": queue.blend.method.to_dict(), "metric": queue.blend.metric}
    if queue.blend.include is not None:
        blend["include"] = list(queue.blend.include)
    execution = dataclasses.asdict(queue.execution)  # its jobs are overridden by --jobs
    return yaml.safe_dump({"experiments": [exp.to_dict() for exp in queue.experiments], "blend": blend,
                           "execution": execution, "output": output}, sort_keys=False)


def timed_run(command: list, folder: str, cwd: str) -> dict:
    """Run ``command`` (its output to ``folder``/run.txt); its exit code, wall time and CPU time (user + system of
    it and every process it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with open(os.path.join(folder, "run.txt"), "w") as log:
        code = subprocess.run(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"code": code, "wall": wall, "cpu": cpu, "log": log.name}


def run_once(source: str, mode: str, folder: str) -> dict:
    """Run the queue once with ``--jobs mode`` into ``folder``/output; returns its times and output folder."""
    output = os.path.join(folder, "output")
    path = os.path.join(folder, "queue.yaml")
    with open(path, "w") as f:
        f.write(resolved_queue(source, output))
    if mode == "auto-unpinned":  # the queue file holds absolute paths: the working folder does not matter
        run = timed_run([sys.executable, "-c", UNPINNED, path, "--jobs", "auto"], folder, ROOT)
    else:
        run = timed_run([sys.executable, os.path.join(ROOT, "run_queue.py"), path, "--jobs", mode], folder, folder)
    return {"mode": mode, "output": output, **run}


def compared_files(output: str) -> list:
    """The files whose bytes must not depend on scheduling: output/oof.csv and every submission."""
    found = ["oof.csv"]
    for dirpath, _, files in os.walk(output):
        if "submission.csv" in files:
            found.append(os.path.relpath(os.path.join(dirpath, "submission.csv"), output))
    return sorted(found)


def summary_scores(output: str) -> pd.DataFrame:
    """The summary without its timing columns (the scores, epochs and states)."""
    summary = pd.read_csv(os.path.join(output, "summary.csv"), float_precision="round_trip")
    timings = ["wall_seconds", "fold_seconds"]
    return summary.drop(columns=timings, errors="ignore").sort_values("experiment").reset_index(drop=True)


def differences(runs: list) -> list:
    """What differs between the first run's outputs and each other run's (empty: identical)."""
    first = runs[0]["output"]
    problems = []
    files = compared_files(first)
    for run in runs[1:]:
        other = run["output"]
        if compared_files(other) != files:
            problems.append(f"{other}: other files: {compared_files(other)} vs {files}")
        for name in files:
            a, b = os.path.join(first, name), os.path.join(other, name)
            if not os.path.isfile(b) or open(a, "rb").read() != open(b, "rb").read():
                problems.append(f"{name} differs between {first} and {other}")
        if not summary_scores(first).equals(summary_scores(other)):
            problems.append(f"summary scores differ between {first} and {other}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue", default=os.path.join(ROOT, "experiments.yaml"),
                        help="queue file (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per mode, interleaved (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary output folders")
    parser.add_argument("--unpinned", action="store_true",
                        help="also run --jobs auto with the jobs not pinned to their own cores, each round")
    args = parser.parse_args(argv)
    modes = MODES + ("auto-unpinned",) * args.unpinned
    base = tempfile.mkdtemp(prefix="queue-parallel-")
    cores = len(os.sched_getaffinity(0))
    runs = []
    try:
        for i in range(args.repeat):
            for mode in modes:
                folder = os.path.join(base, f"jobs-{mode}-{i + 1}")
                os.makedirs(folder)
                run = run_once(os.path.abspath(args.queue), mode, folder)
                runs.append(run)
                print(f"--jobs {mode:>4} run {i + 1}: wall {run['wall']:7.1f} s, CPU {run['cpu']:7.1f} s "
                      f"(user + sys), utilisation {100 * run['cpu'] / run['wall']:5.1f} % of {100 * cores} %, "
                      f"exit {run['code']}", flush=True)
        best = {mode: min(r["wall"] for r in runs if r["mode"] == mode) for mode in modes}
        print(f"fastest: --jobs 1 {best['1']:.1f} s, --jobs auto {best['auto']:.1f} s; "
              f"ratio auto / 1 = {best['auto'] / best['1']:.2f}")
        if args.unpinned:
            print(f"fastest unpinned --jobs auto {best['auto-unpinned']:.1f} s; "
                  f"ratio auto / auto-unpinned = {best['auto'] / best['auto-unpinned']:.2f}")
        problems = differences(runs)
        print("outputs identical (output/oof.csv, summary scores, every submission): "
              + ("yes" if not problems else "NO\n  " + "\n  ".join(problems)))
        failed = [r["log"] for r in runs if r["code"] != 0]
        if failed:
            print(f"runs that did not exit 0 (see their logs): {', '.join(failed)}")
        return 1 if problems or failed else 0
    finally:
        if args.keep:
            print(f"outputs kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
