"""What one Hugging Face MoE architecture is to the converter, the registry of them, and the config
translation of the Llama-style trunk (embedding, RoPE attention, RMSNorm, SwiGLU) they all share.

An architecture is one file (`mixtral.py`, `olmoe.py`, `qwen_moe.py`) with `@register_architecture`.
Config translation is strict both ways: an HF field whose value moe_lab cannot reproduce, or a
moe_lab option the HF class cannot express, is a ConfigError naming that field, never a silent change
of the function the model computes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from moe_lab.errors import ConfigError
from moe_lab.model.config import ModelConfig, expert_dims, head_dim, moe_layer_indices

# The moe_lab router computing what all supported architectures' routers compute: softmax over all
# experts in fp32, top-k of the probabilities, optionally renormalised.
HF_ROUTER = "topk"


@dataclass(frozen=True)
class Architecture:
    model_type: str  # `model_type` in config.json
    config_class: str  # transformers class names, looked up when used
    model_class: str
    # HF config fields that size the routed experts (named in tensor-shape errors).
    n_experts_field: str
    expert_hidden_field: str
    # Per-expert tensor names of checkpoints written before transformers 5 fused them, and
    # save_pretrained still writes them: (gate, up, down) under `<block>.experts.<j>.`.
    legacy_expert_names: tuple[str, str, str]
    legacy_moe_block: str  # "block_sparse_moe" (Mixtral) or "mlp"
    # HF config fields that decide which layers are MoE (named when a layer's FFN tensors do not fit).
    placement_fields: tuple[str, ...]
    to_model_config: Callable[[Any], ModelConfig]  # HF config object -> ModelConfig (raises if unfaithful)
    to_hf_fields: Callable[[ModelConfig], dict]  # ModelConfig -> HF config kwargs (raises if inexpressible)


ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(arch: Architecture) -> Architecture:
    ARCHITECTURES[arch.model_type] = arch
    return arch


def get_architecture(model_type: str, key: str = "model_type") -> Architecture:
    if model_type not in ARCHITECTURES:
        raise ConfigError(
            key, f"architecture {model_type!r} is not supported; expected one of {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[model_type]


# ------------------------------------------------------------------ HF config -> moe_lab, shared parts


def hf_key(hf: Any, name: str) -> str:
    return f"{hf.model_type}.{name}"


def require_hf(hf: Any, name: str, allowed: Any, why: str) -> None:
    """The HF field `name` must hold `allowed` (a value, or a predicate on the value)."""
    value = getattr(hf, name, None)
    ok = allowed(value) if callable(allowed) else value == allowed
    if not ok:
        expected = "" if callable(allowed) else f"; expected {allowed!r}"
        raise ConfigError(hf_key(hf, name), f"{value!r} is not supported: {why}{expected}")


def hf_head_dim(hf: Any) -> int:
    # Llama-family attention: an explicit head_dim wins, else hidden_size / num_attention_heads.
    return getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads


def require_default_head_dim(hf: Any, why: str) -> None:
    default = hf.hidden_size // hf.num_attention_heads
    require_hf(
        hf,
        "head_dim",
        lambda v: v in (None, default) and hf.hidden_size % hf.num_attention_heads == 0,
        f"{why}; expected hidden_size / num_attention_heads = {default}",
    )


def rope_theta(hf: Any) -> float:
    params = getattr(hf, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type != "default":
        raise ConfigError(
            hf_key(hf, "rope_parameters.rope_type"),
            f"{rope_type!r} is not supported: moe_lab has plain RoPE only; expected 'default'",
        )
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError(
            hf_key(hf, "rope_parameters.partial_rotary_factor"),
            f"{params['partial_rotary_factor']!r} is not supported; expected 1.0",
        )
    return float(params.get("rope_theta", getattr(hf, "rope_theta", 10000.0)))


def trunk_fields(hf: Any) -> dict:
    """ModelConfig fields of the trunk every supported architecture shares."""
    require_hf(hf, "hidden_act", "silu", "moe_lab's gated FFNs are SwiGLU")
    # Training-only settings that moe_lab would reproduce differently (its `dropout` also drops
    # residual branches), so a fine-tune would silently train another model.
    require_hf(hf, "attention_dropout", lambda v: not v, "moe_lab has no attention-only dropout; expected 0.0")
    hd = hf_head_dim(hf)
    default_hd = hf.hidden_size // hf.num_attention_heads
    explicit_hd = hd != default_hd or hf.hidden_size % hf.num_attention_heads != 0
    return dict(
        vocab_size=hf.vocab_size,
        d_model=hf.hidden_size,
        n_layers=hf.num_hidden_layers,
        n_heads=hf.num_attention_heads,
        n_kv_heads=hf.num_key_value_heads or hf.num_attention_heads,
        head_dim=hd if explicit_hd else 0,
        max_seq_len=hf.max_position_embeddings,
        rope_theta=rope_theta(hf),
        norm="rmsnorm",
        norm_eps=float(hf.rms_norm_eps),
        activation="swiglu",
        tie_embeddings=bool(hf.tie_word_embeddings),
        dropout=0.0,
        init_std=float(hf.initializer_range),
    )


def aux_loss_coef_from_hf(router_aux_loss_coef: float, top_k: int) -> float:
    """transformers' `load_balancing_loss_func` counts all k assignments of a token (its f sums to k,
    so the loss is k at balance); moe_lab's f sums to 1 (the loss is 1.0 at balance). Scaling the
    coefficient by k makes the weighted terms equal for one MoE layer; over several, see README."""
    return float(router_aux_loss_coef) * top_k


def aux_loss_coef_to_hf(cfg: ModelConfig) -> float:
    """The inverse, for transformers' term over all MoE layers pooled (about their mean): a "sum"
    reduction's coefficient acts n_moe_layers times, so it is scaled up by that count."""
    moe = cfg.moe
    layers = len(moe_layer_indices(cfg)) if moe.router_loss_reduction == "sum" else 1
    return float(moe.aux_loss_coef) * layers / moe.top_k


def router_fields(hf: Any, n_experts: int, renormalize: bool) -> dict:
    """MoEConfig fields of the HF router (HF_ROUTER), dropless."""
    return dict(
        n_experts=n_experts,
        top_k=hf.num_experts_per_tok,
        router=HF_ROUTER,
        renormalize=renormalize,
        capacity_factor=0.0,
        eval_capacity_factor=0.0,
        aux_loss_coef=aux_loss_coef_from_hf(hf.router_aux_loss_coef, hf.num_experts_per_tok),
        router_loss_reduction="mean",  # transformers pools all MoE layers' tokens: close to their mean
        z_loss_coef=0.0,
    )


# ------------------------------------------------------------------ moe_lab -> HF config, shared parts


def require_model(ok: bool, key: str, value: Any, arch: str, expected: str) -> None:
    if not ok:
        raise ConfigError(key, f"{value!r} cannot be exported as {arch}: expected {expected}")


def trunk_hf_fields(cfg: ModelConfig, arch: str) -> dict:
    """HF config kwargs of the shared trunk and router; options HF cannot express raise."""
    moe = cfg.moe
    require_model(cfg.norm == "rmsnorm", "model.norm", cfg.norm, arch, "'rmsnorm'")
    require_model(cfg.activation == "swiglu", "model.activation", cfg.activation, arch, "'swiglu'")
    if moe_layer_indices(cfg):
        require_model(moe.router == HF_ROUTER, "model.moe.router", moe.router, arch, repr(HF_ROUTER))
        require_model(
            moe.granularity == 1,
            "model.moe.granularity",
            moe.granularity,
            arch,
            "1 (export the split experts' sizes instead)",
        )
        # HF MoE blocks are dropless; training-time capacity (capacity_factor) is not part of the
        # function a trained model computes, eval-time capacity is.
        require_model(
            moe.eval_capacity_factor == 0,
            "model.moe.eval_capacity_factor",
            moe.eval_capacity_factor,
            arch,
            "0 (dropless)",
        )
    return dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads or cfg.n_heads,
        max_position_embeddings=cfg.max_seq_len,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        rms_norm_eps=cfg.norm_eps,
        hidden_act="silu",
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std,
        attention_dropout=0.0,
        num_experts_per_tok=moe.top_k,
        router_aux_loss_coef=aux_loss_coef_to_hf(cfg),
    )


def require_default_model_head_dim(cfg: ModelConfig, arch: str, why: str) -> None:
    default = cfg.d_model // cfg.n_heads if cfg.d_model % cfg.n_heads == 0 else None
    require_model(head_dim(cfg) == default, "model.head_dim", cfg.head_dim, arch, f"0 (d_model / n_heads): {why}")


def require_all_moe(cfg: ModelConfig, arch: str) -> None:
    layers = moe_layer_indices(cfg)
    require_model(
        len(layers) == cfg.n_layers, "model.moe.placement", cfg.moe.placement, arch, "'all' (every layer an MoE layer)"
    )


def require_no_shared(cfg: ModelConfig, arch: str) -> None:
    require_model(
        expert_dims(cfg).shared_hidden == 0,
        "model.moe.n_shared_experts",
        cfg.moe.n_shared_experts,
        arch,
        "0 (no shared experts)",
    )
