"""Noisy top-k gating (Shazeer et al. 2017, eq. 3-5).

H(x) = x W_g + N(0, 1) * softplus(x W_noise) during training; the top-k of H are kept and softmaxed.
The noise projection starts at zero as in the paper, so noise grows only where it is learned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moe_lab.model.routers.base import Router, Routing, register_router, token_choice


@register_router("noisy_topk")
class NoisyTopKRouter(Router):
    n_projections = 2  # the gate and the noise projection

    def __init__(self, d_model: int, n_routed_experts: int, routed_top_k: int, **kw):
        super().__init__(d_model, n_routed_experts, routed_top_k, **kw)
        self.noise = nn.Linear(d_model, n_routed_experts, bias=False)
        self.init_weights()

    def init_weights(self) -> None:
        # W_noise starts at zero (Shazeer 2017): every logit's noise std starts at softplus(0) = ln 2.
        nn.init.zeros_(self.noise.weight)

    def noise_std(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.softplus(F.linear(x.float(), self.noise.weight.float()))

    def forward(self, x: torch.Tensor, capacity: int | None) -> Routing:
        clean_TE = self.logits(x)
        noisy_TE = clean_TE
        if self.training:
            noisy_TE = clean_TE + torch.randn_like(clean_TE) * self.noise_std(x)
        probs_TE = noisy_TE.softmax(dim=-1)
        # z-loss is taken on the clean logits: the noise is exploration, not something to penalise.
        return token_choice(clean_TE, probs_TE, probs_TE, probs_TE, self.routed_top_k, self.renormalize)
