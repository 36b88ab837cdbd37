"""Expert-choice routing (Zhou et al. 2022): each expert takes its top-C tokens.

Causality caveat: an expert chooses among all tokens of the micro-batch, so whether an early token is
picked depends on the scores of later tokens (and of other sequences). In a causal LM this leaks the
future into the past during training and cannot be reproduced token by token at generation time.
Results with this router are not comparable to causal token-choice routers as-is; the tests document
the leak rather than hiding it.

Capacity C = ceil(capacity_factor * T * top_k / E), with factor 1.0 when unset: on average each token
is processed by top_k experts, the same active compute as top-k token choice.
"""

from __future__ import annotations

import torch

from moe_lab.model.routers.base import Router, Routing, register_router


@register_router("expert_choice")
class ExpertChoiceRouter(Router):
    token_choice = False
    bounded = True  # each expert takes exactly C tokens: nothing to drop afterwards
    options = ()  # the weights are the chosen tokens' affinities: nothing to renormalise

    def forward(self, x: torch.Tensor, capacity: int | None) -> Routing:
        logits_TE = self.logits(x)
        probs_TE = logits_TE.softmax(dim=-1)  # token-to-expert affinities (paper eq. 1)
        T = logits_TE.shape[0]
        C = min(T, capacity or T)
        weight_EC, token_idx_EC = probs_TE.t().topk(C, dim=-1)
        expert_idx_A = torch.arange(self.n_routed_experts, device=x.device).repeat_interleave(C)
        return Routing(
            logits=logits_TE,
            probs=probs_TE,
            token_idx=token_idx_EC.reshape(-1),
            expert_idx=expert_idx_A,
            weight=weight_EC.reshape(-1),
        )
