"""Every Lightning callback of a run: expert load monitoring and collapse detection (both read
`outputs["routing"]`, layer -> RoutingStats, returned by the LightningModule's training_step; the metrics
themselves are plain functions in `routing_metrics`, usable without Lightning), progress bar, progress
file and throughput (training tokens per second, carried across resumes), crash-safe checkpoints, the
non-finite-loss guard and the sweep's pruning bridge.
"""

from moe_lab.callbacks.collapse import ExpertCollapseDetector
from moe_lab.callbacks.expert_load import ExpertLoadMonitor

__all__ = ["ExpertCollapseDetector", "ExpertLoadMonitor"]
