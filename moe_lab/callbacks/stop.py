"""Ending training at a step boundary when a stop signal arrived (moe_lab.signals), with last.ckpt saved there."""

from __future__ import annotations

import signal

from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint

from moe_lab import signals
from moe_lab.errors import Interrupted


class StopOnSignal(Checkpoint):
    """At the first optimizer-step boundary after a stop signal, saves `checkpoint`'s last.ckpt (unless it saved
    this step already) and raises Interrupted, which ends `Trainer.fit`.

    A Checkpoint, so that Lightning calls it after every other callback, and after `checkpoint` when listed after
    it: what it saves is what a periodic last.ckpt of this step holds, and the resumed run continues it
    bit-identically. It raises rather than set `trainer.should_stop`: Lightning validates whenever should_stop is
    set, and that unscheduled validation would change best.ckpt and what a pruner saw. All ranks stop at the same
    step when any of them was signalled (DDP)."""

    def __init__(self, checkpoint: ModelCheckpoint):
        self.checkpoint = checkpoint
        self._step_before_batch = 0

    def on_train_start(self, trainer, pl_module):
        signals.handle_again()

    def on_validation_start(self, trainer, pl_module):
        signals.handle_again()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._step_before_batch = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self._step_before_batch or trainer.global_step >= trainer.max_steps:
            return  # within a gradient accumulation; or training ends here anyway, validation and all
        signum = signals.received()
        if not trainer.strategy.reduce_boolean_decision(signum is not None, all=False):
            return
        # Lightning's own saving path for last.ckpt, as its ModelCheckpoint.on_train_end takes.
        if not self.checkpoint._should_skip_saving_checkpoint(trainer):
            self.checkpoint._save_last_checkpoint(trainer, self.checkpoint._monitor_candidates(trainer))
        raise Interrupted(signum or signal.SIGTERM)  # a rank another rank's signal stopped
