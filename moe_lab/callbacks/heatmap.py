"""The layer x expert load image drawn during training (ExpertLoadMonitor) and by `moe_lab.inspect`
(matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HEATMAP_RANGE = 8.0  # the colour scale spans 1/8 .. 8 x uniform load, for every run alike


def expert_load_heatmap(load: np.ndarray, layers: list, title: str = "expert load", ylabel: str = "layer"):
    """load [n_layers, n_experts]: fraction of routed tokens per expert (rows sum to 1). The rows may be
    something else than layers (token classes: moe_lab.traces.specialisation), named by `ylabel`.
    Drawn by `draw_expert_load`, with its colour bar. Returns a matplotlib Figure (caller closes it).
    """
    load = np.asarray(load, dtype=float)
    fig, ax = plt.subplots(figsize=heatmap_size(load.shape[1], len(layers)))
    image = draw_expert_load(ax, load, layers, title, ylabel)
    load_colour_bar(fig, image, ax)
    fig.tight_layout()
    return fig


def heatmap_size(n_experts: int, n_rows: int) -> tuple[float, float]:
    """Inches of one heatmap panel with its colour bar."""
    return max(4.0, 0.35 * n_experts + 2), max(2.0, 0.4 * n_rows + 1.2)


def draw_expert_load(ax, load: np.ndarray, rows: list, title: str, ylabel: str):
    """The rows x experts image of `load` on `ax`; returns the image, for `load_colour_bar`.

    Colours are relative to uniform load (1/E), so a balanced layer is one flat colour and a collapsed
    expert stands out whatever the expert count. The scale is fixed, the same for every image of every run
    (so two runs of a sweep compare by eye): logarithmic from 1/8 to 8 times uniform, white at uniform,
    loads beyond either end drawn at the end (an expert with no token at 1/8).
    """
    from matplotlib.colors import LogNorm

    load = np.asarray(load, dtype=float)
    n_experts = load.shape[1]
    rel = np.clip(load * n_experts, 1 / HEATMAP_RANGE, HEATMAP_RANGE)
    norm = LogNorm(vmin=1 / HEATMAP_RANGE, vmax=HEATMAP_RANGE)
    image = ax.imshow(rel, aspect="auto", cmap="RdBu_r", norm=norm)
    ax.set_xlabel("expert")
    ax.set_ylabel(ylabel)
    ax.set_yticks(range(len(rows)), [str(i) for i in rows])
    if n_experts <= 32:
        ax.set_xticks(range(n_experts))
    ax.set_title(title)
    return image


def load_colour_bar(fig, image, ax) -> None:
    """The colour bar of `draw_expert_load`'s fixed scale beside `ax` (one axes or a list of them)."""
    bar = fig.colorbar(image, ax=ax, label="load / uniform load")
    ticks = [2.0**e for e in range(-3, 4)]
    bar.set_ticks(ticks, labels=["≤1/8", "1/4", "1/2", "1", "2", "4", "≥8"])
    bar.minorticks_off()
