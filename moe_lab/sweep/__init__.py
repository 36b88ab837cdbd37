"""Optuna sweeps over experiment configs (`python -m moe_lab.sweep`)."""
