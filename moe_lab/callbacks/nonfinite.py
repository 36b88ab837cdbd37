"""Stopping a run whose loss is NaN or infinite instead of letting it train on garbage."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from moe_lab.errors import MoELabError


class NonFiniteLossError(MoELabError, FloatingPointError):
    """Training produced a NaN or infinite loss. The run failed, the input was not refused: exit code 1."""

    exit_code = 1


class NonFiniteLossGuard(pl.Callback):
    """Raises NonFiniteLossError at the first non-finite training loss (a sweep records the trial as
    failed with this message)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(f"non-finite training loss {loss.item()} at step {trainer.global_step}")
