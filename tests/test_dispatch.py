"""The vectorised dispatch equals the naive per-expert loop: outputs and every gradient."""

import pytest
import torch

from moe_lab.model import grouped_gemm
from moe_lab.model.config import capacity
from moe_lab.model.moe import MoELayer
from moe_lab.model.naive import NaiveMoELayer
from tests.helpers import randomise, tiny_config

ROUTERS = ["topk", "noisy_topk", "sigmoid_bias", "expert_choice"]


def run_layer(layer, x, seed=0):
    torch.manual_seed(seed)  # identical router noise / jitter for both implementations
    xi = x.clone().requires_grad_()
    out = layer(xi)
    loss = (out.y * torch.linspace(-1, 1, out.y.numel(), dtype=x.dtype).view_as(out.y)).sum() \
        + 0.3 * out.aux_loss + 0.2 * out.z_loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    return out, xi.grad, grads


def pair(cfg, dtype):
    fast = MoELayer(cfg).to(dtype)
    randomise(fast)
    naive = NaiveMoELayer(cfg).to(dtype)
    naive.load_state_dict(fast.state_dict())
    return fast, naive


CASES = [(router, cf, shared) for router in ROUTERS for cf in (0.0, 1.0) for shared in (0, 1)]


@pytest.mark.parametrize("router,capacity_factor,n_shared", CASES)
def test_vectorised_equals_naive_float64(router, capacity_factor, n_shared):
    cfg = tiny_config(router=router, capacity_factor=capacity_factor, n_shared_experts=n_shared,
                      router_jitter=0.1 if router == "topk" else 0.0)
    fast, naive = pair(cfg, torch.float64)
    x = torch.randn(3, 10, cfg.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out_f, gx_f, g_f = run_layer(fast, x)
    out_n, gx_n, g_n = run_layer(naive, x)
    torch.testing.assert_close(out_f.y, out_n.y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx_f, gx_n, rtol=1e-12, atol=1e-12)
    assert g_f.keys() == g_n.keys()
    for name in g_f:
        torch.testing.assert_close(g_f[name], g_n[name], rtol=1e-12, atol=1e-12, msg=name)
    assert torch.equal(out_f.stats.expert_counts, out_n.stats.expert_counts)
    assert out_f.stats.dropped_frac == out_n.stats.dropped_frac


@pytest.mark.parametrize("router", ["topk", "sigmoid_bias"])
def test_grouped_mm_float32_equals_naive_and_fallback(router, monkeypatch):
    cfg = tiny_config(router=router, capacity_factor=1.0)
    fast, naive = pair(cfg, torch.float32)
    x = torch.randn(4, 16, cfg.d_model, generator=torch.Generator().manual_seed(2))
    out_f, gx_f, g_f = run_layer(fast, x)
    out_n, gx_n, g_n = run_layer(naive, x)
    torch.testing.assert_close(out_f.y, out_n.y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx_f, gx_n, rtol=1e-5, atol=1e-6)
    for name in g_f:
        torch.testing.assert_close(g_f[name], g_n[name], rtol=1e-5, atol=1e-6, msg=name)
    # The per-expert fallback used where grouped_mm is unavailable gives the same numbers.
    monkeypatch.setattr(grouped_gemm, "grouped_mm_supported", lambda *a: False)
    fast.zero_grad()
    out_b, gx_b, _ = run_layer(fast, x)
    torch.testing.assert_close(out_b.y, out_f.y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx_b, gx_f, rtol=1e-5, atol=1e-6)


def test_grouped_mm_is_used_on_this_cpu_build():
    if not hasattr(torch.nn.functional, "grouped_mm"):
        pytest.skip("this torch has no F.grouped_mm")
    assert grouped_gemm.grouped_mm_supported("cpu", torch.float32)
    assert not grouped_gemm.grouped_mm_supported("cpu", torch.float64)  # float64 takes the fallback


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_grouped_mm_probe_is_not_fooled_by_a_no_grad_first_call(context):
    """The answer is cached per process; a first call from evaluation (no autograd) must not turn the
    grouped path off for the training that follows."""
    if not hasattr(torch.nn.functional, "grouped_mm"):
        pytest.skip("this torch has no F.grouped_mm")
    grouped_gemm.grouped_mm_supported.cache_clear()
    try:
        with context():
            assert grouped_gemm.grouped_mm_supported("cpu", torch.float32)
    finally:
        grouped_gemm.grouped_mm_supported.cache_clear()


def brute_force_dropped(expert_idx: list[int], cap: int) -> tuple[int, list[int]]:
    seen: dict[int, int] = {}
    dropped, kept = 0, []
    for pos, e in enumerate(expert_idx):
        seen[e] = seen.get(e, 0) + 1
        if seen[e] > cap:
            dropped += 1
        else:
            kept.append(pos)
    return dropped, kept


@pytest.mark.parametrize("factor", [0.5, 1.0, 1.25])
def test_dropped_counts_equal_brute_force(factor):
    cfg = tiny_config(router="topk", capacity_factor=factor, n_experts=4, top_k=2)
    layer = MoELayer(cfg).double()
    randomise(layer, std=1.0)  # strongly uneven routing, so experts overflow
    x = torch.randn(2, 12, cfg.d_model, dtype=torch.float64)
    routing = layer.router(x.view(-1, cfg.d_model), None)
    cap = capacity(factor, 24, 2, 4)
    dropped, kept = brute_force_dropped(routing.expert_idx.tolist(), cap)
    result = layer.experts(x.view(-1, cfg.d_model), routing.token_idx, routing.expert_idx,
                           routing.weight, cap)
    assert dropped > 0
    assert int(result.n_dropped) == dropped
    out = layer(x)
    assert out.stats.dropped_frac.item() == pytest.approx(dropped / routing.expert_idx.numel())
    # Dropped assignments contribute nothing: the output is the sum over the kept ones only.
    expected = torch.zeros_like(result.out)
    flat = x.view(-1, cfg.d_model)
    for pos in kept:
        t, e, w = int(routing.token_idx[pos]), int(routing.expert_idx[pos]), routing.weight[pos]
        h = layer.experts.w_in[e] @ flat[t]
        g, u = h.chunk(2)
        expected[t] += w * (layer.experts.w_out[e] @ (torch.nn.functional.silu(g) * u))
    torch.testing.assert_close(result.out, expected)


def test_eval_uses_eval_capacity_factor():
    cfg = tiny_config(capacity_factor=0.5, eval_capacity_factor=0.0)
    layer = MoELayer(cfg)
    assert layer.capacity(100) == capacity(0.5, 100, 2, 4)
    layer.eval()
    assert layer.capacity(100) is None  # dropless at evaluation


def test_fine_grained_experts_multiply_counts_and_divide_width():
    cfg = tiny_config(n_experts=4, top_k=2, granularity=4)
    layer = MoELayer(cfg)
    assert (layer.n_experts, layer.top_k, layer.experts.hidden) == (16, 8, 48 // 4)
    out = layer(torch.randn(2, 5, cfg.d_model))
    assert out.stats.expert_counts.sum() == 2 * 5 * 8


def test_width_grouped_mm_cannot_take_runs_the_fallback():
    """grouped_mm needs 16-byte aligned row strides; an odd expert width (37 floats) must still run
    (per-expert fallback) and match the naive loop, not fail mid-training."""
    cfg = tiny_config(expert_hidden=37)
    fast, naive = pair(cfg, torch.float32)
    x = torch.randn(2, 9, cfg.d_model, generator=torch.Generator().manual_seed(3))
    out_f, gx_f, _ = run_layer(fast, x)
    out_n, gx_n, _ = run_layer(naive, x)
    torch.testing.assert_close(out_f.y, out_n.y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx_f, gx_n, rtol=1e-5, atol=1e-6)
