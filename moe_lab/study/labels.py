"""How a configuration is named: the label of its trial directories and log lines."""

from __future__ import annotations

from typing import Any

# Trial directory labels are cut to this many characters (see trial_label).
LABEL_WIDTH = 80


def trial_label(params: dict[str, Any]) -> str:
    """A short readable run name: {'model.moe.top_k': 2} -> 'top_k=2'."""
    parts = []
    for key, value in params.items():
        if isinstance(value, float):
            value = f"{value:.3g}"
        parts.append(f"{key.rsplit('.', 1)[-1]}={yaml_value(value)}")
    return ",".join(parts).replace("/", "_").replace(" ", "")[:LABEL_WIDTH] or "base"


def yaml_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
