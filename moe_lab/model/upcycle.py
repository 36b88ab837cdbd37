"""Sparse upcycling: the state dict of an MoE model started from a trained dense one.

Sparse Upcycling (Komatsuzaki et al. 2022, sec. 3): everything outside the FFNs (embeddings, attention,
norms, the dense layers' FFNs) is copied, and each MoE layer's experts are filled from the dense FFN of
that layer. Router weights keep the MoE model's own fresh initialisation, as in the paper; so do the
other MoE-only tensors (a noisy router's noise projection, a sigmoid router's bias, the shared-expert gate).

How the dense FFN's d_ff hidden units are laid out over the experts (`ffn_slices`):
- shared experts, if any, take the first `shared_hidden` hidden units: always on, like the dense FFN;
- the routed experts split the remaining d_ff - shared_hidden units into slices of their own width h
  (fine-grained experts, DeepSeekMoE's granularity): routed expert j takes slice j mod (remaining / h),
  so a token's active parameters stay those of the dense FFN when its experts hold distinct slices.
  Full-width experts (h = d_ff, no shared experts) are Sparse Upcycling's plain copies.

The MoE layer then computes shared(x) + sum_j w_j expert_j(x). It equals the dense FFN exactly when every
slice's gate weights sum to 1 for each token: the routed experts are copies of one slice (h = d_ff minus
the shared width) and the selected gate weights sum to 1 (renormalised, or softmax over all experts),
with no token dropped for capacity and no shared-expert gate. Routed experts that hold different slices
under gates that sum to 1 give each slice only its share of the weight: with uniform gates over all
experts, the FFN output is 1/S of the dense one for S slices.

Methods (`UPCYCLE_METHODS`), applied to the routed experts only (shared experts stay exact copies):
- copy: the slices as they are;
- copy_noise: plus Gaussian noise, std `noise_std` times the std of the dense matrix it came from;
- drop: Drop-Upcycling (Nakamura et al. 2025, sec. 3): in each expert independently, round(drop_ratio * h)
  hidden units (a row of W_gate and W_up, a column of W_down) are re-initialised from N(mean, std) of
  the original dense matrix, so experts start diverse while keeping most of the dense knowledge.
"""

from __future__ import annotations

import torch

from moe_lab.checks import require
from moe_lab.model.config import ModelConfig, expert_dims, head_dim, moe_layer_indices
from moe_lab.model.ffn import gated

UPCYCLE_METHODS = ("copy", "copy_noise", "drop")
# Everything outside the FFNs is copied from the dense model, so its shapes, and what the copied weights
# compute with them, must be the dense model's (resolved: n_kv_heads 0 means n_heads).
MATCHING_KEYS = (
    "vocab_size",
    "d_model",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "head_dim",
    "qk_norm",
    "attention_bias",
    "norm",
    "tie_embeddings",
    "activation",
)


def _resolved(cfg: ModelConfig, key: str):
    if key == "n_kv_heads":
        return cfg.n_kv_heads or cfg.n_heads
    if key == "head_dim":
        return head_dim(cfg)
    return getattr(cfg, key)


def ffn_slices(dense: ModelConfig, moe: ModelConfig) -> tuple[int, int]:
    """(shared_hidden, n_slices): the dense FFN's first shared_hidden units go to the shared experts, the
    rest split into n_slices slices of one routed expert's width. ConfigError naming the key when the
    widths cannot be laid out that way."""
    dims = expert_dims(moe)
    width_key = "model.moe.expert_hidden" if moe.moe.expert_hidden else "model.d_ff"
    shared_key = "model.moe.shared_expert_hidden" if moe.moe.shared_expert_hidden else "model.moe.n_shared_experts"
    require(
        dims.shared_hidden < dense.d_ff,
        shared_key,
        f"the shared experts' width {dims.shared_hidden} leaves none of the dense model's d_ff={dense.d_ff} "
        f"hidden units to the routed experts; upcycling needs it below {dense.d_ff}",
    )
    remaining = dense.d_ff - dims.shared_hidden
    require(
        remaining % dims.routed_hidden == 0,
        width_key,
        f"routed experts of width {dims.routed_hidden} (after granularity {moe.moe.granularity}) cannot split "
        f"the dense model's {remaining} FFN hidden units (d_ff={dense.d_ff} minus {dims.shared_hidden} shared); "
        f"the width must divide it",
    )
    return dims.shared_hidden, remaining // dims.routed_hidden


def check_upcyclable(dense: ModelConfig, moe: ModelConfig, source: str = "the dense model") -> None:
    """ConfigError naming the first key at fault unless `moe` can be upcycled from `dense` (read from
    `source`): a dense model with the same dimensions outside the FFNs and FFN widths the experts can split."""
    dense_moe_layers = moe_layer_indices(dense)
    require(
        not dense_moe_layers,
        "upcycle.source",
        f"{source} has MoE layers {dense_moe_layers}; upcycling starts from a dense model (model.moe.placement=none)",
    )
    for key in MATCHING_KEYS:
        mine, theirs = _resolved(moe, key), _resolved(dense, key)
        require(mine == theirs, f"model.{key}", f"{mine!r} here, {theirs!r} in the dense model {source}; must match")
    moe_layers = moe_layer_indices(moe)
    if len(moe_layers) < moe.n_layers:  # the MoE model's own dense layers are copied as they are
        require(
            moe.d_ff == dense.d_ff,
            "model.d_ff",
            f"{moe.d_ff} here, {dense.d_ff} in the dense model {source}; the dense layers are copied as they are",
        )
    if moe_layers:
        ffn_slices(dense, moe)


def upcycle_state_dict(
    dense_cfg: ModelConfig,
    dense_state: dict[str, torch.Tensor],
    moe_cfg: ModelConfig,
    moe_state: dict[str, torch.Tensor],
    method: str,
    *,
    noise_std: float = 0.0,
    drop_ratio: float = 0.5,
    generator: torch.Generator | None = None,
    source: str = "the dense model",
) -> dict[str, torch.Tensor]:
    """The state dict of the MoE model `moe_cfg` describes, upcycled from the dense `dense_state` with
    `method` (UPCYCLE_METHODS). `moe_state`: the MoE model's freshly initialised state dict, whose router
    weights (and other MoE-only tensors) are kept; every other tensor comes from the dense model, in the
    dtype of `moe_state`. `generator` draws the noise and the dropped units (CPU tensors)."""
    require(method in UPCYCLE_METHODS, "upcycle.method", f"unknown value {method!r}; expected one of {UPCYCLE_METHODS}")
    check_upcyclable(dense_cfg, moe_cfg, source)
    moe_ffns = tuple(f"blocks.{i}.ffn." for i in moe_layer_indices(moe_cfg))
    state = {
        name: (init if name.startswith(moe_ffns) else dense_state[name]).to(init.dtype)
        for name, init in moe_state.items()
    }
    shared_hidden, n_slices = ffn_slices(dense_cfg, moe_cfg)
    dims = expert_dims(moe_cfg)
    for prefix in moe_ffns:
        ins_FD, down_DF = _dense_ffn(dense_state, prefix, moe_cfg.activation)  # the same names in both models
        # [E, H] the dense hidden unit each routed expert's unit copies: slice (j mod n_slices) after the shared units.
        slice_E = torch.arange(dims.n_routed_experts) % n_slices
        unit_EH = shared_hidden + slice_E[:, None] * dims.routed_hidden + torch.arange(dims.routed_hidden)
        w_in, w_out = _routed_experts(ins_FD, down_DF, unit_EH, method, noise_std, drop_ratio, generator)
        state[prefix + "experts.w_in"] = w_in.to(moe_state[prefix + "experts.w_in"].dtype)
        state[prefix + "experts.w_out"] = w_out.to(moe_state[prefix + "experts.w_out"].dtype)
        if shared_hidden:
            shared_in = torch.cat([m[:shared_hidden] for m in ins_FD])  # [gate | up] as DenseFFN fuses them
            state[prefix + "shared.w_in.weight"] = shared_in.to(moe_state[prefix + "shared.w_in.weight"].dtype)
            shared_out = down_DF[:, :shared_hidden]
            state[prefix + "shared.w_out.weight"] = shared_out.to(moe_state[prefix + "shared.w_out.weight"].dtype)
    return {name: t.contiguous() for name, t in state.items()}


def _dense_ffn(
    dense_state: dict[str, torch.Tensor], prefix: str, activation: str
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """A dense FFN's input projections, each [F, D] (SwiGLU: gate and up, moe_lab.model.ffn fuses them
    row-wise as [gate | up]; GELU/ReLU: up), and its output projection [D, F]."""
    # At least fp32: the statistics and the noise of a bf16 checkpoint's weights are taken in fp32.
    w_in, w_out = (dense_state[prefix + name] for name in ("w_in.weight", "w_out.weight"))
    w_in, w_out = (w.to(torch.promote_types(w.dtype, torch.float32)) for w in (w_in, w_out))
    ins_FD = tuple(w_in.chunk(2, dim=0)) if gated(activation) else (w_in,)
    return ins_FD, w_out


def _routed_experts(
    ins_FD: tuple[torch.Tensor, ...],
    down_DF: torch.Tensor,
    unit_EH: torch.Tensor,
    method: str,
    noise_std: float,
    drop_ratio: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked expert weights (moe_lab.model.experts: w_in [E, n_in * H, D], w_out [E, D, H]) whose hidden
    unit (e, h) copies the dense unit unit_EH[e, h], changed by `method`."""
    E, H = unit_EH.shape
    ins_EHD = [m[unit_EH] for m in ins_FD]
    down_EDH = down_DF[:, unit_EH].permute(1, 0, 2)
    if method == "drop":
        # Drop-Upcycling sec. 3: each expert draws its own round(r * H) units to re-initialise.
        n_drop = round(drop_ratio * H)
        chosen = torch.rand(E, H, generator=generator).argsort(dim=1)[:, :n_drop]  # [E, n_drop]
        drop_EH = torch.zeros(E, H, dtype=torch.bool).scatter_(1, chosen, True)
        ins_EHD = [
            torch.where(drop_EH[:, :, None], _like(m_FD, x_EHD, generator), x_EHD)
            for m_FD, x_EHD in zip(ins_FD, ins_EHD, strict=True)
        ]
        down_EDH = torch.where(drop_EH[:, None, :], _like(down_DF, down_EDH, generator), down_EDH)
    elif method == "copy_noise":
        ins_EHD = [
            x_EHD + noise_std * m_FD.std() * _randn(x_EHD, generator)
            for m_FD, x_EHD in zip(ins_FD, ins_EHD, strict=True)
        ]
        down_EDH = down_EDH + noise_std * down_DF.std() * _randn(down_EDH, generator)
    return torch.cat(ins_EHD, dim=1), down_EDH


def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)


def _like(original: torch.Tensor, shape_of: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Fresh values shaped like `shape_of`, drawn from N(mean, std) of the `original` dense matrix."""
    return original.mean() + original.std() * _randn(shape_of, generator)
