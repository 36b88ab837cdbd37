"""The grouped products equal one matmul per expert, and a compiled MoE model equals the eager one."""

import pytest
import torch

from moe_lab.model import grouped_gemm
from moe_lab.model.transformer import MoETransformer
from tests.helpers import randomise, tiny_config

COUNTS = [3, 0, 5, 4]  # an empty group included: its weight gradient must be zero


def reference(x, w, g, counts):
    """Per expert with plain matmuls: y_e = x_e w_e^T, dx_e = g_e w_e, dw_e = g_e^T x_e."""
    ys, dxs, dws = [], [], []
    for e, (xe, ge) in enumerate(zip(x.split(counts), g.split(counts), strict=True)):
        ys.append(xe @ w[e].t())
        dxs.append(ge @ w[e])
        dws.append(ge.t() @ xe)
    return torch.cat(ys), torch.cat(dxs), torch.stack(dws)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # grouped_mm and the fallback
def test_grouped_products_equal_per_expert_matmuls(dtype):
    gen = torch.Generator().manual_seed(0)
    E, N, K, A = len(COUNTS), 8, 12, sum(COUNTS)
    x = torch.randn(A, K, generator=gen, dtype=dtype)
    w = torch.randn(E, N, K, generator=gen, dtype=dtype)
    g = torch.randn(A, N, generator=gen, dtype=dtype)
    counts = torch.tensor(COUNTS)
    y_ref, dx_ref, dw_ref = reference(x, w, g, COUNTS)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grouped_gemm.grouped_linear(x, w, counts), y_ref, **tol)
    torch.testing.assert_close(grouped_gemm.grouped_linear_input_grad(g, w, counts), dx_ref, **tol)
    dw = grouped_gemm.grouped_linear_weight_grad(g, x, counts)
    torch.testing.assert_close(dw, dw_ref, **tol)
    assert torch.all(dw[1] == 0)
    # The custom op's autograd (used under torch.compile) gives the same gradients.
    xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
    (grouped_gemm._grouped_linear_op(xi, wi, counts) * g).sum().backward()
    torch.testing.assert_close(xi.grad, dx_ref, **tol)
    torch.testing.assert_close(wi.grad, dw_ref, **tol)


@pytest.mark.parametrize("capacity_factor", [0.0, 1.0])
def test_compiled_model_equals_eager(capacity_factor):
    """torch.compile used to fail on float32 MoE models (its fake-tensor check for grouped_mm
    accepts only bfloat16); the experts' products are now opaque custom ops. aot_eager traces
    exactly what inductor would, without needing a C++ compiler."""
    cfg = tiny_config(capacity_factor=capacity_factor)
    torch.manual_seed(0)
    model = MoETransformer(cfg)
    randomise(model, std=0.1)
    tokens = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    eager = model(tokens, tokens)
    (eager.lm_loss + eager.aux_loss).backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, backend="aot_eager")(tokens, tokens)
    (compiled.lm_loss + compiled.aux_loss).backward()
    torch.testing.assert_close(compiled.lm_loss, eager.lm_loss, rtol=1e-6, atol=1e-6)
    assert eager_grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, grad in eager_grads.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, rtol=1e-5, atol=1e-6, msg=name)
