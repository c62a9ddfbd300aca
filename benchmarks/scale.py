"""Scale benchmark: one experiment end to end on competition-sized synthetic data; time per stage, peak memory.

Usage, from the repository root (``-m`` so that ``pipeline`` is importable)::

    python -m benchmarks.scale rfcx --fraction 0.1,0.28 [--epochs 2] [--memory-budget-gb G]
    python -m benchmarks.scale whale --clips 30000 [--test-clips 54503]

``rfcx``: the synthetic rfcx data in the real format (60 s FLAC at 48 kHz,
24 species, tp/fp boxes) at each ``--fraction`` of the real size (4,727
train + 1,992 test recordings), and a one-experiment queue as the real
competition would run it: log-mel n_fft 2048 / hop 512 / 128 bands, a SED
model trained on 5 s crops with the masked two-way loss, 3 folds, OOF and test
predictions by 5 s windows every 2.5 s over each whole recording.
``whale``: the synthetic right-whale data at ``--clips`` train and
``--test-clips`` test clips (2 s AIFF at 2 kHz; the real challenge has 30,000
+ 54,503) and the default queue's InceptionTime on complexity features.

The data is generated once into ``--data-dir`` (default ``/tmp/pipeline-scale/data``) and reused by later
runs; each size runs ``python run_queue.py`` on its own queue file into a fresh
``--work`` folder (the benchmark removes only folders it created itself).
Printed per size: the generation time (when it generated), then per stage
(data, features, folds, training, prediction, outputs) its wall time, what it
processed and the rate, and that stage extrapolated linearly to the full real
size; the peak resident memory of the whole process tree (sampled every
0.25 s: :mod:`benchmarks.proctree`), its share of the machine's memory, the
feature cache's size on disk and the input plan the fold loop chose (cached in
memory or streamed, with its numbers). With two or more sizes, the ratio of
the largest size's peak memory to the smallest's. ``results.json`` in the
work folder keeps every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile

from benchmarks.proctree import machine_memory, run_measured

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30
RFCX_FULL = (4727, 1992)  # train, test recordings of the Kaggle rfcx competition
WHALE_FULL = (30000, 54503)  # train, test clips of the Kaggle whale detection challenge
MARK = ".scale-benchmark"  # marks a work folder this benchmark created (and may replace)
EXPERIMENT = "scale"

RFCX_EXPERIMENT = """
  - name: scale
    data: {{name: synthetic_rfcx, root: {root}, n_train: {n_train}, n_test: {n_test}, duration: 60.0,
           sample_rate: 48000, seed: 0, unknown: negative}}
    audio: {{sample_rate: 48000, duration: 60.0}}
    features: {{name: mel, n_fft: 2048, hop_length: 512, n_mels: 128, fmin: 50.0, fmax: 24000.0}}
    folds: {{n_splits: 3, seed: 42}}
    crops: {{crop_seconds: 5.0, positive_probability: 0.75, per_recording: 1, window_seconds: 5.0,
            window_hop_seconds: {hop}, aggregate: max}}
    train: {{epochs: {epochs}, batch_size: 32, learning_rate: 0.002, monitor: val_lwlrap, seed: 0}}
    model: {{name: sed, widths: [8, 16, 32], dropout: 0.2}}
    loss: {{name: sed, clipwise_weight: 1.0, framewise_weight: 0.5}}
"""

WHALE_EXPERIMENT = """
  - name: scale
    data: {{name: synthetic_whale, root: {root}, n_train: {n_train}, n_test: {n_test}, seed: 0}}
    audio: {{sample_rate: 2000, duration: 2.0}}
    features: {{name: complexity, n_fft: 256, hop_length: 64, n_mels: 64, fmin: 30, fmax: 400, spectrum: mel}}
    folds: {{n_splits: 3, seed: 42}}
    train: {{epochs: {epochs}, batch_size: 64, learning_rate: 0.003, monitor: val_auc, seed: 0}}
    model: {{name: inceptiontime, filters: 16, depth: 6, bottleneck: 16, kernel_sizes: [4, 8, 16]}}
"""


def sizes(args) -> list:
    """[(label, n_train, n_test)] to run, smallest first."""
    if args.dataset == "rfcx":
        fractions = sorted(float(f) for f in args.fraction.split(","))
        return [(f"rfcx-{f:g}", max(4, round(RFCX_FULL[0] * f)), round(RFCX_FULL[1] * f)) for f in fractions]
    clips = sorted(int(c) for c in args.clips.split(","))
    return [(f"whale-{c}", c, args.test_clips if args.test_clips is not None else round(c * 54503 / 30000))
            for c in clips]


def fresh_folder(folder: str) -> None:
    """Make ``folder`` empty: create it, or replace it when this benchmark created it; refuse anything else."""
    if os.path.exists(folder):
        if not os.path.isfile(os.path.join(folder, MARK)):
            sys.exit(f"benchmarks.scale: {folder} exists and was not created by this benchmark; choose another "
                     "--work folder")
        shutil.rmtree(folder)
    os.makedirs(folder)
    open(os.path.join(folder, MARK), "w").close()


def generate(dataset: str, root: str, n_train: int, n_test: int, log: str):
    """Write the synthetic data (a subprocess, measured) unless it is there already; the Measured or None."""
    if dataset == "rfcx":
        from pipeline.data.synthetic_rfcx import is_generated

        params = dict(n_train=n_train, n_test=n_test, duration=60.0, sample_rate=48000, seed=0)
        call = f"from pipeline.data.synthetic_rfcx import ensure_synthetic_rfcx as f; f({root!r}, **{params!r})"
    else:
        from pipeline.data.synthetic import is_generated

        params = dict(n_train=n_train, n_test=n_test, positive_fraction=0.3, seed=0)
        call = f"from pipeline.data.synthetic import ensure_synthetic_whale as f; f({root!r}, **{params!r})"
    if is_generated(root, **params):
        return None
    measured = run_measured([sys.executable, "-c", call], log=log, cwd=ROOT)
    if measured.returncode != 0:
        sys.exit(f"benchmarks.scale: generating {root} failed; see {log}")
    return measured


def du(folder: str) -> int:
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(parent, name)).st_size
            except OSError:
                pass
    return total


def stages(output: str, n_train: int, n_test: int, full: tuple) -> list:
    """[(stage, seconds, items, unit, full-size seconds)] from the experiment's status.json and fold done.json files."""
    from pipeline import layout

    exp_dir = layout.experiment_dir(output, EXPERIMENT)
    with open(layout.experiment_file(exp_dir, layout.STATUS)) as f:
        timings = json.load(f)["timings"]
    folds = []
    for name in sorted(os.listdir(exp_dir)):
        if re.fullmatch(layout.FOLD_PREFIX + r"[0-9]+", name):
            with open(os.path.join(exp_dir, name, layout.DONE)) as f:
                folds.append(json.load(f))
    k = len(folds)
    train_s = sum(d["seconds"] for d in folds)
    predict_s = sum(d["predict_seconds"] for d in folds)
    epochs = sum(d["epochs"] * d["n_train"] for d in folds)
    predicted = sum(d["n_valid"] + d["n_test"] for d in folds)
    both, full_both = n_train + n_test, full[0] + full[1]
    full_predicted = full[0] + k * full[1]
    rows = [
        ("data", timings.get("data", 0.0), both, "listed", full_both / both),
        ("features", timings.get("features", 0.0), both, "featurised", full_both / both),
        ("folds", timings.get("folds", 0.0), n_train, "split", full[0] / n_train),
        (f"training ({k} folds)", train_s, epochs, "example-epochs", full[0] / n_train),
        (f"prediction ({k} folds)", predict_s, predicted, "predicted", full_predicted / predicted),
        ("training stage, other", timings.get("train", 0.0) - train_s - predict_s, None, "", full[0] / n_train),
        ("outputs", timings.get("outputs", 0.0), n_train + n_test, "written", full_both / both),
    ]
    return [(name, s, n, unit, s * scale) for name, s, n, unit, scale in rows]


def input_plan_line(output: str) -> str:
    """The fold loop's input plan from the experiment's log (cached in memory or streamed, with its numbers)."""
    from pipeline import layout

    with open(layout.experiment_file(layout.experiment_dir(output, EXPERIMENT), layout.RUN_LOG)) as f:
        for line in f:
            if " training " in line and "; input " in line:
                return line.split("; input ", 1)[1].split("; crops of")[0].strip()
    return "?"


def run_size(args, label: str, n_train: int, n_test: int) -> dict:
    root = os.path.join(args.data_dir, f"{args.dataset}_{n_train}_{n_test}")
    work = os.path.join(args.work, label)
    fresh_folder(work)
    gen = generate(args.dataset, root, n_train, n_test, os.path.join(work, "generate.log"))
    template = RFCX_EXPERIMENT if args.dataset == "rfcx" else WHALE_EXPERIMENT
    queue = (f"output: {os.path.join(work, 'output')}\n"
             + (f"execution: {{memory_budget_gb: {args.memory_budget_gb}}}\n" if args.memory_budget_gb else "")
             + "experiments:" + template.format(root=root, n_train=n_train, n_test=n_test, epochs=args.epochs,
                                                hop=args.window_hop_seconds))
    path = os.path.join(work, "queue.yaml")
    with open(path, "w") as f:
        f.write(queue)
    run = run_measured([sys.executable, os.path.join(ROOT, "run_queue.py"), path],
                       log=os.path.join(work, "queue.log"), cwd=work)
    if run.returncode != 0:
        sys.exit(f"benchmarks.scale: the queue failed (exit {run.returncode}); see {os.path.join(work, 'queue.log')}")
    from pipeline import layout

    output = os.path.join(work, "output")
    full = RFCX_FULL if args.dataset == "rfcx" else WHALE_FULL
    return {
        "label": label, "n_train": n_train, "n_test": n_test, "data": root,
        "generate": None if gen is None else {"seconds": gen.wall, "cpu": gen.cpu, "peak_rss": gen.peak_rss,
                                              "per_second": (n_train + n_test) / gen.wall},
        "wall": run.wall, "cpu": run.cpu, "peak_rss": run.peak_rss, "peak_processes": run.peak_processes,
        "timeline": run.timeline,
        "machine_memory": machine_memory(), "cache_bytes": du(layout.cache_root(output)),
        "stages": stages(output, n_train, n_test, full), "input": input_plan_line(output),
        "full": full,
    }


def show(r: dict) -> None:
    print(f"\n== {r['label']}: {r['n_train']} train + {r['n_test']} test ({r['data']})")
    if r["generate"]:
        g = r["generate"]
        print(f"generated in {g['seconds']:.0f} s ({g['per_second']:.2f} recordings/s, peak {g['peak_rss'] / GIB:.2f} GiB)")
    print(f"{'stage':<28}{'seconds':>10}{'items':>10}  {'rate':<24}{'full size, s':>14}")
    for name, seconds, n, unit, full in r["stages"]:
        rate = f"{n / seconds:.1f} {unit}/s" if n and seconds > 0 else ""
        print(f"{name:<28}{seconds:>10.1f}{(n if n is not None else ''):>10}  {rate:<24}{full:>14.0f}")
    total_full = sum(row[4] for row in r["stages"])
    print(f"{'queue wall time':<28}{r['wall']:>10.1f}{'':>10}  {'CPU ' + format(r['cpu'], '.0f') + ' s':<24}"
          f"{total_full:>14.0f}  (full size {r['full'][0]} + {r['full'][1]}: {total_full / 3600:.1f} h)")
    print(f"peak memory of the process tree: {r['peak_rss'] / GIB:.2f} GiB "
          f"({100 * r['peak_rss'] / r['machine_memory']:.0f} % of {r['machine_memory'] / GIB:.0f} GiB, "
          f"{r['peak_processes']} processes); feature cache {r['cache_bytes'] / GIB:.2f} GiB on disk")
    print(f"input: {r['input']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=("rfcx", "whale"))
    parser.add_argument("--fraction", default="0.1,0.28", help="rfcx: fractions of the real size, comma-separated")
    parser.add_argument("--clips", default="30000", help="whale: train clips, comma-separated sizes")
    parser.add_argument("--test-clips", type=int, default=None, help="whale: test clips (default: in the real ratio)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--window-hop-seconds", type=float, default=2.5,
                        help="rfcx: crops.window_hop_seconds of the prediction windows (5 s windows)")
    parser.add_argument("--memory-budget-gb", type=float, default=None,
                        help="execution.memory_budget_gb for the queue (default: automatic)")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "pipeline-scale", "data"))
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "pipeline-scale", "runs"))
    args = parser.parse_args(argv)
    os.makedirs(args.data_dir, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    results = []
    for label, n_train, n_test in sizes(args):
        results.append(run_size(args, label, n_train, n_test))
        show(results[-1])
    if len(results) > 1:
        small, large = results[0], results[-1]
        print(f"\npeak memory {large['label']} / {small['label']}: {large['peak_rss'] / small['peak_rss']:.2f} "
              f"({large['n_train']} / {small['n_train']} = {large['n_train'] / small['n_train']:.1f}x the data)")
    with open(os.path.join(args.work, f"results-{args.dataset}.json"), "w") as f:
        json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
