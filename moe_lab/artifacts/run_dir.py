"""The layout of one run directory (`<output_dir>/<name>/version_N/`, or a sweep trial's `seedS/`):
the file names every writer and reader of a run uses."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

CONFIG = "config.yaml"  # the resolved ExperimentConfig
METRICS = "metrics.json"  # final metrics (RunMetrics) and status
ENV = "env.json"  # environment_record(): packages, threads, git revision, argv
TRAIN_LOG = "train.log"  # Lightning's own output of a sweep trial's run
CHECKPOINTS = "checkpoints"  # Lightning checkpoints: last.ckpt, best.ckpt
LAST_CKPT = "last.ckpt"
BEST_CKPT = "best.ckpt"
PREVIOUS_CKPT = "previous.ckpt"


# ------------------------------------------------------------------------------------------- metrics
# What a finished run reports in METRICS. Every list of metric names in moe_lab (the sweep's
# objectives, the ablation claims and tables, TensorBoard's HPARAMS columns) is derived from these
# fields' metadata, so a metric is added or renamed here only.
#   curve:     the logged scalar that tracks it during training (what validation pruning watches)
#   title:     its column title in the ablation results table (absent: not a table column)
#   objective: a sweep may optimise it;  claim: an ablation claim may compare it
#   hparams:   a column of TensorBoard's HPARAMS table (`final/<name>`), in field order

def _metric(curve: str | None = None, title: str | None = None, objective: bool = False, claim: bool = True,
            hparams: bool = False):
    return field(default=None, metadata={"metric": True, "curve": curve, "title": title, "objective": objective,
                                         "claim": claim, "hparams": hparams})


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
