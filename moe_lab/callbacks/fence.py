"""Stopping a run the moment it is no longer allowed to write (a sweep trial another worker took over)."""

from __future__ import annotations

import time
from collections.abc import Callable

import lightning.pytorch as pl


class Fence(pl.Callback):
    """Calls `check` (which raises to stop the run) at each validation, before each checkpoint is
    written, at the end of training, and every `interval` seconds of steps (so a process resumed after
    a long pause stops within a step)."""

    def __init__(self, check: Callable[[], None], interval: float):
        self.check, self.interval = check, interval
        self._checked = time.monotonic()

    def _check(self) -> None:
        self._checked = time.monotonic()
        self.check()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if time.monotonic() - self._checked >= self.interval:
            self._check()

    def on_validation_end(self, trainer, pl_module):
        self._check()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self._check()

    def on_train_end(self, trainer, pl_module):
        self._check()
