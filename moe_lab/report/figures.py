"""The reports' figures: loss curves with a seed band, grouped bars, a grid over one key (matplotlib,
headless). The expert-load heatmap drawn during training is moe_lab.callbacks.heatmap."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing slider: an exponential moving average, debiased so the first points are
    not pulled towards zero (Adam's bias correction, Kingma & Ba 2015, sec. 3). weight in [0, 1);
    0 returns the values unchanged."""
    smoothed, last = [], 0.0
    for n, value in enumerate(values, start=1):
        last = weight * last + (1.0 - weight) * value
        smoothed.append(last / (1.0 - weight**n))
    return smoothed


def curve_band(runs: list[dict[int, float]], smoothing: float = 0.0):
    """Mean and min-max over seeds of one configuration's curves ({step: value} per seed).

    Steps are the union over seeds; each is averaged over the seeds that logged it (a seed that stopped
    early, e.g. pruned, leaves the later steps to the others). `smoothing` is applied per seed, before
    the mean. Returns numpy arrays (steps, mean, low, high).
    """
    smoothed = []
    for run in runs:
        steps = sorted(run)
        smoothed.append(dict(zip(steps, ema([run[s] for s in steps], smoothing), strict=True)))
    steps = sorted(set().union(*smoothed)) if smoothed else []
    at_step = [[run[s] for run in smoothed if s in run] for s in steps]
    return (
        np.asarray(steps, dtype=float),
        np.asarray([np.mean(v) for v in at_step]),
        np.asarray([np.min(v) for v in at_step]),
        np.asarray([np.max(v) for v in at_step]),
    )


def _colour_of(colours: dict[str, str] | None, n: int):
    """label, index -> colour: the given one per label, else the tab10/tab20 cycle by position."""
    cycle = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return lambda label, i: (colours or {}).get(label) or cycle(i % cycle.N)


def curves_with_band(
    curves: dict[str, list[dict[int, float]]],
    ylabel: str,
    title: str = "",
    smoothing: float = 0.0,
    colours: dict[str, str] | None = None,
    zoom_last_half: bool = False,
):
    """One line per configuration (label -> its seeds' {step: value} curves): the mean over seeds, with
    a shaded min-max band where there are several seeds. `colours`: label -> colour (the sweep's fixed
    one per configuration); `zoom_last_half`: the y range fits the second half of the steps, where the
    configurations part (the first steps' loss is several times the final differences).
    Returns a matplotlib Figure (caller closes it)."""
    fig, ax = plt.subplots(figsize=(8.0, 4.8))
    colour_of = _colour_of(colours, len(curves))
    late: list[float] = []
    last_step = max((max(run) for runs in curves.values() for run in runs if run), default=0)
    for i, (label, runs) in enumerate(curves.items()):
        steps, mean, low, high = curve_band(runs, smoothing)
        if not len(steps):
            continue
        colour = colour_of(label, i)
        late += [*low[steps >= last_step / 2], *high[steps >= last_step / 2]]
        # Markers where points are few (a validation curve), so a one-point curve is still drawn.
        ax.plot(
            steps,
            mean,
            color=colour,
            lw=1.5,
            marker="o" if len(steps) <= 20 else None,
            ms=3,
            label=f"{label} ({len(runs)} seed{'s' * (len(runs) != 1)})",
        )
        if len(runs) > 1:
            ax.fill_between(steps, low, high, color=colour, alpha=0.2, lw=0)
    if zoom_last_half and late and max(late) > min(late):
        margin = 0.15 * (max(late) - min(late))
        ax.set_ylim(min(late) - margin, max(late) + margin)
        ax.set_xlim(last_step / 2 - 0.02 * last_step, last_step * 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title or ylabel)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def differences_with_band(series: dict[str, list[tuple[int, float, float, float]]], ylabel: str, title: str = ""):
    """One line per comparison (label -> [(tokens, Δ, low, high)]): Δ with its confidence band shaded and
    the zero line, so where a band leaves 0 is where the two arms separate. Returns a Figure."""
    fig, ax = plt.subplots(figsize=(8.0, 4.8))
    colours = plt.get_cmap("tab10")
    for i, (label, points) in enumerate(series.items()):
        tokens, delta, low, high = (np.asarray(v, dtype=float) for v in zip(*points, strict=True))
        colour = colours(i % colours.N)
        ax.plot(tokens, delta, color=colour, lw=1.5, marker="o", ms=3, label=label)
        ax.fill_between(tokens, low, high, color=colour, alpha=0.2, lw=0)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xlabel("training tokens")
    ax.set_ylabel(ylabel)
    ax.set_title(title or ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def grouped_bars(
    groups: dict[str, dict[str, list[float]]],
    ylabel: str,
    title: str = "",
    empty_note: str = "no data",
    colours: dict[str, str] | None = None,
):
    """One group of bars per key of `groups` (e.g. an ablation arm), one bar per series inside it (e.g. a
    MoE layer): the mean over seeds with a ±1 sample-std error bar where there are several seeds. A series
    keeps its colour and slot in every group, so a group missing a series shows a gap; a group without
    any series is left empty and labelled `empty_note`; `colours`: series -> colour. Returns a matplotlib
    Figure (caller closes it)."""
    series = list(dict.fromkeys(name for bars in groups.values() for name in bars))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) + 2.5), 4.5))
    colour_of = _colour_of(colours, len(series))
    for j, name in enumerate(series):
        xs, means, errors = [], [], []
        for i, bars in enumerate(groups.values()):
            values = bars.get(name) or []
            if values:
                xs.append(i - 0.4 + width * (j + 0.5))
                means.append(float(np.mean(values)))
                errors.append(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
        ax.bar(xs, means, width, yerr=errors, capsize=3, color=colour_of(name, j), label=name)
    for i, bars in enumerate(groups.values()):
        if not any(bars.values()):
            ax.text(i, 0.0, empty_note, ha="center", va="bottom", fontsize="small", color="0.4")
    ax.set_xticks(range(len(groups)), list(groups), rotation=20 if len(groups) > 4 else 0)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylabel(ylabel)
    ax.set_title(title or ylabel)
    ax.grid(axis="y", alpha=0.3)
    if series:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def objective_by_value(
    seeds: dict[str, dict[int, float]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    unfinished: dict[str, str] | None = None,
):
    """A grid over one key: for each value (x, evenly spaced in the given order) each seed's objective
    as a marker of that seed's colour, and the mean over seeds as a line with a ±1 sample-std bar.
    `unfinished`: value -> its state ("pruned", "failed", ...): its seeds are hollow markers, its tick
    says the state, and it gets no mean (a pruned run's objective is from before the end of training).
    Returns a matplotlib Figure (caller closes it)."""
    unfinished = unfinished or {}
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(seeds) + 2.5), 4.5))
    colours = plt.get_cmap("tab10")
    all_seeds = sorted({s for by_seed in seeds.values() for s in by_seed})
    for j, seed in enumerate(all_seeds):
        points = [
            (i, by_seed[seed], key in unfinished) for i, (key, by_seed) in enumerate(seeds.items()) if seed in by_seed
        ]
        # Seeds side by side around the value, so equal objectives do not hide each other.
        offset = 0.06 * (j - (len(all_seeds) - 1) / 2)
        ax.scatter(
            [x + offset for x, _, _ in points],
            [y for _, y, _ in points],
            facecolors=[("none" if hollow else colours(j % 10)) for _, _, hollow in points],
            edgecolors=colours(j % 10),
            s=28,
            zorder=3,
            label=f"seed {seed}",
        )
    means = [float(np.mean(list(v.values()))) if v and k not in unfinished else np.nan for k, v in seeds.items()]
    stds = [float(np.std(list(v.values()), ddof=1)) if len(v) > 1 else 0.0 for v in seeds.values()]
    ax.errorbar(
        range(len(seeds)),
        means,
        yerr=stds,
        color="0.2",
        lw=1.5,
        capsize=4,
        marker="_",
        ms=14,
        zorder=2,
        label="mean ± std over seeds",
    )
    for i, mean in enumerate(means):
        if np.isfinite(mean):
            ax.annotate(f"{mean:.4f}", (i, mean), textcoords="offset points", xytext=(8, -3), fontsize="small")
    ax.set_xticks(range(len(seeds)), [f"{k}\n({unfinished[k]})" if k in unfinished else k for k in seeds])
    ax.set_xlim(-0.5, len(seeds) - 0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Write a figure as PNG (creating its folder) and free it: reports make many figures per run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
