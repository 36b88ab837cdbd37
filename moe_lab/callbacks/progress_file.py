"""A run's progress as a small JSON file in its run directory, for whoever watches from outside the
process (the sweep console reads every running trial's file; a user can `cat` it)."""

from __future__ import annotations

import time
from pathlib import Path

from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_only

from moe_lab.artifacts.atomic import write_json_atomic
from moe_lab.artifacts.metrics import TOKENS_PER_S, TRAIN_LM_LOSS, VAL_LOSS
from moe_lab.artifacts.run_dir import FAILED, INTERRUPTED
from moe_lab.errors import Interrupted


class ProgressFile(Callback):
    """Writes {status, step, max_steps, train_loss, val_loss, tokens_per_s, flops_per_step, updated} at most
    every `min_interval_s` seconds and at each validation; status "running", then "finished", or "interrupted"
    (a stop signal, Ctrl-C) or "failed" (any other exception ending the fit: a watcher never sees a run that
    ended as running; a sweep worker whose trial was taken away leaves its attempt "failed", as the trial is)."""

    def __init__(self, path: Path, flops_per_step: float, min_interval_s: float = 1.0):
        self.path, self.flops_per_step, self.min_interval_s = Path(path), flops_per_step, min_interval_s
        self._last_write = 0.0

    def _write(self, trainer, status: str) -> None:
        metrics = trainer.callback_metrics

        def value(name):
            v = metrics.get(name)
            return None if v is None else float(v)

        write_json_atomic(
            self.path,
            {
                "status": status,
                "step": int(trainer.global_step),
                "max_steps": int(trainer.max_steps),
                "train_loss": value(TRAIN_LM_LOSS),
                "val_loss": value(VAL_LOSS),
                "tokens_per_s": value(TOKENS_PER_S),
                "flops_per_step": self.flops_per_step,
                "updated": time.time(),
            },
        )
        self._last_write = time.monotonic()

    @rank_zero_only
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if time.monotonic() - self._last_write >= self.min_interval_s:
            self._write(trainer, "running")

    @rank_zero_only
    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._write(trainer, "running")

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module):
        self._write(trainer, "finished")

    @rank_zero_only
    def on_exception(self, trainer, pl_module, exception):
        self._write(trainer, INTERRUPTED if isinstance(exception, (Interrupted, KeyboardInterrupt)) else FAILED)
