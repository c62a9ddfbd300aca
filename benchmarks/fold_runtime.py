"""Fold runtime benchmark: one experiment's folds as shipped and with one runtime fix undone, back to back.

Usage, from the repository root (``-m`` so that ``pipeline`` is importable)::

    python -m benchmarks.fold_runtime [--change reseed|autotune] [--experiment vit_mel] [--epochs 4] [--rounds 2]

The fixes (``--change``):

- ``autotune`` (stop 27): a fold drops tf.data iterators all the time (each
  epoch's training batches and validation, every prediction). With autotuning
  on, each iterator's destructor waits for its tuning thread's timer while the
  process idles (``pipeline.memory.without_autotune``); undone: that function
  replaced by the identity.
- ``reseed`` (stop 28): ``tf.random.set_seed`` empties TensorFlow's kernel
  cache; called every epoch, it made TensorFlow instantiate and optimise the
  training and validation steps again at each epoch's first batch
  (``pipeline.train.seed_epoch``); undone: that function replaced by
  ``keras.utils.set_random_seed``.

This runs the default queue's ``--experiment`` alone (its 3 folds,
``--epochs`` epochs, ``--jobs 1``) as shipped ("fixed") and with the fix
undone ("undone"), alternating the modes ``--rounds`` times, each run a
``run_queue.py`` subprocess into a fresh output folder (the synthetic data is
generated once, under a temporary folder). Printed per run: wall time, CPU
time (user + system) and CPU utilisation; then the ratio of the fastest runs
and whether ``output/oof.csv`` is byte-identical across all runs.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import sys
import tempfile

import yaml

from benchmarks.queue_parallel import ROOT, timed_run

MAIN = "from pipeline.cli import main; sys.exit(main(sys.argv[1:]))"
UNDONE = {
    "autotune": "import sys, pipeline.memory; pipeline.memory.without_autotune = lambda ds: ds; ",
    "reseed": "import sys, keras, pipeline.train; pipeline.train.seed_epoch = keras.utils.set_random_seed; ",
}
MODES = ("fixed", "undone")


def queue_text(experiment: str, epochs: int, data_root: str, output: str) -> str:
    with open(os.path.join(ROOT, "experiments.yaml")) as f:
        queue = yaml.safe_load(f)
    exp = next((e for e in queue["experiments"] if e["name"] == experiment), None)
    if exp is None:
        raise SystemExit(f"--experiment: {experiment!r} is not in experiments.yaml")
    exp.setdefault("train", {})["epochs"] = epochs
    defaults = queue["defaults"]
    defaults["data"]["root"] = data_root
    return yaml.safe_dump({"defaults": defaults, "experiments": [exp], "blend": {"method": "mean"},
                           "execution": {"jobs": 1}, "output": output}, sort_keys=False)


def run_once(mode: str, folder: str, args, data_root: str) -> dict:
    output = os.path.join(folder, "output")
    os.makedirs(folder)
    path = os.path.join(folder, "queue.yaml")
    with open(path, "w") as f:
        f.write(queue_text(args.experiment, args.epochs, data_root, output))
    code = (UNDONE[args.change] if mode == "undone" else "import sys; ") + MAIN
    run = timed_run([sys.executable, "-c", code, path], folder, ROOT)
    return {"mode": mode, "oof": os.path.join(output, "oof.csv"), **run}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--change", choices=sorted(UNDONE), default="reseed", help="the fix to undo (default reseed)")
    parser.add_argument("--experiment", default="vit_mel", help="an experiment of experiments.yaml")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per fold (default 4)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per mode, alternating (default 2)")
    args = parser.parse_args(argv)
    base = tempfile.mkdtemp(prefix="fold-runtime-bench-")
    data_root = os.path.join(base, "data")
    runs = []
    for r in range(args.rounds):
        for mode in MODES:
            run = run_once(mode, os.path.join(base, f"{mode}{r}"), args, data_root)
            runs.append(run)
            print(f"{args.change} {mode:6s}, round {r + 1}: {run['wall']:.1f} s wall, {run['cpu']:.1f} s "
                  f"CPU, {run['cpu'] / run['wall']:.0%} utilisation" + ("" if run["code"] == 0 else
                                                                         f", exit {run['code']}: {run['log']}"),
                  flush=True)
    if any(run["code"] for run in runs):
        return 1
    fastest = {mode: min(run["wall"] for run in runs if run["mode"] == mode) for mode in MODES}
    same = all(filecmp.cmp(runs[0]["oof"], run["oof"], shallow=False) for run in runs[1:])
    print(f"fastest fixed / fastest undone: {fastest['fixed']:.1f} / {fastest['undone']:.1f} s = "
          f"{fastest['fixed'] / fastest['undone']:.3f}; output/oof.csv {'identical' if same else 'DIFFERS'} in all runs "
          f"(outputs under {base})")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
