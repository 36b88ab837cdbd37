"""Router losses, each returned on its own so callers log them separately and choose the weights."""

from __future__ import annotations

import torch


def load_balancing_loss(
    probs: torch.Tensor, expert_idx: torch.Tensor, token_idx: torch.Tensor, n_experts: int, seq_len: int | None = None
) -> torch.Tensor:
    """Switch Transformer eq. 4: E * sum_i f_i * P_i.

    f_i: fraction of the routed assignments that went to expert i (top-k decisions, before capacity
    dropping; counts carry no gradient). P_i: mean router probability of expert i. Both are 1/E under
    perfect balance, so the loss is exactly 1.0 there and grows with imbalance.
    With `seq_len` set, f and P are computed per sequence and the loss averaged over sequences
    (DeepSeek-V3's sequence-wise variant); otherwise over the whole micro-batch.
    probs [T, E]; expert_idx, token_idx [A].
    """
    T = probs.shape[0]
    n_groups = 1 if seq_len is None else T // seq_len
    group_of_token = (
        torch.zeros(T, dtype=torch.long, device=probs.device)
        if seq_len is None
        else torch.arange(T, device=probs.device) // seq_len
    )
    cell = group_of_token[token_idx] * n_experts + expert_idx
    counts = torch.bincount(cell, minlength=n_groups * n_experts).view(n_groups, n_experts)
    # A sequence can receive no assignment at all under expert choice (experts pick tokens across the
    # batch): its f is all zeros and it adds 0 to the loss, instead of 0/0 = NaN.
    f = counts.to(probs.dtype) / counts.sum(dim=-1, keepdim=True).clamp_min(1)  # [G, E]
    P = probs.view(n_groups, -1, n_experts).mean(dim=1)  # [G, E]
    return n_experts * (f * P).sum(dim=-1).mean()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE eq. 5: mean over tokens of logsumexp(router logits)^2 (keeps logits small)."""
    return torch.logsumexp(logits.float(), dim=-1).square().mean()
