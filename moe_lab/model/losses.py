"""Router losses, each returned on its own so callers log them separately and choose the weights."""

from __future__ import annotations

import torch
import torch.distributed as dist


def load_balancing_loss(
    probs: torch.Tensor,
    expert_idx: torch.Tensor,
    token_idx: torch.Tensor,
    n_experts: int,
    seq_len: int | None = None,
    across_ranks: bool = False,
) -> torch.Tensor:
    """Switch Transformer eq. 4: E * sum_i f_i * P_i.

    f_i: fraction of the routed assignments that went to expert i (top-k decisions, before capacity
    dropping; counts carry no gradient). P_i: mean router probability of expert i. Both are 1/E under
    perfect balance, so the loss is exactly 1.0 there and grows with imbalance.
    With `seq_len` set, f and P are computed per sequence and the loss averaged over sequences
    (DeepSeek-V3's sequence-wise variant); otherwise over the whole micro-batch.
    With `across_ranks`, f counts the assignments of every data-parallel rank (Megatron's "global" scope):
    each rank's loss is E * sum_i f_global_i * P_local_i, and since DDP averages the ranks' gradients, the
    step follows E * sum_i f_global_i * P_global_i, the loss of the whole global batch, when ranks hold
    equal token counts. f carries no gradient, so only counts travel.
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
    if across_ranks:
        counts = summed_over_ranks(counts)
    # A sequence can receive no assignment at all under expert choice (experts pick tokens across the
    # batch): its f is all zeros and it adds 0 to the loss, instead of 0/0 = NaN.
    f = counts.to(probs.dtype) / counts.sum(dim=-1, keepdim=True).clamp_min(1)  # [G, E]
    P = probs.view(n_groups, -1, n_experts).mean(dim=1)  # [G, E]
    return n_experts * (f * P).sum(dim=-1).mean()


def summed_over_ranks(counts: torch.Tensor) -> torch.Tensor:
    """`counts` summed over all ranks of the default process group; itself outside distributed runs."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return counts
    counts = counts.clone()
    dist.all_reduce(counts)
    return counts


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE eq. 5: mean over tokens of logsumexp(router logits)^2 (keeps logits small)."""
    return torch.logsumexp(logits.float(), dim=-1).square().mean()
