"""Router registry. A new router is one file here with `@register_router("name")` plus its import."""

from moe_lab.model.routers import expert_choice, noisy_topk, sigmoid_bias, topk  # noqa: F401 - register
from moe_lab.model.routers.base import ROUTER_REGISTRY, Router, Routing, register_router

__all__ = ["ROUTER_REGISTRY", "Router", "Routing", "register_router"]
