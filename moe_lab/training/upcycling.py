"""A run's starting weights upcycled from a trained dense model (`upcycle:` section; moe_lab.model.upcycle)."""

from __future__ import annotations

import torch

from moe_lab.config import ExperimentConfig
from moe_lab.errors import ConfigError
from moe_lab.interop.checkpoint import CheckpointError, load_model_source
from moe_lab.model import MoETransformer
from moe_lab.model.upcycle import upcycle_state_dict


def upcycle_from_dense(cfg: ExperimentConfig, model: MoETransformer) -> str:
    """Load the weights `cfg.upcycle` describes into `model` (the freshly initialised MoE of `cfg.model`,
    whose routers keep their initialisation); returns the line that tells the researcher so. ConfigError
    naming the key when the source cannot be read or its shapes cannot be mapped onto the MoE."""
    up = cfg.upcycle
    try:
        dense_cfg, dense_state, read_from = load_model_source(up.source)
    except CheckpointError as err:
        raise ConfigError("upcycle.source", str(err)) from None
    state = upcycle_state_dict(
        dense_cfg,
        dense_state,
        cfg.model,
        model.state_dict(),
        up.method,
        noise_std=up.noise_std,
        drop_ratio=up.drop_ratio,
        generator=torch.Generator().manual_seed(cfg.seed),  # the same experts for the same seed
        source=str(read_from),
    )
    model.load_state_dict(state, strict=True)
    return (
        f"upcycled ({up.method}) from the dense model in {read_from}; routers start freshly initialised, and "
        f"the dense run's optimizer state is not carried over (AdamW moments and the LR schedule start at 0)"
    )
