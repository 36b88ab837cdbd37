"""The sweep report's figures and the TensorBoard mean-over-seeds runs:

plots/objective_vs_<key>.png    a grid over one key: the objective per value, each seed and their
                                mean (Optuna's plots say nothing about one key)
plots/*.png, (*.html)           otherwise Optuna's optimization history, importances, parallel
                                coordinate and slice plots (HTML with `report --html`)
trials/<config>/mean/           TensorBoard run: the mean over seeds of the curves (MEAN_TAGS) and of every
                                final/<metric> the HPARAMS table shows (each combined as its seeds combine)
plots/val_loss_curves.png       val/loss per configuration: mean over seeds, min-max band, the y range
                                zoomed on the last half of training
plots/train_loss_curves.png
plots/load_balance.png          the final load CV of each MoE layer per configuration (mean ± std)

Every figure colours a configuration as TensorBoard's answer link does (moe_lab.report.config_colours).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from moe_lab.artifacts.metrics import (
    COLLAPSE_EVENTS,
    LOAD_CV_MAX,
    LOAD_CV_MEAN,
    SEED_MEAN,
    SEED_MEDIAN,
    SEED_SUM,
    TRAIN_LM_LOSS,
    VAL_BPB,
    VAL_LOSS,
    final_tag,
    metric_named,
)
from moe_lab.artifacts.run_dir import HPARAM_METRICS
from moe_lab.errors import first_line
from moe_lab.report.common import is_finite, run_metrics
from moe_lab.report.sweep_study import StudyData

log = logging.getLogger(__name__)

TRAIN_SMOOTHING = 0.6  # EMA weight for train/lm_loss curves (TensorBoard's slider); val/loss is raw


def _optuna_plots() -> dict[str, tuple]:
    from optuna.visualization import matplotlib as mpl_vis

    vis = optuna.visualization
    return {
        name: (getattr(vis, f"plot_{name}"), getattr(mpl_vis, f"plot_{name}"))
        for name in ("optimization_history", "param_importances", "parallel_coordinate", "slice")
    }


def _cannot_plot(name: str, study: optuna.Study) -> str | None:
    """Why Optuna cannot draw `name` for this study (checked up front: Optuna would warn and draw an
    empty figure, or raise), or None."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if is_finite(t.value)]
    if not complete:
        return "no complete trial yet"
    if name in ("parallel_coordinate", "slice", "param_importances") and not any(t.params for t in complete):
        return "the complete trials have no parameters"
    if name == "param_importances":
        varying = [
            k
            for k in {k for t in complete for k in t.params}
            if len({json.dumps(t.params.get(k), default=str) for t in complete}) > 1
        ]
        if len(complete) < 2 or not varying:
            return "needs >= 2 complete trials whose parameters differ"
    return None


def _readable_colormaps(fig) -> None:
    """Optuna's matplotlib parallel-coordinate and slice plots colour by objective or trial with
    "Blues", whose light end is white on the white background: the worst configuration vanished.
    Recolour with viridis cut before its pale yellow end, keeping the direction."""
    import matplotlib.colors as mcolors
    import numpy as np
    from matplotlib import colormaps

    visible = mcolors.ListedColormap(colormaps["viridis"](np.linspace(0.0, 0.85, 256)), name="viridis_visible")
    for ax in fig.axes:
        for artist in ax.collections:
            cmap = artist.get_cmap() if hasattr(artist, "get_cmap") else None
            if cmap is not None and cmap.name.startswith("Blues"):
                # Blues runs light -> dark, viridis dark -> light: reverse to keep "darker = better".
                artist.set_cmap(visible if cmap.name.endswith("_r") else visible.reversed())


def write_optuna_plots(
    study: optuna.Study, plots_dir: Path, target_name: str, html: bool = False
) -> tuple[dict[str, Path], dict]:
    """Each plot as PNG (Optuna's matplotlib backend) and, with `html`, as HTML (plotly;
    plotly.min.js, 4.8 MB, written once beside them, so they open offline). Returns ({key: path},
    {plot: why it was skipped})."""
    import matplotlib

    from moe_lab.report.figures import save_figure

    written, skipped = {}, {}
    plots_dir.mkdir(parents=True, exist_ok=True)
    for name, (plotly_fn, mpl_fn) in _optuna_plots().items():
        reason = _cannot_plot(name, study)
        if reason is None:
            try:
                if html:
                    page = plots_dir / f"{name}.html"
                    plotly_fn(study, target_name=target_name).write_html(str(page), include_plotlyjs="directory")
                    written[f"{name}_html"] = page
                # Optuna's matplotlib backend is experimental and sets the global ggplot style: both
                # are contained here, as is matplotlib's notice that a single trial spans no range.
                with warnings.catch_warnings(), matplotlib.rc_context():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    warnings.filterwarnings("ignore", "Attempting to set identical", UserWarning)
                    axes = mpl_fn(study, target_name=target_name)
                    fig = (axes if hasattr(axes, "figure") else axes.flat[0]).figure
                    _readable_colormaps(fig)
                    png = save_figure(fig, plots_dir / f"{name}.png")
                written[f"{name}_png"] = png
            except Exception as err:  # a plot the study's data cannot make must not cost the report
                reason = first_line(err)
        if reason is not None:
            skipped[name] = reason
            log.warning("note: skipped the %s plot: %s", name.replace("_", " "), reason)
    if (plots_dir / "plotly.min.js").is_file() and written:
        written["plotly_js"] = plots_dir / "plotly.min.js"
    return written, skipped


def one_key_grid(data: StudyData) -> str | None:
    """The searched key when the study is a grid over one key (its plots are drawn by hand), else None."""
    return data.param_keys[0] if data.info.sampler == "grid" and len(data.param_keys) == 1 else None


def write_objective_by_value(
    data: StudyData, key: str, plots_dir: Path, colours: dict[str, str] | None = None
) -> dict[str, Path]:
    """The objective against the one searched value: each seed as a point, the mean over seeds as a
    line with a ±1 std bar. Values are the x axis in their own order (numbers sorted), evenly spaced."""
    from moe_lab.report.figures import objective_by_value, save_figure

    rows = [r for r in data.rows if key in r.params and any(is_finite(v) for v in r.objective_values)]
    if not rows:
        return {}
    values = list(dict.fromkeys(r.params[key] for r in rows))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        values.sort()
    seeds = {}
    for value in values:
        row = next(r for r in rows if r.params[key] == value)
        seeds[str(value)] = {seed: v for seed, v in zip(row.seeds, row.objective_values, strict=True) if is_finite(v)}
    title = f"{data.info.study_name}: {data.info.objective_metric} by {key}"
    unfinished = {str(r.params[key]): r.state.lower() for r in rows if r.state != "COMPLETE"}
    fig = objective_by_value(
        seeds,
        xlabel=key,
        ylabel=f"{data.info.objective_metric} ({data.info.direction})",
        title=title,
        unfinished=unfinished,
    )
    tick_colour = {str(r.params[key]): (colours or {}).get(r.label) for r in rows}
    for tick in fig.axes[0].get_xticklabels():  # each value's label in its configuration's colour
        if colour := tick_colour.get(tick.get_text().split("\n")[0]):
            tick.set_color(colour)
    name = f"objective_vs_{key.rsplit('.', 1)[-1]}"
    return {name: save_figure(fig, plots_dir / f"{name}.png")}


MEAN_RUN = "mean"  # trials/<config>/mean: the TensorBoard run of the mean over seeds
MEAN_TAGS = (VAL_LOSS, VAL_BPB, TRAIN_LM_LOSS, LOAD_CV_MEAN, LOAD_CV_MAX, COLLAPSE_EVENTS)
# A final metric whose seeds add up (the collapse count) is summed in the mean run too, as in the tables.
_COMBINE = {SEED_MEAN: statistics.fmean, SEED_SUM: math.fsum, SEED_MEDIAN: statistics.median}


def mean_run_tags() -> dict[str, object]:
    """{tag: how its seeds combine} for a configuration's mean run: the curves, then every HPARAMS metric."""
    finals = {final_tag(m): _COMBINE[metric_named(m).seeds] for m in HPARAM_METRICS if not metric_named(m).machine}
    return {**dict.fromkeys(MEAN_TAGS, statistics.fmean), **finals}


def write_mean_runs(data: StudyData) -> list[Path]:
    """Beside a configuration's seed runs, a TensorBoard run `mean` holding, at the steps every seed
    logged, the mean over its seeds of MEAN_TAGS and the combined final metrics (mean_run_tags), so
    TensorBoard shows one line per configuration with every headline figure. Rewritten from the seed
    runs each time (never appended to)."""
    from torch.utils.tensorboard import SummaryWriter

    from moe_lab.report.tb_scalars import event_files, read_scalars

    written = []
    for row in data.rows:
        if len(row.run_dirs) < 2:
            continue
        mean_dir = (data.study_dir / row.run_dirs[0]).parent / MEAN_RUN
        tags = mean_run_tags()
        curves = {tag: [read_scalars(data.study_dir / d, tag) for d in row.run_dirs] for tag in tags}
        for old in event_files(mean_dir):
            old.unlink()
        if not any(all(runs) for runs in curves.values()):
            continue
        with SummaryWriter(str(mean_dir)) as writer:
            for tag, runs in curves.items():
                if not all(runs):
                    continue
                for step in sorted(set.intersection(*(set(r) for r in runs))):
                    writer.add_scalar(tag, tags[tag]([r[step] for r in runs]), step)
        written.append(mean_dir)
    return written


def study_curves(data: StudyData, tag: str, order: list[str] | None = None) -> dict[str, list[dict[int, float]]]:
    """{configuration label: one {step: value} curve per seed} for the configurations that logged `tag`,
    in `order` (labels; the colour order) or best first; a seed without the tag (failed before logging) is
    left out."""
    from moe_lab.report.tb_scalars import read_scalars

    rank = {label: i for i, label in enumerate(order or [])}
    curves = {}
    for row in sorted(data.rows, key=lambda r: rank.get(r.label, len(rank))):
        runs = [read_scalars(data.study_dir / d, tag) for d in row.run_dirs]
        runs = [r for r in runs if r]
        if runs:
            curves[row.label] = runs
    return curves


def write_curve_plots(data: StudyData, plots_dir: Path, colours: dict[str, str]) -> tuple[dict[str, Path], dict]:
    from moe_lab.report.figures import curves_with_band, save_figure

    written, skipped = {}, {}
    for key, tag, ylabel, smoothing, zoom in (
        ("val_loss_curves", VAL_LOSS, "validation loss", 0.0, True),
        ("train_loss_curves", TRAIN_LM_LOSS, "train LM loss", TRAIN_SMOOTHING, False),
    ):
        curves = study_curves(data, tag, list(colours))
        if not curves:
            skipped[key] = f"no run directory has logged {tag}"
            log.warning("note: skipped the %s plot: %s", key.replace("_", " "), skipped[key])
            continue
        title = f"{data.info.study_name}: {tag}, mean over seeds, min-max band"
        title += f", EMA {smoothing}" if smoothing else ", last half of training" if zoom else ""
        fig = curves_with_band(curves, ylabel, title, smoothing, colours=colours, zoom_last_half=zoom)
        written[key] = save_figure(fig, plots_dir / f"{key}.png")
    return written, skipped


def layer_load_cv(data: StudyData) -> dict[str, dict[int, list[float]]]:
    """{configuration label: {MoE layer: the last logged moe/layer{i}/load_cv of each seed run}}."""
    from moe_lab.report.tb_scalars import last_per_layer

    return {
        row.label: last_per_layer(
            ((data.study_dir / d, run_metrics(data.study_dir / d).get("moe_layers") or []) for d in row.run_dirs),
            "load_cv",
        )
        for row in data.rows
    }


def write_load_balance(data: StudyData, plots_dir: Path, colours: dict[str, str]) -> tuple[dict[str, Path], dict]:
    """plots/load_balance.png: per MoE layer, one bar per configuration (its colour): the final load CV,
    mean ± std over seeds. The tables' "load CV" is the mean over layers: this shows the layer behind it."""
    from moe_lab.report.figures import grouped_bars, save_figure

    loads = layer_load_cv(data)
    layers = sorted({layer for per_layer in loads.values() for layer in per_layer})
    if not layers:
        why = "no run has logged moe/layer*/load_cv (a dense study, or no run finished yet)"
        return {}, {"load_balance": why}
    groups = {
        f"layer {layer}": {label: loads[label][layer] for label in colours if layer in loads.get(label, {})}
        for layer in layers
    }
    title = f"{data.info.study_name}: final load CV per MoE layer, mean ± std over seeds"
    fig = grouped_bars(groups, "final load CV (lower is more balanced)", title, colours=colours)
    return {"load_balance": save_figure(fig, plots_dir / "load_balance.png")}, {}
