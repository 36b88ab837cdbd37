"""The MoE transformer library: config schema, model, routers, experts, accounting.

Tensor shapes, in `# [T, E]` comments and as name suffixes in the dispatch path (`x_TD`, `probs_TE`):
  B batch, S sequence, T tokens (B * S), D d_model, V vocabulary;
  E routed experts and K experts per token, both after the granularity split; C capacity (tokens an expert takes);
  A routed assignments, one (token, expert, weight) each: T * K for token choice, E * C for expert choice;
  H one routed expert's hidden width; I, O a grouped GEMM's input and output widths;
  G groups the load-balancing loss averages over (sequences, or the whole batch).
"""

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
