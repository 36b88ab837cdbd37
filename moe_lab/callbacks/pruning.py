"""The bridge from a run's validations to an Optuna pruner."""

from __future__ import annotations

import lightning.pytorch as pl


class ValidationPruning(pl.Callback):
    """Reports the validation metric to the trial at each validation (by global step, not epoch, which
    is what an LM run has) and stops the run when the pruner says so. `trial`: an optuna.Trial (only its
    `report` and `should_prune` are used)."""

    def __init__(self, trial, monitor: str):
        self.trial, self.monitor = trial, monitor
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer, pl_module):
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or trainer.sanity_checking:
            return
        step = trainer.global_step
        self.trial.report(float(value), step)
        if self.trial.should_prune():
            self.pruned_at = step
            trainer.should_stop = True
