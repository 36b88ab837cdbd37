"""The layout of one run directory (`<output_dir>/<name>/version_N/`, or a sweep trial's `seedS/`):
the file names every writer and reader of a run uses."""

from __future__ import annotations

CONFIG = "config.yaml"  # the resolved ExperimentConfig
METRICS = "metrics.json"  # final metrics (RunMetrics) and status
ENV = "env.json"  # environment_record(): packages, threads, git revision, argv
TRAIN_LOG = "train.log"  # Lightning's own output of a sweep trial's run
CHECKPOINTS = "checkpoints"  # Lightning checkpoints: last.ckpt, best.ckpt
LAST_CKPT = "last.ckpt"
BEST_CKPT = "best.ckpt"
PREVIOUS_CKPT = "previous.ckpt"
