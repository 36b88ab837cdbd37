"""ExpertLoadMonitor: per-layer expert load, imbalance and drop metrics, logged once per window of steps.

Reads `outputs["routing"]` (layer -> RoutingStats, already reduced across DDP ranks by the
LightningModule) in `on_train_batch_end`, sums micro-batches on the device and moves one small tensor per
layer to the host per logging window.

Why scalars go to the loggers directly rather than through `pl_module.log`: Lightning writes
`self.log` values only every `Trainer(log_every_n_steps)` steps and rewrites the last value at every one
of those steps until the epoch ends, so a metric computed every N steps would show up stale, repeated,
or not at all. Like Lightning's own LearningRateMonitor we call `logger.log_metrics(..., step)` on every
logger, at Lightning's step for the batch that closed the window (global_step - 1, the step the loss of
that batch is plotted at). The per-layer and summary scalars are also put in `trainer.callback_metrics`
(`pl_module.log(..., logger=False)`) so ModelCheckpoint/EarlyStopping can monitor them.
"""

from __future__ import annotations

import numpy as np
from lightning.pytorch import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from moe_lab.artifacts.metrics import DROPPED_FRAC_MEAN, LOAD_CV_MAX, LOAD_CV_MEAN, layer_tag
from moe_lab.callbacks.routing_metrics import (
    LayerTotals,
    RoutingAccumulator,
    dead_experts,
    load_cv,
    load_fractions,
    max_over_uniform,
    normalised_entropy,
    routing_from_outputs,
    token_spread,
)
from moe_lab.checks import whole_at_least


def tensorboard_writers(trainer) -> list:
    """SummaryWriters of the trainer's TensorBoard loggers (none for other or absent loggers)."""
    return [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


def layer_metrics(t: LayerTotals, n_steps: int) -> dict[str, float]:
    """One layer's window metrics. tokens_* are assignments per expert per optimizer step."""
    tokens_min, tokens_max, tokens_std = token_spread(t.counts / n_steps)
    return {
        "load_cv": load_cv(t.counts),
        "max_over_uniform": max_over_uniform(t.counts),
        "entropy_norm": normalised_entropy(t.entropy, t.n_experts),
        "dropped_frac": t.dropped_frac,
        "dead_experts": float(dead_experts(t.counts)),
        "tokens_min": tokens_min,
        "tokens_max": tokens_max,
        "tokens_std": tokens_std,
    }


class ExpertLoadMonitor(Callback):
    """Logs expert load every `log_every_n_steps` optimizer steps, aggregated over those steps.

    Per MoE layer i: `moe/layer{i}/{load_cv, max_over_uniform, entropy_norm, dropped_frac, dead_experts,
    tokens_min, tokens_max, tokens_std}`, and with `log_expert_scalars` `moe/layer{i}/expert{j}` (load
    fraction of expert j) when E <= max_experts_logged. Across layers: `moe/load_cv_mean`, `moe/load_cv_max`,
    `moe/dropped_frac_mean`.
    TensorBoard only: a histogram `moe/layer{i}/load` per window, and every `heatmap_every_n_steps`
    (0 disables) a layer x expert image `moe/load_heatmap`.

    The histogram is of the expert index weighted by load: bucket j spans [j - 0.5, j + 0.5] and holds
    expert j's load fraction, so TensorBoard's histogram tab draws the load profile over experts at every
    window (a histogram of the fractions themselves would hide which expert is starved).
    """

    def __init__(
        self,
        log_every_n_steps: int = 10,
        heatmap_every_n_steps: int = 200,
        max_experts_logged: int = 64,
        log_expert_scalars: bool = False,
    ):
        whole_at_least("log_every_n_steps", log_every_n_steps, 1)
        whole_at_least("heatmap_every_n_steps", heatmap_every_n_steps, 0)
        whole_at_least("max_experts_logged", max_experts_logged, 0)
        self.log_every_n_steps = log_every_n_steps
        self.heatmap_every_n_steps = heatmap_every_n_steps
        self.max_experts_logged = max_experts_logged
        self.log_expert_scalars = log_expert_scalars
        self._window = RoutingAccumulator()
        self._window_steps = 0
        self._steps_before_batch = 0
        self._last: dict = {}

    # ---- Lightning hooks ----

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._steps_before_batch = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._window.add(routing_from_outputs(outputs))
        if trainer.global_step == self._steps_before_batch or not self._window:
            return  # a micro-batch of a gradient-accumulation step, or a dense model
        self._window_steps += 1
        if trainer.global_step % self.log_every_n_steps == 0:
            totals, n_steps = self._window.pop(), self._window_steps
            self._window_steps = 0
            self._report(trainer, pl_module, totals, n_steps)

    def on_train_end(self, trainer, pl_module) -> None:
        # A partial last window is logged and counts for summary(), but stays open: a run resumed
        # from a checkpoint saved after fit() continues it.
        if self._window_steps:
            self._report(trainer, None, self._window.totals(), self._window_steps)

    # ---- results ----

    def summary(self) -> dict:
        """The last window's headline numbers for the run's final metrics ({} before the first window)."""
        return dict(self._last)

    def state_dict(self) -> dict:
        return {"window": self._window.state_dict(), "window_steps": self._window_steps, "last": self._last}

    def load_state_dict(self, state_dict: dict) -> None:
        self._window.load_state_dict(state_dict["window"])
        self._window_steps = int(state_dict["window_steps"])
        self._last = dict(state_dict["last"])

    # ---- internals ----

    def _report(self, trainer, pl_module, totals: dict[int, LayerTotals], n_steps: int) -> None:
        """Log one window of `n_steps` optimizer steps ending at the current step; remember its summary."""
        step = trainer.global_step
        per_layer = {layer: layer_metrics(t, n_steps) for layer, t in totals.items()}
        fractions = {layer: load_fractions(t.counts) for layer, t in totals.items()}
        cvs = [m["load_cv"] for m in per_layer.values()]
        headline = {layer_tag(layer, k): v for layer, m in per_layer.items() for k, v in m.items()}
        headline.update(
            {
                LOAD_CV_MEAN: float(np.mean(cvs)),
                LOAD_CV_MAX: float(np.max(cvs)),
                DROPPED_FRAC_MEAN: float(np.mean([m["dropped_frac"] for m in per_layer.values()])),
            }
        )
        scalars = dict(headline)
        for layer, frac in fractions.items():
            if self.log_expert_scalars and len(frac) <= self.max_experts_logged:
                scalars.update({layer_tag(layer, f"expert{j}"): float(f) for j, f in enumerate(frac)})
        self._last = self._summarise(step, per_layer, fractions)
        self._write(trainer, scalars, fractions, step, n_steps)
        if pl_module is not None:
            pl_module.log_dict(headline, logger=False)

    @staticmethod
    def _summarise(step: int, per_layer: dict, fractions: dict) -> dict:
        def mean_of(key):
            return float(np.mean([m[key] for m in per_layer.values()]))

        return {
            "final_step": step,
            "final_load_cv": mean_of("load_cv"),
            "final_load_cv_max": float(np.max([m["load_cv"] for m in per_layer.values()])),
            "final_max_over_uniform": mean_of("max_over_uniform"),
            "final_max_vio": float(np.mean([max_vio(f) for f in fractions.values()])),
            "final_dropped_frac": mean_of("dropped_frac"),
            "final_dead_experts": int(sum(m["dead_experts"] for m in per_layer.values())),
            "final_load_fractions": {f"layer{layer}": frac.tolist() for layer, frac in fractions.items()},
        }

    @rank_zero_only
    def _write(self, trainer, scalars: dict, fractions: dict, step: int, n_steps: int) -> None:
        tb_step = step - 1  # Lightning's logger step for metrics logged by this batch
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=tb_step)
        writers = tensorboard_writers(trainer)
        if not writers:
            return
        H = self.heatmap_every_n_steps
        # The window covers steps (step - n_steps, step]: draw if a multiple of H falls inside it.
        heatmap_due = H > 0 and step // H != (step - n_steps) // H
        same_width = len({len(f) for f in fractions.values()}) == 1
        for writer in writers:
            for layer, frac in fractions.items():
                add_load_histogram(writer, layer_tag(layer, "load"), frac, tb_step)
            if heatmap_due and same_width:
                from moe_lab.callbacks.heatmap import expert_load_heatmap  # matplotlib: imported only when drawing

                layers = list(fractions)
                fig = expert_load_heatmap(
                    np.stack([fractions[i] for i in layers]),
                    layers,
                    title=f"expert load, steps {step - n_steps + 1}-{step}",
                )
                writer.add_figure("moe/load_heatmap", fig, global_step=tb_step, close=True)


def max_vio(fractions: np.ndarray) -> float:
    """MaxVio = max_j load_j / mean_j load_j - 1: how much more than its even share the busiest expert
    takes ("maximal violation", Wang et al. 2024, "Auxiliary-Loss-Free Load Balancing Strategy for
    Mixture-of-Experts", arXiv:2408.15664; the balance metric DeepSeek-V3 reports). 0 is perfect
    balance, E - 1 every assignment to one expert."""
    return float(fractions.max() / fractions.mean() - 1.0)


def add_load_histogram(writer, tag: str, fractions: np.ndarray, step: int) -> None:
    """Histogram of the expert index weighted by load: bucket j = [j - 0.5, j + 0.5] holds fraction j.

    TensorBoard drops empty end buckets and takes the outer edges from min/max, so min/max are set to
    the edges of the first and last loaded experts.
    """
    loaded = np.flatnonzero(fractions > 0)
    if loaded.size == 0 or not np.all(np.isfinite(fractions)):
        return
    idx = np.arange(len(fractions), dtype=np.float64)
    writer.add_histogram_raw(
        tag,
        min=float(loaded[0]) - 0.5,
        max=float(loaded[-1]) + 0.5,
        num=float(fractions.sum()),
        sum=float((idx * fractions).sum()),
        sum_squares=float((idx**2 * fractions).sum()),
        bucket_limits=idx + 0.5,
        bucket_counts=fractions,
        global_step=step,
    )
