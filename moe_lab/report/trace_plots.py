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
    import matplotlib.pyplot as plt

    from moe_lab.report.figures import save_figure
    from moe_lab.traces.specialisation import class_expert_shares, specialisation_figure, token_classes
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
        shares_LCE = class_expert_shares(trace, classes)
        name = "specialisation_" + re.sub(r"[^A-Za-z0-9_.=-]+", "_", row.label)
        images = []
        for i, layer in enumerate(trace.layers):
            title = f"{row.label} ({run_dir.name}), layer {layer}, step {trace.meta.step}"
            images.append(specialisation_figure(shares_LCE[i], classes.names, title))
        written[name] = save_figure(_side_by_side(images), plots_dir / f"{name}.png")
        for fig in images:
            plt.close(fig)
    return written


def _side_by_side(figures):
    """One figure holding the given ones' rendered images in a row (each layer's panel as drawn)."""
    import matplotlib.pyplot as plt
    import numpy as np

    images = []
    for fig in figures:
        fig.canvas.draw()
        images.append(np.asarray(fig.canvas.buffer_rgba()))
    height = max(image.shape[0] for image in images)
    width = sum(image.shape[1] for image in images)
    out, ax = plt.subplots(figsize=(width / 100, height / 100), dpi=100)
    ax.imshow(np.concatenate([_pad(image, height) for image in images], axis=1))
    ax.set_axis_off()
    out.subplots_adjust(0, 0, 1, 1)
    return out


def _pad(image, height: int):
    import numpy as np

    missing = height - image.shape[0]
    return np.pad(image, ((0, missing), (0, 0), (0, 0)), constant_values=255) if missing else image
