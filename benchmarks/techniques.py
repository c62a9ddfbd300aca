"""Measured effects of EMA, SWA, test-time augmentation and pseudo-labels (issue 17), scored on OOF and on the
synthetic test sets' answer keys (which the pipeline never reads).

Usage, from the repository root (``-m`` so that ``pipeline`` is importable)::

    python -m benchmarks.techniques whale [--seeds 0,1] [--models inceptiontime,sed] [--jobs auto] [--work DIR]
    python -m benchmarks.techniques rfcx [--seeds 0] [--epochs 8] [--jobs auto] [--work DIR]

Per study, model and ``train.seed`` one queue is written and run (``run_queue.py --jobs J``) with five
experiments that differ in one setting each from the first:

- ``base``: the model as in the default queue (``experiments.yaml`` / ``experiments_rfcx.yaml``);
- ``ema``: ``train.ema: {momentum: M}`` (``--ema-momentum``; the default 0.95 averages over about 20 steps,
  about one epoch at these sizes: these runs take 150-400 optimizer steps in all);
- ``swa``: ``train.swa: {best: 3}`` (the mean of the three best epochs by ``train.monitor``);
- ``tta``: ``predict.tta``: the input, and the input shifted by +-``--tta-shift`` seconds (circular);
- ``pseudo``: a student of ``base`` (``pseudo: {teacher: base, mode: soft, weight: 0.5}``) on the test clips
  (whale) or on the unknown labels of its fold's training recordings (rfcx, whose data here has
  ``unknown: mask``: a species without a box in a recording is unknown, not absent);
- ``pseudo_hard`` (only with ``--variants``): ``pseudo`` with ``mode: hard, threshold: 0.9`` (only confident
  pseudo-labels, 0/1; the rfcx queue's student);
- ``ema_pseudo`` (only with ``--variants``): ``ema`` and a student of ``ema``: pseudo-labels on top of EMA.

The whale data is the default queue's (1,500 train + 400 test clips, 3 folds); the rfcx data is the rfcx
queue's (200 + 50 recordings of 10 s at 16 kHz, 3 folds, ``unknown: mask``, ``confusers: 6``; ``--confusers 0``:
the generator's default labels, ``--unknown negative``: a species without a tp box is absent, no pseudo
variants then). Training is deterministic
for a given seed, so ``tta`` trains the same fold models as ``base`` and only its predictions differ.

Printed: one row per (study, model, variant): OOF score (AUC for whale, LWLRAP for rfcx) and test score
against the answer key, per seed and their mean, and the mean change against ``base``; the same as CSV in
``WORK/techniques-<study>-seeds<seeds>.csv``. The data and every run's output stay in ``WORK`` (default: a new temporary folder,
printed), so a table can be checked file by file. Run again with the same ``--work``, a finished queue is
not trained again (the queue runner skips finished experiments): only the table is rebuilt.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("base", "ema", "swa", "tta", "pseudo", "pseudo_hard", "ema_pseudo")
DEFAULT_VARIANTS = VARIANTS[:5]

# The default queues' models and settings (experiments.yaml, experiments_rfcx.yaml).
WHALE = {
    "data": {"name": "synthetic_whale", "n_train": 1500, "n_test": 400, "seed": 0},
    "audio": {"sample_rate": 2000, "duration": 2.0},
    "folds": {"n_splits": 3, "seed": 42},
    "features": {"name": "mel", "n_fft": 256, "hop_length": 64, "n_mels": 64},
    "train": {"epochs": 12, "batch_size": 64, "learning_rate": 0.003, "patience": 3, "monitor": "val_auc"},
}
WHALE_MODELS = {
    "inceptiontime": {"model": {"name": "inceptiontime", "filters": 16, "depth": 6, "bottleneck": 16,
                                "kernel_sizes": [4, 8, 16], "residual": True}},
    "sed": {"model": {"name": "sed", "widths": [8, 16, 32], "dropout": 0.2}, "train": {"epochs": 6},
            "augment": {"time_mask": 6, "freq_mask": 6}},
}
RFCX = {
    "data": {"name": "synthetic_rfcx", "n_train": 200, "n_test": 50, "duration": 10.0, "sample_rate": 16000,
             "seed": 0, "unknown": "mask"},
    "audio": {"sample_rate": 16000, "duration": 10.0},
    "features": {"name": "mel", "n_fft": 1024, "hop_length": 512, "n_mels": 48, "fmin": 300.0, "fmax": 8000.0},
    "folds": {"n_splits": 3, "seed": 42},
    "crops": {"crop_seconds": 3.0, "positive_probability": 0.75, "per_recording": 8, "window_seconds": 3.0,
              "window_hop_seconds": 1.5, "aggregate": "max"},
    "train": {"epochs": 14, "batch_size": 32, "learning_rate": 0.004, "patience": 4, "monitor": "val_lwlrap"},
    "schedule": {"name": "cosine", "warmup_epochs": 1, "min_fraction": 0.05},
    "augment": {"freq_mask": 4, "time_mask": 8},
}
RFCX_MODELS = {"sed": {"model": {"name": "sed", "widths": [8, 16, 32], "dropout": 0.2},
                       "loss": {"name": "sed", "clipwise_weight": 1.0, "framewise_weight": 0.5}}}


def merged(base: dict, extra: dict) -> dict:
    """``base`` with ``extra``'s sections merged into it one level deep."""
    out = {k: dict(v) for k, v in base.items()}
    for section, values in extra.items():
        out[section] = {**out.get(section, {}), **values} if isinstance(values, dict) else values
    return out


def variant(name: str, model: str, args) -> dict:
    """What variant ``name`` of ``model`` adds to the base experiment."""
    if name == "base":
        return {}
    if name == "ema":
        return {"train": {"ema": {"momentum": args.ema_momentum}}}
    if name == "swa":
        return {"train": {"swa": {"best": 3}}}
    if name == "tta":
        return {"predict": {"tta": [{}, {"shift": args.tta_shift}, {"shift": -args.tta_shift}]}}
    on = ["unknown"] if args.study == "rfcx" else ["test"]
    teacher = "ema" if name == "ema_pseudo" else "base"
    extra = variant("ema", model, args) if name == "ema_pseudo" else {}
    mode = {"mode": "hard", "threshold": 0.9} if name == "pseudo_hard" else {"mode": "soft"}
    return {**extra, "pseudo": {"teacher": f"{model}_{teacher}", "on": on, **mode, "weight": 0.5}}


def queue_text(args, model: str, seed: int, folder: str) -> str:
    """One queue: the five variants of ``model`` at ``train.seed`` = ``seed``, data under ``args.work``."""
    base, models = (RFCX, RFCX_MODELS) if args.study == "rfcx" else (WHALE, WHALE_MODELS)
    defaults = merged(base, models[model])
    defaults["data"] = {**defaults["data"], "root": os.path.join(args.work, "input", args.study)}
    if args.study == "rfcx":
        defaults["data"]["unknown"] = args.unknown
        if args.confusers:
            defaults["data"]["confusers"] = args.confusers
    defaults["train"] = {**defaults["train"], "seed": seed}
    if args.epochs:
        defaults["train"]["epochs"] = args.epochs
    experiments = []
    for name in args.variants:
        exp = merged({}, variant(name, model, args))
        for section, values in exp.items():
            if isinstance(values, dict) and isinstance(defaults.get(section), dict):
                exp[section] = {**defaults[section], **values}
        experiments.append({"name": f"{model}_{name}", **exp})
    blend = {"method": "mean", "metric": "lwlrap" if args.study == "rfcx" else "auc"}
    return yaml.safe_dump({"defaults": defaults, "experiments": experiments, "blend": blend,
                           "output": os.path.join(folder, "output")}, sort_keys=False)


def test_score(study: str, data_root: str, test_csv: str) -> float:
    """The test predictions' score against the synthetic data's answer key (never read by the pipeline)."""
    from pipeline.metrics import auc, lwlrap

    pred = pd.read_csv(test_csv)
    if study == "whale":
        key = pd.read_csv(os.path.join(data_root, "test_labels.csv")).set_index("clip")["label"]
        pred = pred.set_index("id")["pred"]
        return auc(key.loc[pred.index].to_numpy(), pred.to_numpy())
    key = pd.read_csv(os.path.join(data_root, "test_labels.csv")).set_index("recording_id")
    pred = pred.set_index("id")  # columns pred:s0 .. pred:s23
    return lwlrap(key.loc[pred.index].to_numpy(), pred[[f"pred:{c}" for c in key.columns]].to_numpy())


def run(args, model: str, seed: int) -> list:
    folder = os.path.join(args.work, f"{args.study}_{model}_seed{seed}")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "queue.yaml")
    with open(path, "w") as f:
        f.write(queue_text(args, model, seed, folder))
    start = time.perf_counter()
    with open(os.path.join(folder, "run.log"), "w") as log:
        code = subprocess.call([sys.executable, os.path.join(ROOT, "run_queue.py"), path, "--jobs", args.jobs],
                               cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    print(f"{args.study} {model} seed {seed}: exit {code} in {wall / 60:.1f} min ({folder})", flush=True)
    summary = pd.read_csv(os.path.join(folder, "output", "summary.csv")).set_index("experiment")
    metric = "oof_lwlrap" if args.study == "rfcx" else "oof_auc"
    rows = []
    for name in args.variants:
        exp = f"{model}_{name}"
        done = exp in summary.index and summary.loc[exp, "status"] == "done"
        test_csv = os.path.join(folder, "output", exp, "test.csv")
        rows.append({"study": args.study, "model": model, "variant": name, "seed": seed,
                     "oof": float(summary.loc[exp, metric]) if done else np.nan,
                     "fold_std": float(summary.loc[exp, "fold_std"]) if done else np.nan,
                     "test": test_score(args.study, os.path.join(args.work, "input", args.study), test_csv)
                     if done else np.nan,
                     "fold_seconds": float(summary.loc[exp, "fold_seconds"]) if done else np.nan})
    return rows


def table(results: pd.DataFrame) -> str:
    """Markdown: per model and variant, OOF and test per seed and mean, and the mean change against base."""
    lines = ["| study | model | variant | OOF per seed | OOF mean | change | test per seed | test mean | change |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (study, model), group in results.groupby(["study", "model"], sort=False):
        base = group[group["variant"] == "base"].set_index("seed")
        for name in VARIANTS:
            rows = group[group["variant"] == name].set_index("seed")
            if rows.empty:
                continue
            cells = []
            for col in ("oof", "test"):
                per_seed = " / ".join(f"{v:.3f}" for v in rows[col])
                change = (rows[col] - base[col].loc[rows.index]).mean()
                cells += [per_seed, f"{rows[col].mean():.3f}", "" if name == "base" else f"{change:+.3f}"]
            lines.append(f"| {study} | {model} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=("whale", "rfcx"))
    parser.add_argument("--seeds", default="0", help="train.seed values, comma-separated (default 0)")
    parser.add_argument("--models", default=None, help="whale: inceptiontime,sed (default both); rfcx: sed")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated, from {', '.join(VARIANTS)} (base and the teachers are needed)")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs (default: the queue's)")
    parser.add_argument("--unknown", choices=("mask", "negative"), default="mask",
                        help="rfcx: data.unknown (default mask; pseudo needs it: negative leaves no unknown labels)")
    parser.add_argument("--confusers", type=int, default=6,
                        help="rfcx: data.confusers, extra fp boxes per recording (default 6, as the rfcx queue)")
    parser.add_argument("--ema-momentum", type=float, default=0.95)
    parser.add_argument("--tta-shift", type=float, default=0.25, help="seconds (default 0.25)")
    parser.add_argument("--jobs", default="auto", help="run_queue.py --jobs (default auto)")
    parser.add_argument("--work", default=None, help="folder for the data and the runs (default: a new temp folder)")
    args = parser.parse_args(argv)
    args.work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="techniques-"))
    models = (args.models or ",".join(RFCX_MODELS if args.study == "rfcx" else WHALE_MODELS)).split(",")
    known = RFCX_MODELS if args.study == "rfcx" else WHALE_MODELS
    unknown = [m for m in models if m not in known]
    if unknown:
        parser.error(f"--models: {', '.join(unknown)} not in {', '.join(known)}")
    args.variants = args.variants.split(",")
    bad = [v for v in args.variants if v not in VARIANTS] or [
        f"{v} (its teacher {t} is not in --variants)" for v, t in (("pseudo", "base"), ("pseudo_hard", "base"),
                                                             ("ema_pseudo", "ema"))
        if v in args.variants and t not in args.variants]
    if args.study == "rfcx" and args.unknown == "negative":
        bad += [f"{v} (rfcx data with unknown: negative has no unknown labels to pseudo-label)"
                for v in args.variants if "pseudo" in v]
    if bad:
        parser.error(f"--variants: {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
    print(f"work folder: {args.work}", flush=True)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for model in models:
            rows += run(args, model, seed)
    results = pd.DataFrame(rows)
    out = os.path.join(args.work, f"techniques-{args.study}-seeds{'_'.join(args.seeds.split(','))}.csv")
    results.to_csv(out, index=False)
    print(table(results))
    print(f"per run: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
