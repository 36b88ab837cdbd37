"""The ablation report's figures: plots/val_curves.png (val/loss per arm, mean over seeds with a min-max
band) and plots/load_balance.png (the final load CV of each MoE layer per arm)."""

from __future__ import annotations

from pathlib import Path

from moe_lab.artifacts.metrics import VAL_LOSS
from moe_lab.artifacts.study_dir import PLOTS
from moe_lab.report.ablation_data import AblationData, SeedRun


def val_curves(data: AblationData) -> dict[str, list[dict[int, float]]]:
    """{arm: one val/loss {step: value} curve per seed that logged it}; arms without any are left out."""
    from moe_lab.report.tb_scalars import read_scalars

    curves = {}
    for arm in data.arms:
        runs = [read_scalars(r.run_dir, VAL_LOSS) for r in arm.runs if r.run_dir is not None]
        if runs := [r for r in runs if r]:
            curves[arm.name] = runs
    return curves


def _moe_layers(run: SeedRun) -> list[int]:
    layers = run.metrics.get("moe_layers")
    if isinstance(layers, list):
        return [int(i) for i in layers]
    n_layers = run.setting("model.n_layers")
    return list(range(n_layers)) if isinstance(n_layers, int) else []  # probed: absent tags read empty


def layer_load_cv(data: AblationData) -> dict[str, dict[int, list[float]]]:
    """{arm: {layer: the last logged moe/layer{i}/load_cv of each completed seed}}; {} for a dense arm."""
    from moe_lab.report.tb_scalars import last_per_layer

    return {
        arm.name: last_per_layer(((run.run_dir, _moe_layers(run)) for run in arm.completed), "load_cv")
        for arm in data.arms
    }


def write_plots(data: AblationData, differences: dict | None = None) -> tuple[dict[str, Path], dict[str, str]]:
    """`differences`: ablation_curves.claim_curves(data), computed once by the caller for its tables."""
    from moe_lab.report.figures import curves_with_band, differences_with_band, grouped_bars, save_figure

    plots_dir = data.study_dir / PLOTS
    written, skipped = {}, {}
    curves = val_curves(data)
    loads = layer_load_cv(data)
    series = {
        claim.text: [(p.tokens, p.comparison.delta, p.comparison.test.low, p.comparison.test.high) for p in points]
        for claim, points in (differences or {}).items()
        if all(p.comparison.test is not None for p in points)
    }
    figures = {
        "val_curves": (
            lambda: curves_with_band(
                curves, "validation loss", f"{data.name}: val/loss, mean over seeds, min-max band"
            ),
            "no run has logged val/loss yet" if not curves else "",
        ),
        "val_loss_difference": (
            lambda: differences_with_band(
                series, "Δ val loss (arm − other)", f"{data.name}: Δ per evaluation, paired by seed, 95% CI band"
            ),
            "no validation-loss claim with two paired seeds at every evaluation" if not series else "",
        ),
        "load_balance": (
            lambda: grouped_bars(
                {arm: {f"layer {i}": v for i, v in layers.items()} for arm, layers in loads.items()},
                "final load CV (lower is more balanced)",
                f"{data.name}: load CV per MoE layer, mean ± std over seeds",
                empty_note="no MoE layers\n(or no completed seed)",
            ),
            "no completed run has logged moe/layer*/load_cv" if not any(loads.values()) else "",
        ),
    }
    for key, (make, why_not) in figures.items():
        if why_not:
            skipped[key] = why_not
            continue
        written[key] = save_figure(make(), plots_dir / f"{key}.png")
    return written, skipped
