"""Run a queue of experiments: ``python run_queue.py experiments.yaml [--only A,B] [--force] [--dry-run]``."""

import os

# Quiet TensorFlow's C++ start-up chatter (CUDA plugin notices on CPU machines) before it is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
