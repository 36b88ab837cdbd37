"""The layout of one run directory (`<output_dir>/<name>/version_N/`, or a sweep trial's `seedS/`):
the file names every writer and reader of a run uses."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path

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
# What a finished run reports in METRICS. Every list of metric names in moe_lab (the sweep's
# objectives, the ablation claims and tables, TensorBoard's HPARAMS columns) is derived from these
# fields' metadata, so a metric is added or renamed here only.
#   curve:     the logged scalar that tracks it during training (what validation pruning watches)
#   title:     its column title in the ablation results table (absent: not a table column)
#   objective: a sweep may optimise it;  claim: an ablation claim may compare it
#   hparams:   a column of TensorBoard's HPARAMS table (`final/<name>`), in field order


def _metric(
    curve: str | None = None,
    title: str | None = None,
    objective: bool = False,
    claim: bool = True,
    hparams: bool = False,
):
    return field(
        default=None,
        metadata={
            "metric": True,
            "curve": curve,
            "title": title,
            "objective": objective,
            "claim": claim,
            "hparams": hparams,
        },
    )


@dataclass
class RunMetrics:
    status: str = "completed"  # completed | pruned | stopped | failed
    error: str | None = None
    steps: int = 0
    val_loss: float | None = _metric("val/loss", "val loss", objective=True, hparams=True)
    val_bpb: float | None = _metric("val/bpb", "val bpb", objective=True, hparams=True)
    val_ppl: float | None = _metric("val/ppl", objective=True, hparams=True)
    best_val_loss: float | None = _metric("val/loss", objective=True, hparams=True)
    # Totals over every part of a resumed run (each part up to the checkpoint the next resumed from).
    train_tokens: int | None = None
    tokens_per_s: float | None = _metric(None, "tok/s", objective=True, hparams=True)
    train_seconds: float | None = None
    wall_time_s: float | None = None
    resumed_from_step: int | None = None
    this_part: dict | None = None  # the same throughput figures for this part alone (resumed runs)
    total_params: int | None = None
    active_params: float | None = None
    flops_per_token: float | None = None
    moe_layers: list | None = None
    final_load_cv: float | None = _metric(None, "load CV", objective=True, hparams=True)
    final_max_over_uniform: float | None = _metric()
    final_dropped_frac: float | None = _metric(None, "dropped", hparams=True)
    # The last training step's router losses (unweighted): how large the router logits ended up.
    final_aux_loss: float | None = _metric()
    final_z_loss: float | None = _metric()
    collapse_events: list = field(default_factory=list)
    collapse_events_count: int | None = _metric(None, "collapses", hparams=True)
    prune_reason: str | None = None


def _metrics(flag: str) -> tuple[str, ...]:
    return tuple(f.name for f in fields(RunMetrics) if f.metadata.get("metric") and f.metadata[flag])


OBJECTIVE_METRICS = _metrics("objective")
CLAIM_METRICS = _metrics("claim")
HPARAM_METRICS = _metrics("hparams")
TABLE_METRICS = tuple((f.name, f.metadata["title"]) for f in fields(RunMetrics) if f.metadata.get("title"))
METRIC_CURVES = {f.name: f.metadata["curve"] for f in fields(RunMetrics) if f.metadata.get("metric")}


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
