"""Softmax top-k token choice: Switch (k=1, raw probability as the gate weight, so the LM loss trains the
router), GShard / Mixtral (k=2, renormalised)."""

from __future__ import annotations

import torch

from moe_lab.model.routers.base import Router, Routing, register_router, token_choice


@register_router("topk")
class TopKRouter(Router):
    options = ("renormalize", "router_jitter")

    def __init__(self, d_model: int, n_routed_experts: int, routed_top_k: int, *, router_jitter: float = 0.0, **kw):
        super().__init__(d_model, n_routed_experts, routed_top_k, **kw)
        self.jitter = router_jitter

    def forward(self, x: torch.Tensor, capacity: int | None) -> Routing:
        if self.training and self.jitter > 0:
            # Switch Transformer's multiplicative jitter on the router input (exploration).
            x = x * torch.empty_like(x).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
        logits_TE = self.logits(x)
        probs_TE = logits_TE.softmax(dim=-1)
        return token_choice(logits_TE, probs_TE, probs_TE, probs_TE, self.routed_top_k, self.renormalize)
