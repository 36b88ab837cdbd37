"""Sigmoid gating with auxiliary-loss-free bias balancing (DeepSeek-V3 sec. 2.1.2; Wang et al. 2024).

Affinities s = sigmoid(x W). A per-expert bias b is added only to choose the top-k experts; the gate
weights use s alone. b is no parameter: after each optimiser step the trainer calls `update_bias`
with the step's token counts and b moves by gamma * sign(mean load - load), so overloaded experts
become less attractive without any gradient through the balancing.
"""

from __future__ import annotations

import torch

from moe_lab.model.routers.base import Router, Routing, register_router, token_choice


@register_router("sigmoid_bias")
class SigmoidBiasRouter(Router):
    updates_bias = True
    options = ("renormalize", "bias_update_speed")

    def __init__(self, d_model: int, n_routed_experts: int, routed_top_k: int, *, bias_update_speed: float = 0.0, **kw):
        super().__init__(d_model, n_routed_experts, routed_top_k, **kw)
        self.bias_update_speed = bias_update_speed
        self.register_buffer("selection_bias", torch.zeros(n_routed_experts))

    def forward(self, x: torch.Tensor, capacity: int | None) -> Routing:
        logits_TE = self.logits(x)
        scores_TE = logits_TE.sigmoid()
        # The distribution the aux loss and entropy see: affinities normalised per token (DeepSeek-V3
        # eq. 18, the complementary sequence-wise balance loss).
        probs_TE = scores_TE / scores_TE.sum(dim=-1, keepdim=True)
        selection_TE = scores_TE + self.selection_bias
        return token_choice(logits_TE, probs_TE, selection_TE, scores_TE, self.routed_top_k, self.renormalize)

    @torch.no_grad()
    def update_bias(self, expert_counts: torch.Tensor) -> None:
        """expert_counts: [E] tokens routed to each expert over the step (summed over ranks)."""
        load_E = expert_counts.to(self.selection_bias)
        self.selection_bias += self.bias_update_speed * torch.sign(load_E.mean() - load_E)
