"""Decoder-only transformer LM whose FFNs are dense or MoE per layer, as the config places them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from moe_lab.model.attention import CausalSelfAttention
from moe_lab.model.config import ModelConfig, moe_layer_indices, validate_model_config
from moe_lab.model.experts import GroupedExperts
from moe_lab.model.ffn import DenseFFN, make_norm
from moe_lab.model.moe import MoELayer, RoutingStats
from moe_lab.model.routers import Router


@dataclass
class ModelOutput:
    logits: torch.Tensor  # [B, S, V]
    # Router losses averaged over the MoE layers, each layer computed on its own tokens and logits
    # (never on all layers' logits concatenated). Unweighted: the caller applies the coefficients.
    aux_loss: torch.Tensor
    z_loss: torch.Tensor
    routing: dict[int, RoutingStats] = field(default_factory=dict)  # layer index -> stats
    lm_loss: torch.Tensor | None = None  # mean next-token cross-entropy when targets were given


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, use_moe: bool):
        super().__init__()
        self.attn_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.attn = CausalSelfAttention(
            cfg.d_model,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.max_seq_len,
            cfg.rope_theta,
            cfg.dropout,
            head_dim=cfg.head_dim,
            qk_norm=cfg.qk_norm,
            bias=cfg.attention_bias,
            norm_eps=cfg.norm_eps,
        )
        self.ffn_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.ffn = MoELayer(cfg) if use_moe else DenseFFN(cfg.d_model, cfg.d_ff, cfg.activation)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor):
        x = x + self.dropout(self.attn(self.attn_norm(x)))
        h = self.ffn(self.ffn_norm(x))
        if isinstance(h, torch.Tensor):
            return x + self.dropout(h), None
        # Tokens dropped for capacity get 0 from the experts: they pass on through the residual.
        return x + self.dropout(h.y), h


class MoETransformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        validate_model_config(cfg)  # before any tensor is built
        super().__init__()
        self.cfg = cfg
        self.moe_layers = moe_layer_indices(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i in self.moe_layers) for i in range(cfg.n_layers))
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, std), output projections scaled by 1/sqrt(2 * n_layers) so the residual
        stream's variance does not grow with depth."""
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_out = name.endswith(("o_proj", "w_out"))
                nn.init.normal_(module.weight, 0.0, out_std if is_out else std)
                if module.bias is not None:  # q/k/v biases (attention_bias) start at zero
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, GroupedExperts):
                nn.init.normal_(module.w_in, 0.0, std)
                nn.init.normal_(module.w_out, 0.0, out_std)
        for module in self.modules():  # then each router's own init, e.g. noisy gating's zero noise
            if isinstance(module, Router):
                module.init_weights()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        if idx.shape[1] > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {idx.shape[1]} > model.max_seq_len={self.cfg.max_seq_len}")
        x = self.embed(idx)
        routing: dict[int, RoutingStats] = {}
        aux, z = [], []
        for i, block in enumerate(self.blocks):
            x, moe_out = block(x)
            if moe_out is not None:
                routing[i] = moe_out.stats
                aux.append(moe_out.aux_loss)
                z.append(moe_out.z_loss)
        logits = self.lm_head(self.norm(x))
        zero = logits.new_zeros((), dtype=torch.float32)
        out = ModelOutput(
            logits=logits,
            aux_loss=torch.stack(aux).mean() if aux else zero,
            z_loss=torch.stack(z).mean() if z else zero,
            routing=routing,
        )
        if targets is not None:
            out.lm_loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return out

    def router_loss(self, out: ModelOutput) -> torch.Tensor:
        """The configured weighted sum of the router losses (0 coefficients contribute nothing). `out`
        carries the layer means; "sum" adds every MoE layer's loss, so it scales the mean by their count."""
        moe = self.cfg.moe
        layers = len(out.routing) if moe.router_loss_reduction == "sum" else 1
        return layers * (moe.aux_loss_coef * out.aux_loss + moe.z_loss_coef * out.z_loss)

    def router_gate_weights(self) -> dict[int, nn.Parameter]:
        """MoE layer index -> its router's gate weight [E, D] (what the LM loss must reach)."""
        return {i: self.blocks[i].ffn.router.gate.weight for i in self.moe_layers}

    @torch.no_grad()
    def update_router_biases(self, expert_counts: dict[int, torch.Tensor]) -> None:
        """Loss-free balancing step for the routers that keep a selection bias (`updates_bias`).

        expert_counts: layer index -> [E] tokens routed over the optimiser step (summed over
        micro-batches and ranks by the caller, so every rank applies the same update).
        """
        for i, counts in expert_counts.items():
            router = self.blocks[i].ffn.router
            if router.updates_bias:
                router.update_bias(counts)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        sample_top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample continuations of idx [B, S]. temperature 0 is greedy; sample_top_k samples among only that
        many most likely tokens (top-k sampling; named apart from routing's top_k, a different k)."""
        was_training = self.training
        self.eval()
        for _ in range(max_new_tokens):
            context = idx[:, -self.cfg.max_seq_len :]
            logits = self(context).logits[:, -1, :].float()
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if sample_top_k is not None:
                    kth = logits.topk(min(sample_top_k, logits.shape[-1]), dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        self.train(was_training)
        return idx
