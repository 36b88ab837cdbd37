"""Schema of the model section of an experiment config, and its validation.

Plain dataclasses so OmegaConf can use them as a structured config (YAML fills them, `model.x=y`
overrides them). Every rule about what a valid model is lives in `validate_model_config`, which runs
before any tensor is built; the experiment-level schema in `moe_lab.config` embeds these classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from moe_lab.checks import above, at_least, in_range, one_of
from moe_lab.errors import ConfigError
from moe_lab.model.routers import ROUTER_REGISTRY

PLACEMENTS = ("all", "none", "every_n", "last_half", "first_k_dense", "list")
ACTIVATIONS = ("swiglu", "gelu", "relu")
NORMS = ("rmsnorm", "layernorm")
AUX_LOSS_SCOPES = ("batch", "sequence", "global")
ROUTER_LOSS_REDUCTIONS = ("sum", "mean")
QK_NORMS = ("none", "head", "full")


@dataclass
class MoEConfig:
    # Routed experts before the granularity split (DeepSeekMoE: each expert is cut into `granularity`
    # narrower ones and top_k is multiplied by the same factor, so active compute is unchanged).
    n_experts: int = 8
    top_k: int = 2
    granularity: int = 1
    # Hidden width of one routed expert before the granularity split; 0 means the dense `d_ff`.
    expert_hidden: int = 0
    router: str = "topk"
    # Renormalise the selected weights to sum to 1 (Mixtral, DeepSeek-V3) or keep the raw gate values
    # (Switch). null (the default) means auto: renormalise when a token picks >= 2 experts (after the
    # granularity split), raw gate values at k=1. Renormalising a single weight gives p/p = 1.0 for
    # every token, which cuts the router off from the LM loss, so `true` at k=1 is refused.
    renormalize: bool | None = None
    # Switch Transformer's multiplicative input jitter, U(1-eps, 1+eps), training only; 0 disables.
    # topk only: each router declares the keys it reads, and validation refuses the others'.
    router_jitter: float = 0.0
    # Tokens an expert may take: ceil(factor * tokens * top_k / n_experts); 0 means dropless.
    # Expert choice always has a capacity: 0 there means factor 1.0.
    capacity_factor: float = 0.0
    eval_capacity_factor: float = 0.0
    # Always-on shared experts (DeepSeekMoE, Qwen-MoE); width 0 means the routed expert width.
    n_shared_experts: int = 0
    shared_expert_hidden: int = 0
    # Scale the shared experts' output per token by sigmoid(x W_g), W_g [1, d_model], so the layer learns
    # how much of the always-on path each token takes (Qwen1.5-MoE / Qwen2-MoE `shared_expert_gate`).
    shared_expert_gate: bool = False
    # Loss coefficients (0 disables the term in the training loss; the value is still logged).
    aux_loss_coef: float = 0.01
    # Where the load fractions f_i of the aux loss are counted: "batch" (the rank's micro-batch), "sequence"
    # (per sequence, DeepSeek-V3) or "global" (all data-parallel ranks' micro-batches: Megatron's global
    # scope, which balances the global batch; in training only: evaluation counts the rank's batch, since a
    # rank may evaluate alone). On one process "global" is "batch".
    aux_loss_scope: str = "batch"
    z_loss_coef: float = 0.001
    # How the MoE layers' aux and z losses enter the training loss. "sum" (Switch Transformer, ST-MoE: each
    # MoE layer adds coef * its own loss) or "mean" over the MoE layers, where a coefficient acts as
    # coef / n_moe_layers per layer: mean with c equals sum with c / n_moe_layers. The logged train/aux_loss
    # and train/z_loss are the layer mean either way, comparable across placements.
    router_loss_reduction: str = "sum"
    # sigmoid_bias: the per-expert selection bias moves by this much per update (DeepSeek-V3 gamma).
    bias_update_speed: float = 0.001
    # Which transformer layers get an MoE FFN.
    placement: str = "all"
    every_n: int = 2
    first_k_dense: int = 1
    layers: list[int] = field(default_factory=list)


@dataclass
class ModelConfig:
    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    # Grouped-query attention: number of key/value heads; 0 means n_heads (plain multi-head).
    n_kv_heads: int = 0
    # Width of one attention head; 0 means d_model // n_heads. Qwen3-MoE uses wider heads than that
    # (e.g. 32 heads of 128 on d_model 2048), so q/o project between d_model and n_heads * head_dim.
    head_dim: int = 0
    # RMSNorm on queries and keys before RoPE, which keeps attention logits from growing without bound
    # (QK-norm: Dehghani et al. 2023, ViT-22B; Wortsman et al. 2023): "none"; "head": over each head's
    # head_dim with one weight shared by all heads (Qwen3); "full": over the whole q and k projections
    # (OLMoE).
    qk_norm: str = "none"
    # Learned biases on the q/k/v projections (Qwen2); the output projection never has one.
    attention_bias: bool = False
    d_ff: int = 1024
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    activation: str = "swiglu"
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    moe: MoEConfig = field(default_factory=MoEConfig)


@dataclass(frozen=True)
class ExpertDims:
    """What the MoE layer builds: the routed experts after the granularity split (the config's
    `n_experts`, `top_k` and `expert_hidden` are before it), and the shared experts' total width."""

    n_routed_experts: int  # n_experts * granularity: the experts the router chooses among
    routed_top_k: int  # top_k * granularity: the experts each token is routed to
    routed_hidden: int  # (expert_hidden or d_ff) / granularity: the width of one routed expert
    shared_hidden: int  # total width of all shared experts together (0 = none)


def head_dim(cfg: ModelConfig) -> int:
    """Width of one attention head, resolving the 0 default."""
    return cfg.head_dim or cfg.d_model // cfg.n_heads


def routed_top_k(moe: MoEConfig) -> int:
    """Experts each token is routed to after the granularity split: top_k * granularity."""
    return moe.top_k * moe.granularity


def expert_dims(cfg: ModelConfig) -> ExpertDims:
    moe = cfg.moe
    base_hidden = moe.expert_hidden or cfg.d_ff
    hidden = base_hidden // moe.granularity
    shared_one = moe.shared_expert_hidden or hidden
    return ExpertDims(
        n_routed_experts=moe.n_experts * moe.granularity,
        routed_top_k=routed_top_k(moe),
        routed_hidden=hidden,
        shared_hidden=moe.n_shared_experts * shared_one,
    )


def renormalizes(moe: MoEConfig) -> bool:
    """Whether the selected gate weights are renormalised, resolving the auto (null) default:
    only where it keeps a gradient path from the LM loss to the router, i.e. k >= 2 after the split."""
    if moe.renormalize is None:
        return routed_top_k(moe) >= 2
    return bool(moe.renormalize)


def moe_layer_indices(cfg: ModelConfig) -> list[int]:
    """Indices of the layers whose FFN is an MoE layer."""
    moe, n = cfg.moe, cfg.n_layers
    if moe.placement == "none":
        return []
    if moe.placement == "all":
        return list(range(n))
    if moe.placement == "every_n":
        # GShard / Switch interleaving: dense, MoE, dense, MoE, ... (every n-th layer is MoE).
        return [i for i in range(n) if i % moe.every_n == moe.every_n - 1]
    if moe.placement == "last_half":
        return list(range(n // 2, n))
    if moe.placement == "first_k_dense":
        return list(range(moe.first_k_dense, n))
    return sorted(moe.layers)


def capacity(factor: float, n_tokens: int, routed_top_k: int, n_routed_experts: int) -> int:
    """Per-expert token capacity, GShard/Switch: ceil(factor * tokens * k / E), k and E after the split."""
    return max(1, math.ceil(factor * n_tokens * routed_top_k / n_routed_experts))


def validate_model_config(cfg: ModelConfig, prefix: str = "model") -> None:
    """Raise ConfigError naming the offending key; runs before any tensor exists."""
    k = lambda name: f"{prefix}.{name}"  # noqa: E731 - tiny key builder
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
        at_least(k(name), getattr(cfg, name), 1)
    at_least(k("n_kv_heads"), cfg.n_kv_heads, 0)
    at_least(k("head_dim"), cfg.head_dim, 0)
    if cfg.head_dim:
        if cfg.head_dim % 2:
            raise ConfigError(k("head_dim"), f"{cfg.head_dim} must be even for RoPE")
    elif cfg.d_model % cfg.n_heads:
        raise ConfigError(k("d_model"), f"{cfg.d_model} is not divisible by {k('n_heads')}={cfg.n_heads}")
    elif (cfg.d_model // cfg.n_heads) % 2:
        raise ConfigError(k("d_model"), f"head dim {cfg.d_model // cfg.n_heads} must be even for RoPE")
    if cfg.n_kv_heads and cfg.n_heads % cfg.n_kv_heads:
        raise ConfigError(k("n_kv_heads"), f"{k('n_heads')}={cfg.n_heads} is not a multiple of {cfg.n_kv_heads}")
    above(k("rope_theta"), cfg.rope_theta, 0)
    one_of(k("norm"), cfg.norm, NORMS)
    one_of(k("qk_norm"), cfg.qk_norm, QK_NORMS)
    one_of(k("activation"), cfg.activation, ACTIVATIONS)
    in_range(k("dropout"), cfg.dropout, 0, 1)
    above(k("init_std"), cfg.init_std, 0)
    _validate_moe(cfg, prefix)


def _validate_moe(cfg: ModelConfig, prefix: str) -> None:
    moe = cfg.moe
    k = lambda name: f"{prefix}.moe.{name}"  # noqa: E731
    one_of(k("placement"), moe.placement, PLACEMENTS)
    one_of(k("router"), moe.router, tuple(ROUTER_REGISTRY))
    one_of(k("aux_loss_scope"), moe.aux_loss_scope, AUX_LOSS_SCOPES)
    one_of(k("router_loss_reduction"), moe.router_loss_reduction, ROUTER_LOSS_REDUCTIONS)
    for name in (
        "router_jitter",
        "capacity_factor",
        "eval_capacity_factor",
        "aux_loss_coef",
        "z_loss_coef",
        "bias_update_speed",
        "n_shared_experts",
        "shared_expert_hidden",
        "expert_hidden",
        "n_experts",
    ):
        at_least(k(name), getattr(moe, name), 0)
    at_least(k("granularity"), moe.granularity, 1)
    if moe.router_jitter >= 1:
        raise ConfigError(k("router_jitter"), f"must be < 1, got {moe.router_jitter}")
    if moe.placement == "every_n":
        at_least(k("every_n"), moe.every_n, 1)
    if moe.placement == "first_k_dense" and not 0 <= moe.first_k_dense < cfg.n_layers:
        raise ConfigError(k("first_k_dense"), f"{moe.first_k_dense} must be in [0, {prefix}.n_layers={cfg.n_layers})")
    if moe.placement == "list":
        if not moe.layers:
            raise ConfigError(k("layers"), "placement 'list' needs at least one layer index")
        for i in moe.layers:
            if not 0 <= i < cfg.n_layers:
                raise ConfigError(k("layers"), f"layer index {i} is outside [0, {prefix}.n_layers={cfg.n_layers})")
        if len(set(moe.layers)) != len(moe.layers):
            raise ConfigError(k("layers"), f"duplicate layer index in {list(moe.layers)}")
    if not moe_layer_indices(cfg):
        return  # dense model: the remaining keys are unused
    at_least(k("n_experts"), moe.n_experts, 1)
    at_least(k("top_k"), moe.top_k, 1)
    if moe.top_k > moe.n_experts:
        raise ConfigError(k("top_k"), f"{moe.top_k} > {k('n_experts')}={moe.n_experts}")
    _refuse_ignored_router_options(moe, k)
    if moe.renormalize and ROUTER_REGISTRY[moe.router].token_choice and routed_top_k(moe) == 1:
        raise ConfigError(
            k("renormalize"),
            "true with top_k=1 makes every gate weight p/p = 1.0, so the LM loss never reaches "
            "the router (only the aux/z losses train it); use false (Switch: raw gate value) "
            "or null (auto)",
        )
    if moe.shared_expert_gate and not moe.n_shared_experts:
        raise ConfigError(k("shared_expert_gate"), f"needs {k('n_shared_experts')} >= 1, got 0")
    base_hidden = moe.expert_hidden or cfg.d_ff
    if base_hidden % moe.granularity:
        raise ConfigError(
            k("granularity"), f"expert width {base_hidden} is not divisible by granularity {moe.granularity}"
        )


def router_options(moe: MoEConfig) -> dict:
    """The keyword arguments of the configured router: the options it declares, resolved."""
    resolved = {"renormalize": renormalizes(moe)}
    return {key: resolved.get(key, getattr(moe, key)) for key in ROUTER_REGISTRY[moe.router].options}


def _refuse_ignored_router_options(moe: MoEConfig, k) -> None:
    """A router-specific key (one some router declares in `options`) set away from its default for a
    router that does not read it would be silently ignored: refuse it, naming the routers that read it."""
    defaults = MoEConfig()
    for key in sorted({key for cls in ROUTER_REGISTRY.values() for key in cls.options}):
        value = getattr(moe, key)
        if key in ROUTER_REGISTRY[moe.router].options or value == getattr(defaults, key):
            continue
        readers = ", ".join(name for name, cls in ROUTER_REGISTRY.items() if key in cls.options)
        raise ConfigError(
            k(key),
            f"{value!r} is ignored by router {moe.router!r}; only {readers} read it "
            f"(leave it at {getattr(defaults, key)!r})",
        )
