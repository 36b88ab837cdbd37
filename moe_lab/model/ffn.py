"""Dense feed-forward blocks and the activation shared with the experts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gated(activation: str) -> bool:
    return activation == "swiglu"


class _SwiGLU(torch.autograd.Function):
    """silu(gate) * up [* row_scale] on h = [gate | up], written as one function so the backward
    fills both halves of the gradient in one buffer. Autograd's version builds two strided gradients
    and concatenates them, about 2x slower on CPU for expert-sized rows (`python -m moe_lab.bench moe`).
    The optional row scale [A, 1] lets the MoE apply its gate weights here, where the tensor is
    narrower than the expert output, instead of in an extra pass over [A, d_model]."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, row_scale: torch.Tensor | None) -> torch.Tensor:
        gate, up = h.chunk(2, dim=-1)
        silu_gate = F.silu(gate)
        # Keeping silu(gate) costs [A, H] of memory and saves recomputing it in the backward.
        ctx.save_for_backward(h, silu_gate, row_scale)
        out = silu_gate * up
        return out if row_scale is None else out.mul_(row_scale)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        h, silu_gate, row_scale = ctx.saved_tensors
        gate, up = h.chunk(2, dim=-1)
        half = gate.shape[-1]
        grad = torch.empty_like(h)
        d_act = dy * up  # d(out)/d(silu(gate)), before the row scale
        d_scale = None
        if row_scale is not None:
            d_scale = (d_act * silu_gate).sum(dim=-1, keepdim=True) if ctx.needs_input_grad[1] else None
            d_act.mul_(row_scale)
            silu_gate = silu_gate * row_scale
        torch.ops.aten.silu_backward.grad_input(d_act, gate, grad_input=grad[..., :half])
        torch.mul(dy, silu_gate, out=grad[..., half:])
        return grad, d_scale


def apply_activation(h: torch.Tensor, activation: str, row_scale: torch.Tensor | None = None) -> torch.Tensor:
    """h is the input projection; for SwiGLU it holds [gate | up] side by side (Shazeer 2020).
    row_scale [A, 1], if given, multiplies each output row."""
    if activation == "swiglu":
        return _SwiGLU.apply(h, row_scale)
    out = F.gelu(h) if activation == "gelu" else F.relu(h)
    return out if row_scale is None else out * row_scale


class DenseFFN(nn.Module):
    """Position-wise FFN. For SwiGLU the gate and up projections are one fused matmul."""

    def __init__(self, d_model: int, hidden: int, activation: str):
        super().__init__()
        self.activation = activation
        self.hidden = hidden
        self.w_in = nn.Linear(d_model, hidden * (2 if gated(activation) else 1), bias=False)
        self.w_out = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_out(apply_activation(self.w_in(x), self.activation))


def make_norm(kind: str, d_model: int, eps: float) -> nn.Module:
    if kind == "rmsnorm":
        return nn.RMSNorm(d_model, eps=eps)
    return nn.LayerNorm(d_model, eps=eps, bias=False)
