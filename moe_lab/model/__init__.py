"""The MoE transformer library: config schema, model, routers, experts, accounting."""

from moe_lab.model.accounting import ModelCounts, count_model
from moe_lab.model.config import (
    ExpertDims,
    ModelConfig,
    MoEConfig,
    expert_dims,
    moe_layer_indices,
    validate_model_config,
)
from moe_lab.model.moe import MoELayer, RoutingStats
from moe_lab.model.transformer import ModelOutput, MoETransformer

__all__ = [
    "ExpertDims",
    "ModelConfig",
    "ModelCounts",
    "ModelOutput",
    "MoEConfig",
    "MoELayer",
    "MoETransformer",
    "RoutingStats",
    "count_model",
    "expert_dims",
    "moe_layer_indices",
    "validate_model_config",
]
