"""An experiment's training budget, derived here once for training, the sweep's plan and ETA and the
reports: tokens per optimizer step and training FLOPs.

An optimizer step takes `accumulate_grad_batches` micro-batches of `batch_size` sequences of
`block_size` tokens. Training FLOPs count three forwards per token (the forward and a backward of
twice its cost, Kaplan et al. 2020), on the forward FLOPs per token of `count_model`.
"""

from __future__ import annotations

from moe_lab.config.schema import ExperimentConfig
from moe_lab.model.accounting import count_model

# Forward + backward, counted in forwards.
TRAINING_FORWARDS = 3


def step_tokens(batch_size: int, block_size: int, accumulate_grad_batches: int = 1) -> int:
    """Training tokens of one optimizer step."""
    return batch_size * block_size * max(1, accumulate_grad_batches)


def tokens_per_step(cfg: ExperimentConfig) -> int:
    return step_tokens(cfg.data.batch_size, cfg.data.block_size, cfg.trainer.accumulate_grad_batches)


def training_flops_per_token(cfg: ExperimentConfig) -> float:
    return TRAINING_FORWARDS * count_model(cfg.model, cfg.data.block_size).total_flops_per_token


def training_flops_per_step(cfg: ExperimentConfig) -> float:
    """Training FLOPs of one optimizer step (all its micro-batches)."""
    return training_flops_per_token(cfg) * tokens_per_step(cfg)


def training_flops(cfg: ExperimentConfig) -> float:
    """Training FLOPs of a whole run: max_steps optimizer steps."""
    return cfg.trainer.max_steps * training_flops_per_step(cfg)
