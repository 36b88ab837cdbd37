"""The vectorised dispatch equals the naive per-expert loop: outputs and every gradient."""

import pytest
import torch

from moe_lab.model import grouped_gemm
from moe_lab.model.ffn import DenseFFN
from moe_lab.model.moe import MoELayer
from moe_lab.model.naive import NaiveMoELayer
from moe_lab.model.routers import ROUTER_REGISTRY
from tests.helpers import randomise, tiny_config

ROUTERS = sorted(ROUTER_REGISTRY)
assert ROUTERS, "no router registered: the registry-driven tests below would pass vacuously"


def run_layer(layer, x, seed=0):
    torch.manual_seed(seed)  # identical router noise / jitter for both implementations
    xi = x.clone().requires_grad_()
    out = layer(xi)
    loss = (
        (out.y * torch.linspace(-1, 1, out.y.numel(), dtype=x.dtype).view_as(out.y)).sum()
        + 0.3 * out.aux_loss
        + 0.2 * out.z_loss
    )
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
    cfg = tiny_config(
        router=router,
        capacity_factor=capacity_factor,
        n_shared_experts=n_shared,
        router_jitter=0.1 if "router_jitter" in ROUTER_REGISTRY[router].options else 0.0,
    )
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


# 24 tokens, k=2, 4 experts: ceil(factor * 24 * 2 / 4) = ceil(12 * factor) tokens per expert.
@pytest.mark.parametrize("factor,cap", [(0.5, 6), (1.0, 12), (1.25, 15)])
def test_dropped_counts_equal_brute_force(factor, cap):
    cfg = tiny_config(router="topk", capacity_factor=factor, n_experts=4, top_k=2)
    layer = MoELayer(cfg).double()
    randomise(layer, std=1.0)  # strongly uneven routing, so experts overflow
    x = torch.randn(2, 12, cfg.d_model, dtype=torch.float64)
    routing = layer.router(x.view(-1, cfg.d_model), None)
    dropped, kept = brute_force_dropped(routing.expert_idx.tolist(), cap)
    result = layer.experts(x.view(-1, cfg.d_model), routing.token_idx, routing.expert_idx, routing.weight, cap)
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
    cfg = tiny_config(capacity_factor=0.5, eval_capacity_factor=0.0, n_experts=4, top_k=2)
    layer = MoELayer(cfg)
    assert layer.capacity_for(100) == 25  # ceil(0.5 * 100 tokens * 2 / 4 experts)
    assert layer.capacity_for(101) == 26  # rounded up: 25.25
    layer.eval()
    assert layer.capacity_for(100) is None  # dropless at evaluation


def test_capacity_counts_the_split_experts():
    # granularity 2: 8 experts of half width, k=4; ceil(1.0 * 10 * 4 / 8) = 5, as for 4 experts at k=2.
    layer = MoELayer(tiny_config(capacity_factor=1.0, n_experts=4, top_k=2, granularity=2))
    assert layer.capacity_for(10) == 5


@pytest.mark.parametrize("router", ROUTERS)
def test_a_bounded_router_always_gets_a_capacity(router):
    layer = MoELayer(tiny_config(router=router, capacity_factor=0.0, n_experts=4, top_k=2))
    assert layer.capacity_for(10) == (5 if layer.router.bounded else None)  # factor 0 means 1.0 there


def test_fine_grained_experts_multiply_counts_and_divide_width():
    cfg = tiny_config(n_experts=4, top_k=2, granularity=4)
    layer = MoELayer(cfg)
    assert (layer.n_routed_experts, layer.routed_top_k, layer.experts.hidden) == (16, 8, 48 // 4)
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


def dense_ffn_reference(x, w_in, w_out, activation):
    """The plain FFN, written out with nothing from moe_lab: act(x W_in^T) W_out^T."""
    h = x @ w_in.t()
    if activation == "swiglu":
        gate, up = h.chunk(2, dim=-1)
        h = torch.nn.functional.silu(gate) * up
    else:
        h = torch.nn.functional.gelu(h) if activation == "gelu" else torch.nn.functional.relu(h)
    return h @ w_out.t()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("capacity_factor", [0.0, 1.0])
@pytest.mark.parametrize("activation", ["swiglu", "gelu", "relu"])
def test_one_expert_top1_equals_the_dense_ffn(activation, capacity_factor, dtype):
    """MegaBlocks' parity check: one expert, k=1, softmax gate weight exactly 1 and nothing dropped,
    so the MoE layer is the dense FFN with the expert's weights, in value and in every gradient."""
    cfg = tiny_config(n_experts=1, top_k=1, activation=activation, capacity_factor=capacity_factor)
    layer = MoELayer(cfg).to(dtype)
    randomise(layer)
    w_in = layer.experts.w_in.detach()[0].clone().requires_grad_()
    w_out = layer.experts.w_out.detach()[0].clone().requires_grad_()
    x = torch.randn(3, 10, cfg.d_model, dtype=dtype, generator=torch.Generator().manual_seed(4))
    probe = torch.randn(3, 10, cfg.d_model, dtype=dtype, generator=torch.Generator().manual_seed(5))
    x_moe, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = layer(x_moe)
    ref = dense_ffn_reference(x_ref, w_in, w_out, activation)
    (out.y * probe).sum().backward()
    (ref * probe).sum().backward()
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    assert out.stats.dropped_frac == 0 and out.stats.mean_topk_weight == 1.0
    torch.testing.assert_close(out.y, ref, **tol)
    torch.testing.assert_close(x_moe.grad, x_ref.grad, **tol)
    torch.testing.assert_close(layer.experts.w_in.grad[0], w_in.grad, **tol)
    torch.testing.assert_close(layer.experts.w_out.grad[0], w_out.grad, **tol)
    # And the model's own dense FFN holding the same weights computes the same function.
    dense = DenseFFN(cfg.d_model, layer.experts.hidden, activation).to(dtype)
    with torch.no_grad():
        dense.w_in.weight.copy_(w_in)
        dense.w_out.weight.copy_(w_out)
    torch.testing.assert_close(dense(x), ref.detach(), **tol)
