"""Small builders shared by the model tests."""

from __future__ import annotations

import torch

from moe_lab.model import MoETransformer
from moe_lab.model.config import ModelConfig, MoEConfig


def tiny_config(**moe_overrides) -> ModelConfig:
    model_keys = {
        k: moe_overrides.pop(k) for k in list(moe_overrides) if k in ModelConfig.__dataclass_fields__ and k != "moe"
    }
    base = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=32)
    base.update(model_keys)
    moe = dict(n_experts=4, top_k=2)
    moe.update(moe_overrides)
    return ModelConfig(**base, moe=MoEConfig(**moe))


def randomise(module: torch.nn.Module, seed: int = 0, std: float = 0.3) -> None:
    """Give every parameter (and the sigmoid-bias buffer) non-trivial values so routing is uneven."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
        for name, b in module.named_buffers():
            if name.endswith("selection_bias"):
                b.copy_(torch.randn(b.shape, generator=g, dtype=b.dtype) * 0.1)


def byte_model(**overrides) -> MoETransformer:
    """A randomised 3-layer byte-level model whose MoE layers are 0 and 2 (6 experts), in eval mode."""
    model = MoETransformer(
        tiny_config(vocab_size=256, n_layers=3, placement="list", layers=[0, 2], n_experts=6, **overrides)
    ).eval()
    randomise(model)
    return model


TINY_EXPERIMENT = """
name: tiny
model: {{d_model: 32, n_layers: 2, n_heads: 2, d_ff: 64, max_seq_len: 32,
        moe: {{n_experts: 4, top_k: 2, expert_hidden: 32}}}}
data: {{block_size: 32, batch_size: 4, cache_dir: {cache}}}
optim: {{warmup_steps: 1}}
trainer: {{max_steps: {steps}, val_every_n_steps: 2, val_batches: 1, log_every_n_steps: 1,
          progress_bar: false, deterministic: {deterministic}}}
monitor: {{log_every_n_steps: 2, heatmap_every_n_steps: 0, sample_tokens: 0}}
"""


def write_tiny_experiment(path, cache, steps: int = 4, deterministic: bool = False):
    """A seconds-long experiment on embedded Shakespeare, for end-to-end tests of the CLIs."""
    path.write_text(TINY_EXPERIMENT.format(cache=cache, steps=steps, deterministic=str(deterministic).lower()))
    return path
