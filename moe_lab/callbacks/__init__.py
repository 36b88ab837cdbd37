"""Lightning callbacks that watch the routers: expert load monitoring and collapse detection.

Both read `outputs["routing"]` (layer -> RoutingStats) returned by the LightningModule's training_step.
The metrics themselves are plain functions in `routing_metrics`, usable without Lightning.
"""

from moe_lab.callbacks.collapse import ExpertCollapseDetector
from moe_lab.callbacks.expert_load import ExpertLoadMonitor

__all__ = ["ExpertCollapseDetector", "ExpertLoadMonitor"]
