"""`aux_loss_scope: global` (Megatron's global load-balancing scope) on 2 gloo ranks: the mean of the ranks'
aux losses and of their router gradients equals the aux loss of the whole global batch on one process, which
the test computes from its definition (E * sum_i f_i * P_i with f from the assignment counts)."""

from __future__ import annotations

import pytest
import torch

from moe_lab.model.moe import MoELayer
from tests.helpers import randomise, tiny_config
from tests.test_expert_parallel import spawn

N_RANKS, BATCH, SEQ = 2, 4, 8  # each rank holds BATCH / N_RANKS sequences of the global batch
TOL = 1e-6


def global_batch(d_model: int) -> torch.Tensor:
    return torch.randn(BATCH, SEQ, d_model, generator=torch.Generator().manual_seed(7))


def layer(router: str, scope: str) -> MoELayer:
    full = MoELayer(tiny_config(router=router, n_experts=4, top_k=2, aux_loss_scope=scope))
    randomise(full, seed=3)
    return full


def aux_by_definition(module: MoELayer, x: torch.Tensor) -> torch.Tensor:
    """E * sum_i f_i * P_i over all tokens of x, from the router's own assignments and probabilities."""
    routing = module.router(x.reshape(-1, x.shape[-1]), None)
    f = torch.bincount(routing.expert_idx, minlength=module.n_routed_experts).double()
    return module.n_routed_experts * (f / f.sum() * routing.probs.double().mean(0)).sum()


def aux_worker(rank: int, n_ranks: int, router: str) -> dict:
    report = {}
    for scope in ("global", "batch"):
        module = layer(router, scope).train()
        mine = global_batch(module.router.gate.weight.shape[1]).chunk(n_ranks)[rank]
        out = module(mine)
        out.aux_loss.backward()
        report[scope] = {"aux": out.aux_loss.item(), "grad": module.router.gate.weight.grad.tolist()}
        # evaluation counts the rank's own batch: "global" equals "batch" there, with no collective
        report[f"{scope} eval"] = module.eval()(mine).aux_loss.item()
    return report


@pytest.mark.parametrize("router", ["topk", "sigmoid_bias"])
def test_global_scope_balances_the_global_batch(tmp_path, router):
    reports = spawn(aux_worker, N_RANKS, tmp_path, router)
    reference = layer(router, "batch").train()
    x = global_batch(reference.router.gate.weight.shape[1])
    aux = aux_by_definition(reference, x)
    aux.backward()
    mean_aux = sum(r["global"]["aux"] for r in reports) / N_RANKS
    mean_grad = sum(torch.tensor(r["global"]["grad"]) for r in reports) / N_RANKS
    assert abs(mean_aux - aux.item()) < TOL
    assert (mean_grad - reference.router.gate.weight.grad).abs().max() < TOL
    # the per-rank scope is a different loss: its mean is off the global batch's by far more than TOL
    mean_local = sum(r["batch"]["aux"] for r in reports) / N_RANKS
    assert abs(mean_local - aux.item()) > 100 * TOL
    for r in reports:
        assert r["global eval"] == r["batch eval"]
