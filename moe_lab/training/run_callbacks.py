"""The callbacks every run has (built by moe_lab.training.run.build_callbacks), by name: the final metrics
read the load monitor, the collapse detector, the best checkpoint and the throughput from them."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import lightning.pytorch as pl

from moe_lab.callbacks import ExpertCollapseDetector, ExpertLoadMonitor
from moe_lab.callbacks.checkpoint import RotatingCheckpoint
from moe_lab.callbacks.nonfinite import NonFiniteLossGuard
from moe_lab.callbacks.progress_file import ProgressFile
from moe_lab.callbacks.routing_trace import RoutingTraceMonitor
from moe_lab.callbacks.stop import StopOnSignal
from moe_lab.callbacks.throughput import Throughput


@dataclass
class RunCallbacks:
    best_checkpoint: RotatingCheckpoint
    last_checkpoint: RotatingCheckpoint
    # After last_checkpoint: Lightning keeps the checkpoint callbacks' order (see StopOnSignal).
    stop_on_signal: StopOnSignal = field(init=False)
    load_monitor: ExpertLoadMonitor
    collapse_detector: ExpertCollapseDetector
    nan_guard: NonFiniteLossGuard
    progress: ProgressFile
    throughput: Throughput  # build_trainer puts it after every other callback (see Throughput)
    routing_trace: RoutingTraceMonitor | None = None  # only with monitor.trace_every_n_steps > 0

    def __post_init__(self):
        self.stop_on_signal = StopOnSignal(self.last_checkpoint)

    def as_list(self) -> list[pl.Callback]:
        """The callbacks in field order, those the run does not use (None) left out (not dataclasses.astuple:
        it would copy them)."""
        return [callback for f in fields(self) if (callback := getattr(self, f.name)) is not None]
