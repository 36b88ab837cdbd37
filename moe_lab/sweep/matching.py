"""Compute matching: choose the expert width so that a configuration keeps the base experiment's
active (or total) parameter count. Without it, a top-k sweep mostly measures compute, not routing."""

from __future__ import annotations

from dataclasses import dataclass

from moe_lab.model.accounting import count_model
from moe_lab.model.config import ModelConfig, moe_layer_indices


@dataclass(frozen=True)
class Matched:
    expert_hidden: int
    target: float  # the base experiment's active/total parameters
    achieved: float


def _params(cfg: ModelConfig, expert_hidden: int, which: str) -> float:
    cfg.moe.expert_hidden = expert_hidden
    counts = count_model(cfg)
    return counts.total_active_params if which == "active" else counts.total_params


# Each expert's width after the granularity split is kept a multiple of this: grouped GEMM kernels
# need 16-byte aligned row strides (8 floats covers fp32 and bf16), and odd widths run slower anyway.
WIDTH_MULTIPLE = 8


def match_expert_hidden(base: ModelConfig, cfg: ModelConfig, which: str) -> Matched | None:
    """The model.moe.expert_hidden whose `which` ("active"/"total") parameter count is closest to the
    base's, among widths whose per-expert share (width / granularity) is a multiple of WIDTH_MULTIPLE.
    Parameter counts are linear in the width, so two evaluations give the exact solution before
    rounding. None when cfg has no MoE layer to resize."""
    if not moe_layer_indices(cfg):
        return None
    target = count_model(base).total_active_params if which == "active" else count_model(base).total_params
    step = cfg.moe.granularity * WIDTH_MULTIPLE
    probe = cfg.__class__(**{**cfg.__dict__, "moe": cfg.moe.__class__(**cfg.moe.__dict__)})
    at_1, at_2 = _params(probe, step, which), _params(probe, 2 * step, which)
    per_unit = (at_2 - at_1) / step
    if per_unit <= 0:
        return None
    best = max(step, round((step + (target - at_1) / per_unit) / step) * step)
    return Matched(expert_hidden=best, target=target, achieved=_params(probe, best, which))
