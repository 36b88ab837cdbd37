"""The LM loss alone must reach every router's weights, at k=1 and k=2 (found by the registry).

A top-1 router with renormalised weights computes p/p = 1.0 for every token: its output no longer
depends on the router, which is then trained only by the aux/z losses (a bug several public MoE
codebases shipped). The reference here is the same model with the gate forced to renormalise at k=1,
whose LM-loss gradient must vanish: it shows the test can tell the two apart.
"""

import pytest
import torch

from moe_lab.errors import ConfigError
from moe_lab.model import MoETransformer
from moe_lab.model.config import renormalizes, validate_model_config
from moe_lab.model.routers import ROUTER_REGISTRY
from tests.helpers import randomise, tiny_config

ROUTERS = sorted(ROUTER_REGISTRY)
TOKEN_CHOICE = [name for name in ROUTERS if ROUTER_REGISTRY[name].token_choice]


def test_registry_is_not_empty():
    # The parametrised tests below find their cases in the registry; an empty one would pass vacuously.
    assert ROUTERS and TOKEN_CHOICE


def lm_grad_norms(cfg, seed: int = 0) -> list[float]:
    """Per MoE layer, the norm of d(LM loss)/d(router gate weight); aux and z losses are left out."""
    validate_model_config(cfg)
    torch.manual_seed(seed)
    model = MoETransformer(cfg)
    randomise(model, seed)
    model.train()
    idx = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(seed))
    out = model(idx[:, :-1], idx[:, 1:])
    gates = [model.blocks[i].ffn.router.gate.weight for i in model.moe_layers]
    grads = torch.autograd.grad(out.lm_loss, gates, allow_unused=True)
    return [0.0 if g is None else float(g.norm()) for g in grads]


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("top_k", [1, 2])
def test_lm_loss_reaches_router(router, top_k):
    norms = lm_grad_norms(tiny_config(router=router, top_k=top_k))
    assert len(norms) == 2
    assert min(norms) > 1e-4, norms


@pytest.mark.parametrize("router", TOKEN_CHOICE)
def test_renormalised_top1_gate_gets_no_lm_gradient(router):
    """The trap the auto default avoids, measured: forced renormalisation at k=1 (bypassing validation
    by building the router with renormalize=True directly) leaves the router without an LM gradient."""
    cfg = tiny_config(router=router, top_k=1, renormalize=False)
    torch.manual_seed(0)
    model = MoETransformer(cfg)
    randomise(model, 0)
    for i in model.moe_layers:
        model.blocks[i].ffn.router.renormalize = True
    idx = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    out = model(idx[:, :-1], idx[:, 1:])
    gates = [model.blocks[i].ffn.router.gate.weight for i in model.moe_layers]
    grads = torch.autograd.grad(out.lm_loss, gates, allow_unused=True)
    assert all(g is None or float(g.norm()) < 1e-6 for g in grads)


@pytest.mark.parametrize("router", TOKEN_CHOICE)
def test_renormalised_top1_is_refused(router):
    with pytest.raises(ConfigError, match="model.moe.renormalize"):
        validate_model_config(tiny_config(router=router, top_k=1, renormalize=True))


@pytest.mark.parametrize(("top_k", "granularity", "expected"), [(1, 1, False), (2, 1, True), (1, 2, True)])
def test_auto_renormalises_only_with_two_or_more_choices(top_k, granularity, expected):
    # Granularity multiplies k (DeepSeekMoE): top-1 of experts split in two picks 2 narrow experts.
    cfg = tiny_config(top_k=top_k, granularity=granularity, d_ff=48)
    validate_model_config(cfg)
    assert renormalizes(cfg.moe) is expected


def test_explicit_renormalisation_at_k1_after_granularity_split_is_allowed():
    validate_model_config(tiny_config(top_k=1, granularity=2, renormalize=True))
