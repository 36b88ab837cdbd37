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


def match_expert_hidden(base: ModelConfig, cfg: ModelConfig, which: str) -> Matched | None:
    """The model.moe.expert_hidden (a multiple of the granularity) whose `which` ("active"/"total")
    parameter count is closest to the base's. Parameter counts are linear in the expert width, so two
    evaluations give the exact solution before rounding. None when cfg has no MoE layer to resize."""
    if not moe_layer_indices(cfg):
        return None
    target = count_model(base).total_active_params if which == "active" else count_model(base).total_params
    g = cfg.moe.granularity
    probe = cfg.__class__(**{**cfg.__dict__, "moe": cfg.moe.__class__(**cfg.moe.__dict__)})
    at_g, at_2g = _params(probe, g, which), _params(probe, 2 * g, which)
    per_unit = (at_2g - at_g) / g
    if per_unit <= 0:
        return None
    best = max(g, round((g + (target - at_g) / per_unit) / g) * g)
    return Matched(expert_hidden=best, target=target, achieved=_params(probe, best, which))
