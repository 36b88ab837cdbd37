"""Causal self-attention with rotary position embeddings and optional grouped key/value heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [max_seq_len, head_dim] in the rotate-half layout (Llama, Mixtral, HF).

    Frequencies are duplicated across the two halves of the head dimension, so dimension i is paired
    with i + head_dim/2: the convention of HF Llama/Mixtral checkpoints, which lets their q/k weights
    be loaded one-to-one without permuting rows.
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [B, H, S, Dh]; cos/sin: [S, Dh]
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        max_seq_len: int,
        rope_theta: float,
        dropout: float = 0.0,
        *,
        head_dim: int = 0,
        qk_norm: str = "none",
        bias: bool = False,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        self.head_dim = head_dim or d_model // n_heads
        self.dropout = dropout
        self.qk_norm = qk_norm
        q_width, kv_width = n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, q_width, bias=bias)
        self.k_proj = nn.Linear(d_model, kv_width, bias=bias)
        self.v_proj = nn.Linear(d_model, kv_width, bias=bias)
        self.o_proj = nn.Linear(q_width, d_model, bias=False)
        if qk_norm != "none":
            # Always RMSNorm, whatever the block norm: the published q/k-norm models all use it.
            per_head = qk_norm == "head"
            self.q_norm = nn.RMSNorm(self.head_dim if per_head else q_width, eps=norm_eps)
            self.k_norm = nn.RMSNorm(self.head_dim if per_head else kv_width, eps=norm_eps)
        cos, sin = rope_tables(self.head_dim, max_seq_len, rope_theta)
        # Not saved in checkpoints: derived from the config.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, S, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, S, self.n_heads, self.head_dim)
        k = k.view(B, S, self.n_kv_heads, self.head_dim)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = v.view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.rope_cos[:S], self.rope_sin[:S]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            is_causal=True,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        return self.o_proj(y.transpose(1, 2).reshape(B, S, -1))
