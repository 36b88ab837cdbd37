"""Throughput, one definition for the progress bar, TensorBoard, the final metrics and the sweep table:
training tokens over the wall-clock time of the training steps, validation excluded, carried across resumes
in every checkpoint."""

from __future__ import annotations

import time

from lightning.pytorch import Callback

from moe_lab.artifacts.metrics import TOKENS_PER_S

# Checkpoint entry holding the training totals up to that checkpoint (see Throughput.on_save_checkpoint).
PROGRESS_KEY = "moe_lab_progress"
PROGRESS_ZERO = {"train_tokens": 0, "train_seconds": 0.0, "wall_time_s": 0.0}


class Throughput(Callback):
    """Times the training steps. It must be the trainer's last callback (after the checkpoint callbacks,
    which Lightning moves to the end of the list): an interval ends after the other callbacks' hooks, and
    the clock restarts after the best checkpoint is saved at the end of a validation.

    train_tokens and train_seconds count this process's part; progress_before holds the parts before a
    resume, up to the checkpoint resumed from, and resumed_from_step that checkpoint's step (None: a fresh
    run)."""

    def __init__(self):
        self.train_tokens = 0
        self.train_seconds = 0.0
        self._step_clock = 0.0  # end of the previous training step, validation or train start
        self._batch_tokens = 0  # of the batch in flight; 0 between batches
        self._fit_start = time.perf_counter()
        self.progress_before = dict(PROGRESS_ZERO)
        self.resumed_from_step: int | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.train_tokens / self.train_seconds if self.train_seconds else 0.0

    def on_fit_start(self, trainer, pl_module):
        self._fit_start = time.perf_counter()

    def on_train_start(self, trainer, pl_module):
        self._step_clock = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        # After the checkpoint callbacks' own hook (the best checkpoint is saved there): validation,
        # text samples and that checkpoint stay out of the training time.
        self._step_clock = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._batch_tokens = batch[0].numel() * trainer.world_size

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # An interval runs from the end of the previous step (or validation) to the end of this one,
        # after the other callbacks' hooks: data loading, forward, backward, optimiser, logging and
        # callbacks are all inside.
        now = time.perf_counter()
        tokens, self._batch_tokens = self._batch_tokens, 0
        self.train_tokens += tokens
        self.train_seconds += now - self._step_clock
        self._step_clock = now
        # The running value, not the last step's: the bar's final value is the run's figure.
        pl_module.log(TOKENS_PER_S, self.tokens_per_s, prog_bar=True)

    # ---- progress across resumes: a checkpoint entry of its own, not the callback state ----

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        # Totals up to this checkpoint, so a resumed run can report the whole run. Checkpoint callbacks
        # save before this callback's on_train_batch_end: the batch in flight is counted here.
        in_flight = time.perf_counter() - self._step_clock if self._batch_tokens else 0.0
        before = self.progress_before
        checkpoint[PROGRESS_KEY] = {
            "train_tokens": before["train_tokens"] + self.train_tokens + self._batch_tokens,
            "train_seconds": before["train_seconds"] + self.train_seconds + in_flight,
            "wall_time_s": before["wall_time_s"] + time.perf_counter() - self._fit_start,
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        self.progress_before = {**PROGRESS_ZERO, **checkpoint.get(PROGRESS_KEY, {})}
        self.resumed_from_step = int(checkpoint.get("global_step", 0))
