"""The training progress bar: Lightning's own, labelled for a run counted in steps.

Lightning's bar says `Epoch 0/-2` for a run bounded by max_steps (max_epochs=-1), shows the logger
version as `v_num: 0.000`, and prints every metric with three decimals under its full logged name,
which a terminal truncates. This bar shows the epoch alone, drops v_num and gives short labels; the
values are the logged ones (trainer.progress_bar_metrics), unchanged. It counts the run's optimizer steps,
global step of max_steps: Lightning's counts batches of the epoch against the steps left when the epoch
started, which reads 74/950 for a run resumed at step 50 of 1000.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

from moe_lab.artifacts.metrics import TOKENS_PER_S, TRAIN_LM_LOSS, VAL_LOSS

# logged name -> (label on the bar, digits after the point)
BAR_LABELS = {TRAIN_LM_LOSS: ("loss", 3), TOKENS_PER_S: ("tok/s", 0), VAL_LOSS: ("val", 3)}


def bar_items(metrics: dict) -> dict[str, str]:
    """The bar's items: known metrics under short labels, as text so no format is imposed on them."""
    items = {}
    for name, value in metrics.items():
        label, digits = BAR_LABELS.get(name, (name.rsplit("/", 1)[-1], 3))
        items[label] = f"{float(value):.{digits}f}"
    return items


class _StepRunBar:
    def get_metrics(self, trainer, pl_module):
        return bar_items(trainer.progress_bar_metrics)

    @property
    def total_train_batches(self) -> int:
        return self.trainer.max_steps  # every run is bounded by max_steps (max_epochs=-1, moe_lab.training.run)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # Lightning's bars move to batch_idx + 1; this one to the steps taken (fewer with gradient accumulation).
        super().on_train_batch_end(trainer, pl_module, outputs, batch, trainer.global_step - 1)


if _RICH_AVAILABLE:

    class ProgressBar(_StepRunBar, RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            # Lightning appends "/{max_epochs - 1}", which is "/-2" for a run bounded by steps.
            return f"epoch {current_epoch}"
else:

    class ProgressBar(_StepRunBar, TQDMProgressBar):
        def on_train_start(self, trainer, pl_module) -> None:
            super().on_train_start(trainer, pl_module)
            # A run resumed mid-epoch starts without on_train_epoch_start, which sets the total.
            self.train_progress_bar.reset(self.total_train_batches)
