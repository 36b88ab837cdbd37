"""The metric vocabulary: every logged tag's name, and every final metric a run reports, said once.

Training logs the tags; a finished run writes one value per `Metric` into its metrics.json (a field
of `run_dir.RunMetrics`, made from `VOCABULARY`); the sweep's objectives, the ablation claims, the sweep
and ablation tables, TensorBoard's HPARAMS columns and the trial attributes a study stores are all
read from `VOCABULARY`. A new headline metric is one line in `VOCABULARY`: when its value is the last
logged value of a tag, or a value a monitor reports under its name (see `Metric.tag`), nothing else
needs an edit to reach every table.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from moe_lab.formatting import si

# ------------------------------------------------------------------------------------ logged tags
TRAIN_LOSS = "train/loss"  # LM loss plus the weighted router losses: what the optimiser minimises
TRAIN_LM_LOSS = "train/lm_loss"
TRAIN_AUX_LOSS = "train/aux_loss"  # load-balancing loss, unweighted, mean over the MoE layers
TRAIN_Z_LOSS = "train/z_loss"  # router z-loss, unweighted, mean over the MoE layers
TRAIN_LR = "train/lr"  # the learning rate of the step (every parameter group follows one schedule)
# Training tokens per second: tokens of all training steps so far over the wall-clock seconds of those
# steps, validation excluded (moe_lab.callbacks.throughput).
TOKENS_PER_S = "train/tokens_per_s"
VAL_LOSS = "val/loss"  # nats per token over the held-out split
VAL_PPL = "val/ppl"
VAL_BPB = "val/bpb"  # bits per byte of text: comparable across tokenizers
LOAD_CV_MEAN = "moe/load_cv_mean"  # coefficient of variation of the expert loads, mean over MoE layers
LOAD_CV_MAX = "moe/load_cv_max"
DROPPED_FRAC_MEAN = "moe/dropped_frac_mean"
COLLAPSE_EVENTS = "moe/collapse_events"  # running count of the collapse detector's events
# Routing stability (moe_lab.callbacks.routing_trace), each trace of the fixed evaluation tokens against the
# previous one: the share of tokens whose top-k expert set is unchanged, and of those whose first choice is;
# per layer as layer_tag(i, "routing_consistency") and layer_tag(i, "top1_agreement"), here the mean over layers.
ROUTING_CONSISTENCY_MEAN = "moe/routing_consistency_mean"
TOP1_AGREEMENT_MEAN = "moe/top1_agreement_mean"


FINAL_PREFIX = "final/"  # a run's final metrics, logged once at its end: TensorBoard's HPARAMS columns


def final_tag(name: str) -> str:
    """The scalar a run's final metric `name` (a RunMetrics field) is logged under, without a repeated
    "final": final/load_cv for final_load_cv, final/val_loss for val_loss."""
    return FINAL_PREFIX + name.removeprefix("final_")


def layer_tag(layer: int | str, name: str) -> str:
    """A per-MoE-layer statistic's tag: moe/layer<i>/<name> (load_cv, entropy_norm, expert<j>, ...);
    `layer_tag(r"\\d+", name)` is the regex of every layer's."""
    return f"moe/layer{layer}/{name}"


# How a configuration's seeds combine into one table cell.
SEED_MEAN, SEED_SUM, SEED_MEDIAN = "mean", "sum", "median"


@dataclass(frozen=True)
class Metric:
    """One final metric of a run.

    name:   its RunMetrics field and metrics.json key (also its trial attribute in a study)
    title:  its column title in every table
    unit:   what one unit of it is, for axis labels and captions ("" when it has none)
    better: "lower" or "higher"; "" for a figure that never ranks (a cost, a count of the machine's)
    fmt:    the format spec of a table cell, or "si" (1.2k, 3.4M)
    tag:    the logged scalar whose last value it is, unless a monitor of the run reports a value under
            `name` (the load monitor's summary, the best checkpoint's score, the throughput callback, the
            collapse detector); also the curve validation pruning watches (None: no curve)
    seeds:  how a configuration's seeds combine in a table: their mean, sum or median
    machine: it depends on the machine and its load, not on the configuration: shown, never a result
    objective / claim / hparams / table: a sweep may optimise it / an ablation claim may compare it /
            a column of TensorBoard's HPARAMS table (`final_tag(name)`) / a column of the sweep and
            ablation tables (all in this order)
    lead:   one of the HPARAMS table's leading columns, right after the objective (in this order); the
            other HPARAMS columns follow them (moe_lab.training.tb_hparams.ordered_metrics)
    """

    name: str
    title: str
    unit: str = ""
    better: str = "lower"
    fmt: str = ".4f"
    tag: str | None = None
    seeds: str = SEED_MEAN
    machine: bool = False
    objective: bool = False
    claim: bool = True
    hparams: bool = False
    table: bool = False
    lead: bool = False

    def format(self, value) -> str:
        """A table cell: '-' for no value."""
        if value is None:
            return "-"
        return si(value) if self.fmt == "si" else format(value, self.fmt)

    def combine(self, values: Iterable) -> float | None:
        """The seeds' finite values in one figure (None when no seed has one)."""
        present = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        if not present:
            return None
        if self.seeds == SEED_SUM:  # counts: a whole number stays one
            total = sum(present)
            return int(total) if float(total).is_integer() else total
        return statistics.median(present) if self.seeds == SEED_MEDIAN else statistics.fmean(present)


VOCABULARY = (
    Metric("val_loss", "val loss", "nats/token", tag=VAL_LOSS, objective=True, hparams=True, table=True),
    Metric("val_bpb", "val bpb", "bits/byte", tag=VAL_BPB, objective=True, hparams=True, table=True),
    Metric("val_ppl", "val ppl", tag=VAL_PPL, objective=True, hparams=True),
    Metric("best_val_loss", "best val loss", "nats/token", tag=VAL_LOSS, objective=True, hparams=True),
    Metric(
        "tokens_per_s",
        "tok/s",
        "tokens/s",
        better="higher",
        fmt="si",
        seeds=SEED_MEDIAN,
        machine=True,
        objective=True,
        table=True,
    ),
    Metric("final_load_cv", "load CV", fmt=".3f", objective=True, hparams=True, table=True, lead=True),
    Metric("final_load_cv_max", "load CV (max over layers)", fmt=".3f", hparams=True, lead=True),
    # MaxVio (DeepSeek-V3): max load / mean load - 1, mean over MoE layers (the per-layer max_over_uniform - 1).
    Metric("final_max_vio", "MaxVio", fmt=".3f", hparams=True, lead=True),
    Metric("final_dropped_frac", "dropped", hparams=True, table=True),
    Metric("final_aux_loss", "aux loss", tag=TRAIN_AUX_LOSS),
    Metric("final_z_loss", "z-loss", tag=TRAIN_Z_LOSS),
    # The last trace's consistency with the one before (monitor.trace_every_n_steps; None when it is 0).
    Metric(
        "final_routing_consistency", "routing consistency", better="higher", fmt=".3f", tag=ROUTING_CONSISTENCY_MEAN
    ),
    Metric("collapse_events_count", "collapses", fmt=".0f", seeds=SEED_SUM, hparams=True, table=True, lead=True),
)


def metrics_where(flag: str) -> tuple[Metric, ...]:
    return tuple(m for m in VOCABULARY if getattr(m, flag))


def metric_named(name: str) -> Metric:
    return next(m for m in VOCABULARY if m.name == name)
