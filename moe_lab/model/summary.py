"""The model summary table: parameters, active parameters and FLOPs per component, MoE placement."""

from __future__ import annotations

from moe_lab.formatting import si
from moe_lab.model.accounting import count_model
from moe_lab.model.config import ModelConfig, expert_dims, moe_layer_indices


def moe_layers_line(cfg: ModelConfig) -> str:
    """One sentence on where the MoE layers are and what they hold (experts after the granularity split)."""
    layers = moe_layer_indices(cfg)
    if not layers:
        return f"no MoE layers: all {cfg.n_layers} layers are dense"
    d = expert_dims(cfg)
    shared = f", shared width {d.shared_hidden}" if d.shared_hidden else ""
    return (
        f"MoE layers {', '.join(map(str, layers))} of {cfg.n_layers} (placement {cfg.moe.placement}): "
        f"{d.n_routed_experts} experts of width {d.routed_hidden}, top-{d.routed_top_k}, router {cfg.moe.router}"
        f"{shared}, capacity {cfg.moe.capacity_factor or 'dropless'}"
    )


def model_summary(cfg: ModelConfig, seq_len: int) -> str:
    counts = count_model(cfg, seq_len)
    lines = [f"{'component':<16}{'params':>10}{'active/token':>14}{'fwd FLOPs/token':>17}"]
    for name, n in counts.params.items():
        if n or counts.flops_per_token[name]:
            lines.append(
                f"{name:<16}{si(n):>10}{si(counts.active_params[name]):>14}{si(counts.flops_per_token[name]):>17}"
            )
    lines.append(
        f"{'total':<16}{si(counts.total_params):>10}{si(counts.total_active_params):>14}"
        f"{si(counts.total_flops_per_token):>17}"
    )
    lines.append(moe_layers_line(cfg))
    return "\n".join(lines)


def summary_record(cfg: ModelConfig, seq_len: int) -> dict:
    counts = count_model(cfg, seq_len)
    return {"moe_layers": moe_layer_indices(cfg), **counts.as_dict()}
