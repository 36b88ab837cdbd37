"""moe_lab: experiment and ablation harness for Mixture-of-Experts language models."""

__version__ = "0.1.0"
