"""Expert parallelism for the MoE layer: each rank of an EP group holds E / N experts and the tokens
travel to them and back with two all-to-alls (GShard sec. 3.2; torchtitan's `ExpertParallel`).

One forward, on each rank of the group, for this rank's own T tokens:
  route (the replicated router)  -> group this rank's assignments by expert (the single-device sort,
  capacity dropping included) -> all-to-all the per-(rank, expert) counts -> all-to-all the token
  states and gate weights to the ranks owning their experts -> regroup the received rows by local
  expert, grouped matmul -> all-to-all the weighted outputs back -> `index_add_` into token order.
Both all-to-alls of states are autograd-aware: the backward is the reverse all-to-all, so expert weight
gradients collect every token of the group sent to this rank's experts, and the router's and the
tokens' gradients come home.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import ProcessGroup
from torch.distributed._functional_collectives import all_to_all_single_autograd

from moe_lab.model.experts import DispatchResult, GroupedExperts, sort_by_expert
from moe_lab.model.moe import MoELayer


def _all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group: ProcessGroup) -> torch.Tensor:
    """Differentiable all-to-all with uneven splits along dim 0 (backward: the reverse exchange)."""
    return all_to_all_single_autograd(x.contiguous(), out_splits, in_splits, group)


class ExpertParallelExperts(GroupedExperts):
    """This rank's E / N experts of an EP group of N ranks, as a drop-in for `GroupedExperts`.

    The parameters keep their names (`w_in`, `w_out`) and hold rows [r * E/N, (r + 1) * E/N) of the full
    stacks, rank r's shard along the expert dim (torchtitan's Shard(0) placement), so gathering the
    shards of a group in rank order gives the full layer's weights back.
    """

    def __init__(self, full: GroupedExperts, group: ProcessGroup):
        n_ranks, rank = dist.get_world_size(group), dist.get_rank(group)
        if full.n_experts % n_ranks:
            raise ValueError(f"expert parallelism: {full.n_experts} experts do not split over {n_ranks} ranks")
        n_local = full.n_experts // n_ranks
        super().__init__(n_local, full.w_out.shape[1], full.hidden, full.activation)
        self.group, self.n_ranks, self.rank = group, n_ranks, rank
        self.n_routed_experts = full.n_experts  # the whole group's; self.n_experts is this rank's
        shard = slice(rank * n_local, (rank + 1) * n_local)
        with torch.no_grad():
            self.w_in = nn.Parameter(full.w_in[shard].clone())
            self.w_out = nn.Parameter(full.w_out[shard].clone())

    def forward(
        self,
        x: torch.Tensor,
        token_idx: torch.Tensor,
        expert_idx: torch.Tensor,
        weight: torch.Tensor,
        capacity: int | None,
    ) -> DispatchResult:
        """x [T, D] this rank's tokens; assignments [A] over all E experts, in priority order.

        Capacity is this rank's, applied before sending, so a rank drops exactly what the single-device
        layer drops on the same tokens (as under plain data parallelism), whatever the EP size.
        """
        order = sort_by_expert(expert_idx, self.n_routed_experts, capacity)
        sorted_token_idx_A = token_idx[order.sorted_idx]
        send_counts_NL = order.kept_counts.view(self.n_ranks, self.n_experts)  # [N, E/N] per destination
        recv_counts_NL = torch.empty_like(send_counts_NL)  # [N, E/N] per source, for my experts
        dist.all_to_all_single(recv_counts_NL, send_counts_NL, group=self.group)
        in_splits = send_counts_NL.sum(1).tolist()  # the only host syncs: splits must be Python ints
        out_splits = recv_counts_NL.sum(1).tolist()

        x_AD = _all_to_all(x.index_select(0, sorted_token_idx_A), out_splits, in_splits, self.group)
        weight_A = _all_to_all(weight[order.sorted_idx], out_splits, in_splits, self.group)
        y_AD = self.compute_local(x_AD, weight_A, recv_counts_NL)
        y_AD = _all_to_all(y_AD, in_splits, out_splits, self.group)  # back home, in the order sent

        out_TD = torch.zeros_like(x, dtype=y_AD.dtype).index_add_(0, sorted_token_idx_A, y_AD)
        return DispatchResult(out=out_TD, expert_counts=order.counts, n_dropped=order.n_dropped)

    def compute_local(self, x_AD: torch.Tensor, weight_A: torch.Tensor, recv_counts_NL: torch.Tensor) -> torch.Tensor:
        """Received rows, grouped by source rank then local expert -> outputs in the same order.

        The grouped matmul needs rows grouped by expert alone: a stable sort by local expert keeps each
        expert's rows in source-rank order, and the inverse permutation restores the received order.
        """
        local_expert_A = torch.arange(self.n_experts, device=x_AD.device).repeat(self.n_ranks)
        local_expert_A = local_expert_A.repeat_interleave(recv_counts_NL.reshape(-1))
        perm_A = torch.argsort(local_expert_A, stable=True)
        y_AD = self.compute(x_AD.index_select(0, perm_A), recv_counts_NL.sum(0), weight_A.index_select(0, perm_A))
        inverse_A = torch.empty_like(perm_A)
        inverse_A[perm_A] = torch.arange(perm_A.numel(), device=perm_A.device)
        return y_AD.index_select(0, inverse_A)


def parallelize_experts(model: nn.Module, group: ProcessGroup) -> nn.Module:
    """Shard the routed experts of every MoE layer in `model` (a layer or a whole transformer) over the
    EP group, in place; router, shared experts and everything else stay replicated. Returns `model`."""
    for layer in [m for m in model.modules() if isinstance(m, MoELayer)]:
        layer.experts = ExpertParallelExperts(layer.experts, group)
    return model


def gather_experts(local: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """The full [E, ...] stack from each rank's [E / N, ...] shard (a weight or its gradient), in rank order."""
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local.detach().contiguous(), group=group)
    return torch.cat(parts)
