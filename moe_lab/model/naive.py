"""Reference MoE dispatch: a Python loop over experts, written the way transformers' Mixtral block is.

Never used by the model. It exists so the tests can check the vectorised dispatch against an
implementation that shares none of its indexing tricks, and so `moe_lab.bench` can time the
common per-expert loop (a boolean mask per expert, separate gate/up/down matmuls, index_add_).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moe_lab.model.experts import DispatchResult, GroupedExperts
from moe_lab.model.moe import MoELayer
from moe_lab.model.routers import Routing


def expert_mlp(x: torch.Tensor, experts: GroupedExperts, e: int) -> torch.Tensor:
    """One expert on its tokens with plain autograd ops (HF's MixtralBlockSparseTop2MLP)."""
    w_in, w_out = experts.w_in[e], experts.w_out[e]
    if experts.activation == "swiglu":
        w_gate, w_up = w_in.chunk(2, dim=0)
        h = F.silu(x @ w_gate.t()) * (x @ w_up.t())
    else:
        h = x @ w_in.t()
        h = F.gelu(h) if experts.activation == "gelu" else F.relu(h)
    return h @ w_out.t()


def naive_dispatch(
    x: torch.Tensor,
    experts: GroupedExperts,
    token_idx: torch.Tensor,
    expert_idx: torch.Tensor,
    weight: torch.Tensor,
    capacity: int | None,
) -> tuple[torch.Tensor, int]:
    """x [T, D]; assignments in priority order. Returns (out [T, D], assignments dropped)."""
    out = torch.zeros_like(x)
    dropped = 0
    for e in range(experts.n_experts):
        # Positions of expert e's assignments, in priority order; keep the first `capacity`.
        mask = expert_idx == e
        if capacity is not None:
            over = mask & (mask.cumsum(0) > capacity)
            dropped += int(over.sum())
            mask = mask & ~over
        (pos,) = torch.where(mask)
        if pos.numel() == 0:
            continue
        tokens = token_idx[pos]
        y = expert_mlp(x[tokens], experts, e)
        out.index_add_(0, tokens, y * weight[pos].unsqueeze(-1).to(y.dtype))
    return out, dropped


class NaiveMoELayer(MoELayer):
    """MoELayer with the per-expert loop instead of the grouped dispatch; same router and losses."""

    def dispatch(self, x_TD: torch.Tensor, routing: Routing, cap: int | None) -> DispatchResult:
        out, dropped = naive_dispatch(x_TD, self.experts, routing.token_idx, routing.expert_idx, routing.weight, cap)
        counts = torch.bincount(routing.expert_idx, minlength=self.n_routed_experts)
        return DispatchResult(out=out, expert_counts=counts, n_dropped=counts.new_tensor(dropped))
