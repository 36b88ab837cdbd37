"""Parameter and FLOP counts per component, computed from the config alone.

No model is built, so a sweep can size experts for iso-active-parameter comparisons before any
tensor exists. The tests check every number against the module tree and against torch's FLOP counter.
"""

from __future__ import annotations

from dataclasses import dataclass

from moe_lab.model.config import ModelConfig, expert_dims, head_dim, moe_layer_indices
from moe_lab.model.ffn import gated
from moe_lab.model.routers import ROUTER_REGISTRY

COMPONENTS = ("embedding", "attention", "dense_ffn", "experts", "shared_experts", "router", "norm", "lm_head")


@dataclass
class ModelCounts:
    params: dict[str, int]  # component -> parameters stored
    active_params: dict[str, float]  # component -> parameters used per token (routed: top_k / E of them)
    flops_per_token: dict[str, float]  # component -> forward FLOPs per token (multiply-add = 2)

    @property
    def total_params(self) -> int:
        return sum(self.params.values())

    @property
    def total_active_params(self) -> float:
        return sum(self.active_params.values())

    @property
    def total_flops_per_token(self) -> float:
        return sum(self.flops_per_token.values())

    def as_dict(self) -> dict:
        return {
            "params": self.params,
            "active_params": self.active_params,
            "flops_per_token": self.flops_per_token,
            "total_params": self.total_params,
            "total_active_params": self.total_active_params,
            "total_flops_per_token": self.total_flops_per_token,
        }


def ffn_params(d_model: int, hidden: int, activation: str) -> int:
    return d_model * hidden * (3 if gated(activation) else 2)


def count_model(cfg: ModelConfig, seq_len: int | None = None) -> ModelCounts:
    """Counts for `cfg`; FLOPs include attention over `seq_len` keys (default max_seq_len), counted
    as dense SDPA kernels compute it (QK^T and AV over all keys; causal skipping not discounted)."""
    D, L, V = cfg.d_model, cfg.n_layers, cfg.vocab_size
    S = seq_len or cfg.max_seq_len
    hd = head_dim(cfg)
    q_width = cfg.n_heads * hd
    kv = (cfg.n_kv_heads or cfg.n_heads) * hd
    n_moe = len(moe_layer_indices(cfg))
    n_dense = L - n_moe
    dims = expert_dims(cfg)

    attention_weights = L * (2 * D * q_width + 2 * D * kv)  # q and o, k and v
    attention_biases = L * (q_width + 2 * kv) if cfg.attention_bias else 0
    qk_norm = {"none": 0, "head": 2 * hd, "full": q_width + kv}[cfg.qk_norm]
    dense_ffn = n_dense * ffn_params(D, cfg.d_ff, cfg.activation)
    one_expert = ffn_params(D, dims.routed_hidden, cfg.activation)
    experts = n_moe * dims.n_routed_experts * one_expert
    shared_gate = D if cfg.moe.shared_expert_gate else 0  # sigmoid gate [1, D]
    shared = n_moe * (ffn_params(D, dims.shared_hidden, cfg.activation) + shared_gate)
    router = n_moe * ROUTER_REGISTRY[cfg.moe.router].n_projections * D * dims.n_routed_experts
    params = {
        "embedding": V * D,
        "attention": attention_weights + attention_biases,
        "dense_ffn": dense_ffn,
        "experts": experts,
        "shared_experts": shared,
        "router": router,
        "norm": (2 * L + 1) * D + L * qk_norm,
        "lm_head": 0 if cfg.tie_embeddings else V * D,
    }
    active = {k: float(v) for k, v in params.items()}
    active["experts"] = float(n_moe * dims.routed_top_k * one_expert)
    # Forward FLOPs: 2 per weight used in a matmul; the embedding lookup, norms and bias adds do no
    # matmul. The LM head is a matmul even when its weight is tied to the embedding.
    flops = {"attention": 2.0 * attention_weights + L * 4.0 * S * q_width}  # + scores QK^T and AV
    flops.update({k: 2.0 * active[k] for k in ("dense_ffn", "experts", "shared_experts", "router")})
    flops.update(embedding=0.0, norm=0.0, lm_head=2.0 * V * D)
    return ModelCounts(params=params, active_params=active, flops_per_token=flops)
