"""OLMoE (Muennighoff et al. 2024): every layer MoE, RMSNorm over the whole q and k projections
before RoPE (`qk_norm: full`), top-k weights not renormalised by default (`norm_topk_prob`).

transformers: `models/olmoe/modular_olmoe.py` (OlmoeAttention: q_norm over hidden_size, k_norm over
n_kv_heads * head_dim; router shared with Qwen2-MoE).
"""

from __future__ import annotations

from typing import Any

from moe_lab.interop.architecture import (
    Architecture,
    register_architecture,
    require_all_moe,
    require_default_head_dim,
    require_default_model_head_dim,
    require_hf,
    require_model,
    require_no_shared,
    router_fields,
    trunk_fields,
    trunk_hf_fields,
)
from moe_lab.model.config import ModelConfig, MoEConfig, expert_dims, renormalizes

NAME = "olmoe"


def to_model_config(hf: Any) -> ModelConfig:
    require_hf(hf, "clip_qkv", None, "moe_lab attention does not clip q/k/v")
    # Llama-style attention_bias also puts a bias on o_proj, which moe_lab never has.
    require_hf(hf, "attention_bias", False, "moe_lab has no output-projection bias")
    require_default_head_dim(hf, "OLMoE's q_norm is as wide as hidden_size")
    moe = MoEConfig(**router_fields(hf, hf.num_experts, renormalize=bool(hf.norm_topk_prob)), placement="all")
    return ModelConfig(**trunk_fields(hf), qk_norm="full", d_ff=hf.intermediate_size, moe=moe)


def to_hf_fields(cfg: ModelConfig) -> dict:
    require_model(cfg.qk_norm == "full", "model.qk_norm", cfg.qk_norm, NAME, "'full'")
    require_model(not cfg.attention_bias, "model.attention_bias", cfg.attention_bias, NAME, "false")
    require_default_model_head_dim(cfg, NAME, "OLMoE's q_norm is as wide as hidden_size")
    require_all_moe(cfg, NAME)
    require_no_shared(cfg, NAME)
    dims = expert_dims(cfg)
    return dict(
        trunk_hf_fields(cfg, NAME),
        intermediate_size=dims.routed_hidden,
        num_experts=dims.n_routed_experts,
        norm_topk_prob=renormalizes(cfg.moe),
        clip_qkv=None,
        attention_bias=False,
    )


register_architecture(
    Architecture(
        model_type=NAME,
        config_class="OlmoeConfig",
        model_class="OlmoeForCausalLM",
        n_experts_field="num_experts",
        expert_hidden_field="intermediate_size",
        legacy_expert_names=("gate_proj", "up_proj", "down_proj"),
        legacy_moe_block="mlp",
        placement_fields=(),
        to_model_config=to_model_config,
        to_hf_fields=to_hf_fields,
    )
)
