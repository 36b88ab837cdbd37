"""The layout of one run directory (`<output_dir>/<name>/version_N/`, or a sweep trial's `seedS/`):
the file names every writer and reader of a run uses."""

from __future__ import annotations

import re
from dataclasses import field, make_dataclass
from pathlib import Path

from moe_lab.artifacts.metrics import VOCABULARY, metrics_where

CONFIG = "config.yaml"  # the resolved ExperimentConfig
METRICS = "metrics.json"  # final metrics (RunMetrics) and status
ENV = "env.json"  # environment_record(): packages, threads, git revision, argv
TRAIN_LOG = "train.log"  # Lightning's own output of a sweep trial's run
CHECKPOINTS = "checkpoints"  # Lightning checkpoints: last.ckpt, best.ckpt
LAST_CKPT = "last.ckpt"
BEST_CKPT = "best.ckpt"
PREVIOUS_CKPT = "previous.ckpt"  # the last.ckpt before the newest: what a damaged last.ckpt falls back to
MODEL_SUMMARY = "model_summary.txt"  # parameter and FLOP accounting of the model (moe_lab.model.summary)
TOKENIZER_DIR = "tokenizer"  # the tokenizer in use (its file names: moe_lab.data.tokenizers)
PROGRESS = "progress.json"  # a running run's step, losses and throughput, for watchers outside the process
VERSION_PREFIX = "version_"  # <output_dir>/<name>/version_N: Lightning's run numbering


# ------------------------------------------------------------------------------------------- metrics
# A run's status in METRICS, and those of a run that is over for good (resuming it would train nothing).
COMPLETED, PRUNED, STOPPED, FAILED = "completed", "pruned", "stopped", "failed"
FINISHED_STATUSES = (COMPLETED, PRUNED)

# What a finished run reports in METRICS: how it ended, then one field per metric of the vocabulary
# (moe_lab.artifacts.metrics.VOCABULARY, each field's metadata["metric"] its Metric), then the run's totals
# and records. Every list of metric names in moe_lab is read from the vocabulary, so a metric is added
# or renamed there only.
RunMetrics = make_dataclass(
    "RunMetrics",
    [
        ("status", str, field(default=COMPLETED)),  # COMPLETED | PRUNED | STOPPED | FAILED
        ("error", str | None, field(default=None)),
        ("steps", int, field(default=0)),
        *((m.name, float | None, field(default=None, metadata={"metric": m})) for m in VOCABULARY),
        # Totals over every part of a resumed run (each part up to the checkpoint the next resumed from).
        ("train_tokens", int | None, field(default=None)),
        ("train_seconds", float | None, field(default=None)),
        ("wall_time_s", float | None, field(default=None)),
        ("resumed_from_step", int | None, field(default=None)),
        ("this_part", dict | None, field(default=None)),  # the throughput figures of this part alone
        ("total_params", int | None, field(default=None)),
        ("active_params", float | None, field(default=None)),
        ("flops_per_token", float | None, field(default=None)),
        ("moe_layers", list | None, field(default=None)),
        ("collapse_events", list, field(default_factory=list)),
        ("prune_reason", str | None, field(default=None)),
    ],
)


def _names(flag: str) -> tuple[str, ...]:
    return tuple(m.name for m in metrics_where(flag))


OBJECTIVE_METRICS = _names("objective")
CLAIM_METRICS = _names("claim")
HPARAM_METRICS = _names("hparams")
METRIC_CURVES = {m.name: m.tag for m in VOCABULARY}


# -------------------------------------------------------------------------------- finding runs


def next_version(experiment_dir: Path) -> str:
    """version_<N+1> after the highest version_<N> in `experiment_dir` (Lightning's own numbering, decided
    here once so that every logger writes into the same run directory)."""
    numbers = [
        int(m.group(1))
        for d in Path(experiment_dir).glob(f"{VERSION_PREFIX}*")
        if (m := re.fullmatch(rf"{VERSION_PREFIX}(\d+)", d.name)) and d.is_dir()
    ]
    return f"{VERSION_PREFIX}{max(numbers) + 1 if numbers else 0}"


def latest_last_checkpoint(experiment_dir: Path) -> Path | None:
    """The most recently written last.ckpt of any run of the experiment."""
    found = sorted(Path(experiment_dir).glob(f"*/{CHECKPOINTS}/{LAST_CKPT}"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def resolve_resume(experiment_dir: Path, version: str, resume: str) -> tuple[str | None, Path | None]:
    """(run directory name to log into, checkpoint to resume from) for `trainer.resume` = "" (a fresh
    run), "auto" (the latest last.ckpt of the experiment, or of `version` when one is named) or a
    checkpoint path. A version of None: the caller numbers a new run."""
    experiment_dir = Path(experiment_dir)
    if resume == "":
        return version or None, None
    if resume != "auto":
        ckpt: Path | None = Path(resume)
    elif version:
        candidate = experiment_dir / version / CHECKPOINTS / LAST_CKPT
        ckpt = candidate if candidate.is_file() else None
    else:
        ckpt = latest_last_checkpoint(experiment_dir)
    if ckpt is None:
        return version or None, None  # nothing to resume: a fresh run
    # Keep logging into the run directory the checkpoint belongs to, when it is one of ours.
    run_dir = ckpt.parent.parent
    ours = run_dir.parent.resolve() == experiment_dir.resolve()
    return (run_dir.name if ours else (version or None)), ckpt
