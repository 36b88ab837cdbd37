"""The sweep report's routing-trace figures, for runs traced during training (`monitor.trace_every_n_steps`):

plots/specialisation_<config>.png   per configuration, its first seed's last trace: for each MoE layer,
                                    the share of each token class's assignments each expert takes
                                    (moe_lab.traces.specialisation), beside one another

They are embedded in report.html with every other plot; TensorBoard has the same images per validation
(`moe/layer<i>/specialisation`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from moe_lab.artifacts.run_dir import TOKENIZER_DIR, TRACES
from moe_lab.errors import MoELabError, first_line
from moe_lab.report.sweep_study import StudyData

log = logging.getLogger(__name__)
TRACE_STEP = re.compile(r"step_(\d+)\.parquet")


def last_trace(run_dir: Path) -> Path | None:
    """RUN/traces/step_<N>.parquet with the largest N, or None when the run wrote no trace."""
    found = [(int(m[1]), p) for p in (run_dir / TRACES).glob("step_*.parquet") if (m := TRACE_STEP.fullmatch(p.name))]
    return max(found)[1] if found else None


def _decoder(run_dir: Path):
    from moe_lab.data.tokenizers import load_saved_tokenizer

    try:
        return load_saved_tokenizer(run_dir / TOKENIZER_DIR).decode
    except (MoELabError, OSError, ValueError):
        return None  # classes by token id instead (specialisation.token_classes)


def write_specialisation_plots(data: StudyData, plots_dir: Path) -> dict[str, Path]:
    """plots/specialisation_<config>.png for each configuration whose first traced seed has a trace."""
    from moe_lab.report.figures import save_figure
    from moe_lab.traces.specialisation import class_expert_shares, token_classes
    from moe_lab.traces.store import read_trace

    written = {}
    for row in data.rows:
        run_dir = next((data.study_dir / d for d in row.run_dirs if last_trace(data.study_dir / d)), None)
        if run_dir is None:
            continue
        try:
            trace = read_trace(last_trace(run_dir))
        except MoELabError as err:
            log.warning("note: skipped the specialisation plot of %s: %s", row.label, first_line(err))
            continue
        classes = token_classes(trace.token_ids, _decoder(run_dir))
        fig = layers_side_by_side(trace.layers, class_expert_shares(trace, classes), classes.names)
        fig.suptitle(f"{row.label} ({run_dir.name}), step {trace.meta.step}: expert share by token class")
        name = "specialisation_" + re.sub(r"[^A-Za-z0-9_.=-]+", "_", row.label)
        written[name] = save_figure(fig, plots_dir / f"{name}.png")
    return written


def layers_side_by_side(layers: list[int], shares_LCE, names: list[str]):
    """One panel per MoE layer in a row, on the load heatmap's fixed scale, with one colour bar."""
    import matplotlib.pyplot as plt

    from moe_lab.callbacks.heatmap import draw_expert_load, heatmap_size, load_colour_bar
    from moe_lab.traces.specialisation import present_classes

    width, height = heatmap_size(shares_LCE.shape[-1], len(names))
    fig, axes = plt.subplots(1, len(layers), figsize=(width * len(layers), height + 0.4), layout="constrained")
    axes = list(np.atleast_1d(axes))
    for ax, layer, shares_CE in zip(axes, layers, shares_LCE, strict=True):
        shown, shares = present_classes(shares_CE, names)
        image = draw_expert_load(ax, shares, shown, f"layer {layer}", "token class" if ax is axes[0] else "")
    load_colour_bar(fig, image, axes)
    return fig
