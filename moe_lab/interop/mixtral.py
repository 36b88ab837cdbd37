"""Mixtral (Jiang et al. 2024): every layer MoE, softmax top-k renormalised, no shared experts.

transformers: `models/mixtral/modeling_mixtral.py` (MixtralTopKRouter: softmax(fp32) -> top-k ->
divide by the top-k sum; MixtralExperts: fused `gate_up_proj` [E, 2I, D] and `down_proj` [E, D, I]).
"""

from __future__ import annotations

from typing import Any

from moe_lab.interop.architecture import (
    Architecture,
    register_architecture,
    require_all_moe,
    require_hf,
    require_model,
    require_no_shared,
    router_fields,
    trunk_fields,
    trunk_hf_fields,
)
from moe_lab.model.config import ModelConfig, MoEConfig, expert_dims, head_dim, renormalizes

NAME = "mixtral"


def to_model_config(hf: Any) -> ModelConfig:
    # A window at least as long as the context masks nothing; a shorter one moe_lab cannot express.
    require_hf(
        hf,
        "sliding_window",
        lambda v: v is None or v >= hf.max_position_embeddings,
        "moe_lab attention is full causal; expected null",
    )
    # Mixtral's jitter multiplies the expert input as well as the router input; moe_lab's
    # router_jitter only the router's, so a fine-tune would train differently.
    require_hf(hf, "router_jitter_noise", lambda v: not v, "moe_lab jitters the router input only; expected 0.0")
    moe = MoEConfig(**router_fields(hf, hf.num_local_experts, renormalize=True), placement="all")
    return ModelConfig(**trunk_fields(hf), d_ff=hf.intermediate_size, moe=moe)


def to_hf_fields(cfg: ModelConfig) -> dict:
    require_model(cfg.qk_norm == "none", "model.qk_norm", cfg.qk_norm, NAME, "'none'")
    require_model(not cfg.attention_bias, "model.attention_bias", cfg.attention_bias, NAME, "false")
    require_all_moe(cfg, NAME)
    require_no_shared(cfg, NAME)
    require_model(
        renormalizes(cfg.moe),
        "model.moe.renormalize",
        renormalizes(cfg.moe),
        NAME,
        "true (Mixtral always renormalises the top-k weights)",
    )
    dims = expert_dims(cfg)
    return dict(
        trunk_hf_fields(cfg, NAME),
        head_dim=head_dim(cfg),
        intermediate_size=dims.routed_hidden,
        num_local_experts=dims.n_routed_experts,
        sliding_window=None,
        router_jitter_noise=0.0,
    )


register_architecture(
    Architecture(
        model_type=NAME,
        config_class="MixtralConfig",
        model_class="MixtralForCausalLM",
        n_experts_field="num_local_experts",
        expert_hidden_field="intermediate_size",
        legacy_expert_names=("w1", "w3", "w2"),
        legacy_moe_block="block_sparse_moe",
        placement_fields=(),
        to_model_config=to_model_config,
        to_hf_fields=to_hf_fields,
    )
)
