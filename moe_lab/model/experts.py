"""Routed experts with stacked weights, and the vectorised dispatch -> expert compute -> combine.

Dispatch is one stable sort of the (token, expert) assignments by expert, a gather of the token
states into expert-contiguous order, one grouped matmul per projection (`F.grouped_mm`, a single
kernel over all experts), and an `index_add_` back into token order weighted by the gate. Capacity
dropping is a mask on the sorted order, so it costs no extra pass.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from moe_lab.model.ffn import apply_activation, gated


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous: grouped_mm's backward rejects
    stride-0 gradients (e.g. from `.sum()`), which autograd happily produces."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


@functools.cache
def grouped_mm_supported(device_type: str, dtype: torch.dtype) -> bool:
    """Whether this torch build runs F.grouped_mm forward and backward for the device and dtype.

    Probed once with a tiny problem rather than guessed from version numbers: support differs by
    torch release, device (CUDA needs sm80+) and dtype (no float64 anywhere).
    """
    if not hasattr(F, "grouped_mm"):
        return False
    try:
        x = torch.randn(8, 16, device=device_type, dtype=dtype, requires_grad=True)
        w = torch.randn(2, 16, 16, device=device_type, dtype=dtype, requires_grad=True)
        offs = torch.tensor([3, 8], device=device_type, dtype=torch.int32)
        y = F.grouped_mm(x, w, offs=offs)
        y.backward(torch.ones_like(y))
        return True
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def _aligned(x: torch.Tensor, w: torch.Tensor) -> bool:
    """grouped_mm needs every row stride to be a multiple of 16 bytes (e.g. widths divisible by 4 in
    float32); other widths take the per-expert fallback instead of failing."""
    return all(n * x.element_size() % 16 == 0 for n in (x.shape[-1], w.shape[1]))


def grouped_matmul(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Rows of x [A, K] are grouped by expert (counts [E] rows each); returns x_e @ w[e].T -> [A, N].

    w is [E, N, K] (nn.Linear's (out, in) layout, so HF checkpoints map without transposes).
    """
    if grouped_mm_supported(x.device.type, x.dtype) and _aligned(x, w):
        offs = counts.cumsum(0).to(torch.int32)
        return _ContiguousGrad.apply(F.grouped_mm(x, w.transpose(1, 2), offs=offs))
    # Fallback (float64, old torch, pre-sm80 GPUs): one matmul per expert on contiguous slices.
    chunks = x.split(counts.tolist())
    return torch.cat([c @ w[e].t() for e, c in enumerate(chunks)])


@dataclass
class DispatchResult:
    out: torch.Tensor  # [T, D] weighted sum of expert outputs per token (0 where all were dropped)
    expert_counts: torch.Tensor  # [E] assignments routed to each expert, before capacity dropping
    n_dropped: torch.Tensor  # scalar: assignments dropped for capacity


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
        x = x_sorted.to(dtype)
        w = row_weight.to(dtype).unsqueeze(-1)
        h = grouped_matmul(x, self.w_in.to(dtype), counts)
        # w * (act @ W_out^T) == (w * act) @ W_out^T: apply the gate weight on the narrower tensor.
        scale_hidden = self.hidden <= x.shape[-1]
        act = apply_activation(h, self.activation, w if scale_hidden else None)
        y = grouped_matmul(act, self.w_out.to(dtype), counts)
        return y if scale_hidden else y * w

    def forward(self, x: torch.Tensor, token_idx: torch.Tensor, expert_idx: torch.Tensor,
                weight: torch.Tensor, capacity: int | None) -> DispatchResult:
        """x [T, D]; assignments token_idx/expert_idx/weight [A] in priority order."""
        counts = torch.bincount(expert_idx, minlength=self.n_experts)
        # Stable sort keeps priority order inside each expert's group, which is what capacity
        # dropping needs: the first `capacity` assignments of each expert are kept.
        order = torch.argsort(expert_idx, stable=True)
        kept_counts, n_dropped = counts, counts.new_zeros(())
        if capacity is not None:
            group_start = counts.cumsum(0) - counts
            rank_in_expert = torch.arange(order.numel(), device=x.device) - group_start[expert_idx[order]]
            order = order[rank_in_expert < capacity]
            kept_counts = counts.clamp(max=capacity)
            n_dropped = counts.sum() - kept_counts.sum()
        tokens = token_idx[order]
        # index_select, not x[tokens]: its backward is an index_add_, while advanced indexing's is an
        # accumulating index_put_, measured several times slower on CPU.
        y = self.compute(x.index_select(0, tokens), kept_counts, weight[order])  # [A_kept, D]
        out = torch.zeros_like(x, dtype=y.dtype).index_add_(0, tokens, y)
        return DispatchResult(out=out, expert_counts=counts, n_dropped=n_dropped)
