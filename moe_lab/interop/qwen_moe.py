"""Qwen2-MoE (Qwen1.5-MoE) and Qwen3-MoE: MoE on the layers `decoder_sparse_step` / `mlp_only_layers`
pick, dense SwiGLU elsewhere; softmax top-k router, renormalised only with `norm_topk_prob`.

Qwen2-MoE adds q/k/v biases and one shared expert whose output is scaled per token by
sigmoid(x W_g) (`shared_expert_gate`). Qwen3-MoE drops both and adds an RMSNorm over each head's
q and k (`qk_norm: head`), with heads that may be wider than hidden_size / num_attention_heads.
transformers: `models/qwen2_moe/modular_qwen2_moe.py`, `models/qwen3_moe/modular_qwen3_moe.py`.
"""

from __future__ import annotations

from typing import Any

from moe_lab.interop.architecture import (
    Architecture,
    register_architecture,
    require_default_head_dim,
    require_default_model_head_dim,
    require_hf,
    require_model,
    require_no_shared,
    router_fields,
    trunk_fields,
    trunk_hf_fields,
)
from moe_lab.model.config import ModelConfig, MoEConfig, expert_dims, head_dim, moe_layer_indices, renormalizes


def placement_fields(hf: Any) -> dict:
    """Qwen2MoeDecoderLayer: layer i is MoE iff num_experts > 0, i not in mlp_only_layers and
    (i + 1) % decoder_sparse_step == 0."""
    require_hf(hf, "decoder_sparse_step", lambda v: isinstance(v, int) and v >= 1, "must be an integer >= 1")
    n, step, dense = hf.num_hidden_layers, hf.decoder_sparse_step, set(hf.mlp_only_layers or [])
    layers = [i for i in range(n) if i not in dense and (i + 1) % step == 0] if hf.num_experts else []
    if not layers:
        return dict(placement="none")
    if len(layers) == n:
        return dict(placement="all")
    if not dense:  # moe_lab's every_n is the same rule: i % n == n - 1
        return dict(placement="every_n", every_n=step)
    return dict(placement="list", layers=layers)


def placement_hf_fields(cfg: ModelConfig) -> dict:
    if cfg.moe.placement == "every_n":
        return dict(decoder_sparse_step=cfg.moe.every_n, mlp_only_layers=[])
    moe_layers = set(moe_layer_indices(cfg))
    return dict(decoder_sparse_step=1, mlp_only_layers=[i for i in range(cfg.n_layers) if i not in moe_layers])


def require_full_attention(hf: Any) -> None:
    require_hf(hf, "use_sliding_window", False, "moe_lab attention is full causal")
    require_hf(
        hf,
        "layer_types",
        lambda v: not v or set(v) == {"full_attention"},
        "moe_lab attention is full causal; expected only 'full_attention'",
    )


def qwen2_to_model_config(hf: Any) -> ModelConfig:
    require_full_attention(hf)
    require_default_head_dim(hf, "Qwen2-MoE sizes its heads as hidden_size / num_attention_heads")
    # moe_lab reads shared_expert_hidden 0 as "the routed width", so a zero-width shared expert
    # (whose HF output is always 0) has no faithful moe_lab value.
    require_hf(hf, "shared_expert_intermediate_size", lambda v: v > 0, "a zero-width shared expert; expected > 0")
    moe = MoEConfig(
        **router_fields(hf, hf.num_experts, renormalize=bool(hf.norm_topk_prob)),
        **placement_fields(hf),
        expert_hidden=hf.moe_intermediate_size,
        n_shared_experts=1,
        shared_expert_hidden=hf.shared_expert_intermediate_size,
        shared_expert_gate=True,
    )
    return ModelConfig(**trunk_fields(hf), attention_bias=bool(hf.qkv_bias), d_ff=hf.intermediate_size, moe=moe)


def qwen2_to_hf_fields(cfg: ModelConfig) -> dict:
    name = "qwen2_moe"
    require_model(cfg.qk_norm == "none", "model.qk_norm", cfg.qk_norm, name, "'none'")
    require_default_model_head_dim(cfg, name, "Qwen2-MoE configs have no head_dim")
    dims = expert_dims(cfg)
    require_model(
        dims.shared_hidden > 0,
        "model.moe.n_shared_experts",
        cfg.moe.n_shared_experts,
        name,
        ">= 1 (Qwen2-MoE always has a shared expert)",
    )
    require_model(
        cfg.moe.shared_expert_gate,
        "model.moe.shared_expert_gate",
        cfg.moe.shared_expert_gate,
        name,
        "true (Qwen2-MoE always gates its shared expert)",
    )
    # All shared experts are one wide FFN in moe_lab, which is what Qwen2-MoE's one shared expert is.
    return dict(
        trunk_hf_fields(cfg, name),
        **placement_hf_fields(cfg),
        intermediate_size=cfg.d_ff,
        moe_intermediate_size=dims.routed_hidden,
        shared_expert_intermediate_size=dims.shared_hidden,
        num_experts=dims.n_routed_experts,
        norm_topk_prob=renormalizes(cfg.moe),
        qkv_bias=cfg.attention_bias,
        use_sliding_window=False,
    )


def qwen3_to_model_config(hf: Any) -> ModelConfig:
    require_full_attention(hf)
    # Qwen3's attention_bias biases o_proj too, which moe_lab never has.
    require_hf(hf, "attention_bias", False, "moe_lab has no output-projection bias")
    moe = MoEConfig(
        **router_fields(hf, hf.num_experts, renormalize=bool(hf.norm_topk_prob)),
        **placement_fields(hf),
        expert_hidden=hf.moe_intermediate_size,
    )
    return ModelConfig(**trunk_fields(hf), qk_norm="head", d_ff=hf.intermediate_size, moe=moe)


def qwen3_to_hf_fields(cfg: ModelConfig) -> dict:
    name = "qwen3_moe"
    require_model(cfg.qk_norm == "head", "model.qk_norm", cfg.qk_norm, name, "'head'")
    require_model(not cfg.attention_bias, "model.attention_bias", cfg.attention_bias, name, "false")
    require_no_shared(cfg, name)
    dims = expert_dims(cfg)
    return dict(
        trunk_hf_fields(cfg, name),
        **placement_hf_fields(cfg),
        head_dim=head_dim(cfg),
        intermediate_size=cfg.d_ff,
        moe_intermediate_size=dims.routed_hidden,
        num_experts=dims.n_routed_experts,
        norm_topk_prob=renormalizes(cfg.moe),
        attention_bias=False,
        use_sliding_window=False,
    )


for model_type, prefix, to_cfg, to_hf in (
    ("qwen2_moe", "Qwen2Moe", qwen2_to_model_config, qwen2_to_hf_fields),
    ("qwen3_moe", "Qwen3Moe", qwen3_to_model_config, qwen3_to_hf_fields),
):
    register_architecture(
        Architecture(
            model_type=model_type,
            config_class=f"{prefix}Config",
            model_class=f"{prefix}ForCausalLM",
            n_experts_field="num_experts",
            expert_hidden_field="moe_intermediate_size",
            legacy_expert_names=("gate_proj", "up_proj", "down_proj"),
            legacy_moe_block="mlp",
            placement_fields=("num_experts", "decoder_sparse_step", "mlp_only_layers"),
            to_model_config=to_cfg,
            to_hf_fields=to_hf,
        )
    )
