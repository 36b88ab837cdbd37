"""The MoE layer: router + routed experts (+ shared experts), router losses and routing statistics."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from moe_lab.model.config import ModelConfig, capacity, expert_dims, router_options
from moe_lab.model.experts import DispatchResult, GroupedExperts
from moe_lab.model.ffn import DenseFFN
from moe_lab.model.losses import load_balancing_loss, router_z_loss
from moe_lab.model.routers import ROUTER_REGISTRY, Routing


@dataclass
class RoutingStats:
    """Per-layer routing statistics of one forward, all detached, no host sync needed to build them.

    dropped_frac: for token-choice routers, the fraction of (token, slot) assignments dropped for
    capacity; for expert choice, the fraction of tokens no expert picked.
    """

    expert_counts: torch.Tensor  # [E] assignments routed to each expert (before dropping)
    dropped_frac: torch.Tensor  # scalar
    entropy: torch.Tensor  # scalar, mean per-token entropy of the routing distribution (nats)
    mean_topk_weight: torch.Tensor  # scalar, mean gate weight of the assignments
    aux_loss: torch.Tensor  # scalar, this layer's load-balancing loss
    z_loss: torch.Tensor  # scalar, this layer's router z-loss

    @classmethod
    def scalar_fields(cls) -> tuple[str, ...]:
        """Every field but expert_counts: per-batch scalars, averaged (not summed) when batches combine."""
        return tuple(f.name for f in fields(cls) if f.name != "expert_counts")


@dataclass
class MoEOutput:
    y: torch.Tensor  # [B, S, D]
    aux_loss: torch.Tensor
    z_loss: torch.Tensor
    stats: RoutingStats


class MoELayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        moe, dims = cfg.moe, expert_dims(cfg)
        # After the granularity split: what the router chooses among and how many it picks per token.
        self.n_routed_experts, self.routed_top_k = dims.n_routed_experts, dims.routed_top_k
        self.capacity_factor, self.eval_capacity_factor = moe.capacity_factor, moe.eval_capacity_factor
        self.sequence_aux_loss = moe.aux_loss_scope == "sequence"
        self.global_aux_loss = moe.aux_loss_scope == "global"
        self.router = ROUTER_REGISTRY[moe.router](
            cfg.d_model, dims.n_routed_experts, dims.routed_top_k, **router_options(moe)
        )
        self.experts = GroupedExperts(dims.n_routed_experts, cfg.d_model, dims.routed_hidden, cfg.activation)
        # All shared experts together are one wide FFN: the same function as separate experts summed.
        self.shared = DenseFFN(cfg.d_model, dims.shared_hidden, cfg.activation) if dims.shared_hidden else None
        self.shared_gate = nn.Linear(cfg.d_model, 1, bias=False) if moe.shared_expert_gate else None

    def capacity_for(self, n_tokens: int) -> int | None:
        """Tokens one expert may take out of n_tokens in the current mode (train or eval); None is dropless."""
        factor = self.capacity_factor if self.training else self.eval_capacity_factor
        if factor == 0 and not self.router.bounded:
            return None
        return capacity(factor or 1.0, n_tokens, self.routed_top_k, self.n_routed_experts)

    def forward(self, x: torch.Tensor) -> MoEOutput:
        B, S, D = x.shape
        x_TD = x.reshape(B * S, D)
        cap = self.capacity_for(B * S)
        routing = self.router(x_TD, cap)
        result = self.dispatch(x_TD, routing, None if self.router.bounded else cap)
        y_TD = result.out.to(x.dtype)
        if self.shared is not None:
            y_TD = y_TD + self.shared_output(x_TD)
        aux = load_balancing_loss(
            routing.probs,
            routing.expert_idx,
            routing.token_idx,
            self.n_routed_experts,
            seq_len=S if self.sequence_aux_loss else None,
            # a collective: only in training, where every rank runs the same forwards in step
            across_ranks=self.global_aux_loss and self.training,
        )
        z = router_z_loss(routing.logits)
        stats = self.routing_stats(routing, result.expert_counts, result.n_dropped, aux, z)
        return MoEOutput(y=y_TD.view(B, S, D), aux_loss=aux, z_loss=z, stats=stats)

    def shared_output(self, x_TD: torch.Tensor) -> torch.Tensor:
        shared_TD = self.shared(x_TD)
        if self.shared_gate is None:
            return shared_TD
        # One scalar gate per token for the whole shared path (Qwen2-MoE: sigmoid(x W_g) * shared(x)).
        return torch.sigmoid(self.shared_gate(x_TD)) * shared_TD

    def dispatch(self, x_TD: torch.Tensor, routing: Routing, cap: int | None) -> DispatchResult:
        return self.experts(x_TD, routing.token_idx, routing.expert_idx, routing.weight, cap)

    @torch.no_grad()
    def routing_stats(
        self, routing: Routing, counts: torch.Tensor, n_dropped: torch.Tensor, aux: torch.Tensor, z: torch.Tensor
    ) -> RoutingStats:
        probs_TE = routing.probs
        entropy = -(probs_TE * probs_TE.clamp_min(1e-30).log()).sum(-1).mean()
        if self.router.bounded:
            picked_T = torch.zeros(probs_TE.shape[0], dtype=torch.bool, device=probs_TE.device)
            picked_T[routing.token_idx] = True
            dropped = 1.0 - picked_T.float().mean()
        else:
            dropped = n_dropped.float() / max(1, routing.expert_idx.numel())
        return RoutingStats(
            expert_counts=counts.float(),
            dropped_frac=dropped,
            entropy=entropy,
            mean_topk_weight=routing.weight.mean(),
            aux_loss=aux.detach(),
            z_loss=z.detach(),
        )
