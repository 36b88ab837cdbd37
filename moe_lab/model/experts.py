"""Routed experts with stacked weights, and the vectorised dispatch -> expert compute -> combine.

Dispatch is one stable sort of the (token, expert) assignments by expert, a gather of the token
states into expert-contiguous order, one grouped matmul per projection (`F.grouped_mm`, a single
kernel over all experts), and an `index_add_` back into token order weighted by the gate. Capacity
dropping is a mask on the sorted order, so it costs no extra pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moe_lab.model.ffn import apply_activation, gated
from moe_lab.model.grouped_gemm import grouped_linear


@dataclass
class DispatchResult:
    out: torch.Tensor  # [T, D] weighted sum of expert outputs per token (0 where all were dropped)
    expert_counts: torch.Tensor  # [E] assignments routed to each expert, before capacity dropping
    n_dropped: torch.Tensor  # scalar: assignments dropped for capacity


@dataclass
class ExpertOrder:
    sorted_idx: torch.Tensor  # [A] kept assignments, grouped by expert, priority order inside each group
    counts: torch.Tensor  # [E] assignments routed to each expert, before capacity dropping
    kept_counts: torch.Tensor  # [E] assignments each expert keeps
    n_dropped: torch.Tensor  # scalar: assignments dropped for capacity


def sort_by_expert(expert_idx: torch.Tensor, n_experts: int, capacity: int | None) -> ExpertOrder:
    """Group the assignments by expert and drop each expert's assignments past `capacity` (None: dropless).

    Shared by the single-device dispatch and the expert-parallel one (`moe_lab.parallel`), so both drop
    the same assignments.
    """
    counts_E = torch.bincount(expert_idx, minlength=n_experts)
    # Stable sort keeps priority order inside each expert's group, which is what capacity
    # dropping needs: the first `capacity` assignments of each expert are kept.
    sorted_idx_A = torch.argsort(expert_idx, stable=True)
    if capacity is None:
        return ExpertOrder(
            sorted_idx=sorted_idx_A, counts=counts_E, kept_counts=counts_E, n_dropped=counts_E.new_zeros(())
        )
    group_start_E = counts_E.cumsum(0) - counts_E
    rank_in_expert_A = (
        torch.arange(sorted_idx_A.numel(), device=expert_idx.device) - group_start_E[expert_idx[sorted_idx_A]]
    )
    kept_counts_E = counts_E.clamp(max=capacity)
    return ExpertOrder(
        sorted_idx=sorted_idx_A[rank_in_expert_A < capacity],  # from here A counts the kept assignments
        counts=counts_E,
        kept_counts=kept_counts_E,
        n_dropped=counts_E.sum() - kept_counts_E.sum(),
    )


class GroupedExperts(nn.Module):
    """E FFN experts whose weights are stacked so all experts run in one grouped matmul."""

    def __init__(self, n_experts: int, d_model: int, hidden: int, activation: str):
        super().__init__()
        self.n_experts, self.hidden, self.activation = n_experts, hidden, activation
        n_in = hidden * (2 if gated(activation) else 1)  # SwiGLU: [gate | up] fused
        self.w_in = nn.Parameter(torch.empty(n_experts, n_in, d_model))
        self.w_out = nn.Parameter(torch.empty(n_experts, d_model, hidden))

    def compute(self, x_sorted: torch.Tensor, counts: torch.Tensor, row_weight: torch.Tensor) -> torch.Tensor:
        """x_sorted [A, D] grouped by expert, counts [E], row_weight [A] -> weighted outputs [A, D]."""
        dtype = x_sorted.dtype
        if torch.is_autocast_enabled(x_sorted.device.type):
            dtype = torch.get_autocast_dtype(x_sorted.device.type)
        x_AD = x_sorted.to(dtype)
        weight_A1 = row_weight.to(dtype).unsqueeze(-1)
        h_AH = grouped_linear(x_AD, self.w_in.to(dtype), counts)  # [A, 2H] for SwiGLU: [gate | up]
        # w * (act @ W_out^T) == (w * act) @ W_out^T: apply the gate weight on the narrower tensor.
        scale_hidden = self.hidden <= x_AD.shape[-1]
        act_AH = apply_activation(h_AH, self.activation, weight_A1 if scale_hidden else None)
        y_AD = grouped_linear(act_AH, self.w_out.to(dtype), counts)
        return y_AD if scale_hidden else y_AD * weight_A1

    def forward(
        self,
        x: torch.Tensor,
        token_idx: torch.Tensor,
        expert_idx: torch.Tensor,
        weight: torch.Tensor,
        capacity: int | None,
    ) -> DispatchResult:
        """x [T, D]; assignments token_idx/expert_idx/weight [A] in priority order."""
        order = sort_by_expert(expert_idx, self.n_experts, capacity)
        sorted_token_idx_A = token_idx[order.sorted_idx]
        # index_select, not x[tokens]: its backward is an index_add_, while advanced indexing's is an
        # accumulating index_put_, measured several times slower on CPU.
        y_AD = self.compute(x.index_select(0, sorted_token_idx_A), order.kept_counts, weight[order.sorted_idx])
        out_TD = torch.zeros_like(x, dtype=y_AD.dtype).index_add_(0, sorted_token_idx_A, y_AD)
        return DispatchResult(out=out_TD, expert_counts=order.counts, n_dropped=order.n_dropped)
