"""The layer x expert load image drawn during training (ExpertLoadMonitor) and by `moe_lab.inspect`
(matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def expert_load_heatmap(load: np.ndarray, layers: list[int], title: str = "expert load"):
    """load [n_layers, n_experts]: fraction of routed tokens per expert (rows sum to 1).

    Colours are relative to uniform load (1/E), so a balanced layer is one flat colour and a collapsed
    expert stands out whatever the expert count. Returns a matplotlib Figure (caller closes it).
    """
    load = np.asarray(load, dtype=float)
    n_experts = load.shape[1]
    rel = load * n_experts
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * n_experts + 2), max(2.0, 0.4 * len(layers) + 1.2)))
    im = ax.imshow(rel, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(2.0, float(rel.max())))
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.set_yticks(range(len(layers)), [str(i) for i in layers])
    if n_experts <= 32:
        ax.set_xticks(range(n_experts))
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="load / uniform load")
    fig.tight_layout()
    return fig
