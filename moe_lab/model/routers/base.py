"""What every router returns, the router base class and the registry routers add themselves to."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Routing:
    """One router decision over T tokens, as a flat list of A (token, expert, weight) assignments.

    Assignments are in priority order: when an expert is over capacity the later ones are dropped.
    Token-choice routers list all first choices before all second choices (GShard's order), each in
    token order; expert choice lists them expert by expert.
    """

    logits: torch.Tensor  # [T, E] fp32 router logits (z-loss)
    probs: torch.Tensor  # [T, E] fp32 routing distribution (aux-loss P_i, entropy)
    token_idx: torch.Tensor  # [A] int64
    expert_idx: torch.Tensor  # [A] int64
    weight: torch.Tensor  # [A] fp32 gate weight multiplying the expert output


class Router(nn.Module):
    """Maps token states [T, D] to a `Routing`. The logits are computed in fp32 whatever the autocast
    dtype: Switch Transformer (sec. 2.4) found the router's softmax the unstable part in bf16.

    A router declares what it is and which options it reads in the class attributes below, so no
    caller tests its class or its name.
    """

    # Each token picks its experts (top-k family); expert choice sets False.
    token_choice: bool = True
    # The router bounds the tokens per expert itself (expert choice): it always gets a capacity
    # (factor 1.0 when the config says 0) and the dispatch drops nothing after it.
    bounded: bool = False
    # Keeps a selection bias that its `update_bias(expert_counts)` moves after each optimiser step.
    updates_bias: bool = False
    # [E, D] weight matrices the router holds (its gate, plus e.g. a noise projection).
    n_projections: int = 1
    # The router-specific `model.moe` keys this router reads, passed to __init__ by name; validation
    # refuses a non-default value of any other router's key.
    options: tuple[str, ...] = ("renormalize",)

    def __init__(self, d_model: int, n_routed_experts: int, routed_top_k: int, *, renormalize: bool = True):
        super().__init__()
        # After the granularity split: the experts this router chooses among, and per token how many.
        self.n_routed_experts = n_routed_experts
        self.routed_top_k = routed_top_k
        self.renormalize = renormalize
        self.gate = nn.Linear(d_model, n_routed_experts, bias=False)

    def init_weights(self) -> None:
        """The router's own initialisation, applied after the model's generic one (every Linear, the gate
        included, drawn from N(0, init_std)). Nothing to change for a plain gate."""

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return nn.functional.linear(x.float(), self.gate.weight.float())

    def forward(self, x: torch.Tensor, capacity: int | None) -> Routing:
        raise NotImplementedError


def token_choice(
    logits: torch.Tensor,
    probs: torch.Tensor,
    selection_scores: torch.Tensor,
    gate_scores: torch.Tensor,
    top_k: int,
    renormalize: bool,
) -> Routing:
    """Each token picks its top-k experts by `selection_scores`; weights come from `gate_scores` (all [T, E])."""
    T = logits.shape[0]
    _, topk_idx_TK = selection_scores.topk(top_k, dim=-1)
    weight_TK = gate_scores.gather(-1, topk_idx_TK)
    if renormalize:
        weight_TK = weight_TK / weight_TK.sum(dim=-1, keepdim=True)
    tokens_T = torch.arange(T, device=logits.device)
    return Routing(
        logits=logits,
        probs=probs,
        token_idx=tokens_T.repeat(top_k),  # slot-major: every token's 1st choice, then every 2nd ...
        expert_idx=topk_idx_TK.t().reshape(-1),
        weight=weight_TK.t().reshape(-1),
    )


ROUTER_REGISTRY: dict[str, type[Router]] = {}


def register_router(name: str):
    def add(cls: type[Router]) -> type[Router]:
        ROUTER_REGISTRY[name] = cls
        return cls

    return add
