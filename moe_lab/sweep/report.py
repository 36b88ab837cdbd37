"""The results report of a sweep study: a table, summary.md, trials.csv, Optuna plots, loss curves.

Everything is read back from the study directory the sweep runner wrote (study_info.json, the Optuna
storage, one run directory per trial and seed), so a report can be regenerated at any time, also while
the sweep is still running:

    <study_dir>/summary.md                 settings, results table, best configuration, state counts
    <study_dir>/trials.csv                 one row per configuration, every number the table shows
    <study_dir>/plots/objective_vs_<key>.png  a grid over one key: the objective per value, each seed
                                           and their mean (Optuna's plots say nothing about one key)
    <study_dir>/plots/*.png, (*.html)      otherwise Optuna's optimization history, importances, parallel
                                           coordinate and slice plots (HTML with `report --html`)
    <study_dir>/trials/<config>/mean/      TensorBoard run: val/loss, val/bpb, train/lm_loss, mean over seeds
    <study_dir>/plots/val_loss_curves.png  val/loss per configuration: mean over seeds, min-max band
    <study_dir>/plots/train_loss_curves.png

A configuration is a `config_id`. A trial retried after its worker died shares the config_id of the
trial it retries; the report shows the latest trial of each config_id and counts the others as retries.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from moe_lab.errors import MoELabError
from moe_lab.model.accounting import si
from moe_lab.artifacts.atomic import write_text_atomic
from moe_lab.stats import NOISE_Z, compare

log = logging.getLogger(__name__)

STUDY_INFO = "study_info.json"
PLOTS = "plots"
# Non-complete configurations go below the complete ones, in this order.
STATE_ORDER = ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL")
TRAIN_SMOOTHING = 0.6  # EMA weight for train/lm_loss curves (TensorBoard's slider); val/loss is raw
NOTE_WIDTH = 48  # prune reason / error characters shown in the tables (trials.csv has them whole)

MATCHING_MEANS = {
    "none": "no parameter count is held constant: each configuration keeps the base experiment's expert width",
    "active": "active parameters per token are held constant: the expert width (expert_hidden) is resized "
              "per configuration to match the base experiment",
    "total": "total parameters are held constant: the expert width (expert_hidden) is resized per "
             "configuration to match the base experiment",
}


class StudyError(MoELabError):
    """A study directory (or the storage it names) cannot be read."""


@dataclass
class StudyInfo:
    study_name: str
    storage_url: str = ""
    objective_metric: str = "objective"
    direction: str = ""  # "" = the Optuna study's own direction
    sampler: str = "?"
    seeds: list[int] = field(default_factory=list)
    compute_matching: str = "none"
    base: str = ""


@dataclass
class ConfigRow:
    """One configuration: the latest trial of its config_id, flattened from the trial's user attrs."""

    trial: int
    config_id: int | None
    state: str
    label: str
    params: dict[str, Any]
    objective_mean: float | None
    objective_std: float | None
    objective_values: list[float | None]
    seeds: list[int]
    run_dirs: list[str]
    duration_s: float | None
    active_params: int | None
    total_params: int | None
    expert_hidden: int | None
    tokens_per_s: float | None  # median over the configuration's runs (seeds), from their metrics.json
    final_load_cv: float | None
    collapse_events: int | None
    prune_reason: str | None
    error: str | None
    retries: int = 0
    run_time_s: float | None = None  # median wall time of one run (seed)

    @property
    def n_seeds(self) -> int:
        """Seeds that produced a finite objective value (those the mean is over)."""
        if self.objective_values:
            return sum(_finite(v) for v in self.objective_values)
        return int(_finite(self.objective_mean))


@dataclass
class StudyData:
    study_dir: Path
    info: StudyInfo
    study: optuna.Study
    rows: list[ConfigRow]  # best first
    param_keys: list[str]
    trial_states: Counter  # state name -> number of Optuna trials (retries included)


# ------------------------------------------------------------------------------------------ reading

def load_study_info(study_dir: Path) -> StudyInfo:
    path = Path(study_dir) / STUDY_INFO
    if not Path(study_dir).is_dir():
        raise StudyError(f"{study_dir}: no such directory")
    if not path.is_file():
        raise StudyError(f"{study_dir}: no {STUDY_INFO}; expected a sweep study directory")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StudyError(f"{path}: not readable JSON: {err}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("study_name"), str):
        raise StudyError(f"{path}: expected an object with a 'study_name' string")
    known = {k: v for k, v in raw.items() if k in StudyInfo.__dataclass_fields__ and v is not None}
    return StudyInfo(**known)


def open_study(study_dir: Path, info: StudyInfo) -> optuna.Study:
    """Load the study from the storage study_info.json names. A SQLite or journal file that is not
    where it was written (the study directory was copied or moved) is looked for in the study directory."""
    url = info.storage_url or f"sqlite:///{(study_dir / 'study.db').resolve()}"
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = _local_file(Path(url[len("journal:"):]), study_dir, url)
        storage: Any = JournalStorage(JournalFileBackend(str(path)))
    elif url.startswith("sqlite:///"):
        storage = f"sqlite:///{_local_file(Path(url[len('sqlite:///'):]), study_dir, url).resolve()}"
    else:
        storage = url
    try:
        return optuna.load_study(study_name=info.study_name, storage=storage)
    except KeyError:
        raise StudyError(f"{url}: no study named {info.study_name!r}") from None
    except Exception as err:  # storage backends raise their own types (SQLAlchemy, redis, ...)
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise StudyError(f"{url}: cannot open the study storage: {first_line}") from None


def _local_file(path: Path, study_dir: Path, url: str) -> Path:
    if path.is_file():
        return path
    moved = study_dir / path.name
    if moved.is_file():
        return moved
    looked = f"{path} and {moved}" if path.resolve() != moved.resolve() else str(path)
    raise StudyError(f"{url}: no such storage file (looked for {looked})")


def load_study_data(study_dir: str | Path) -> StudyData:
    study_dir = Path(study_dir)
    info = load_study_info(study_dir)
    study = open_study(study_dir, info)
    trials = study.get_trials(deepcopy=False)
    if not info.direction:
        info.direction = study.direction.name.lower()
    param_keys = list(dict.fromkeys(key for t in trials for key in t.params))
    rows = config_rows(trials, info.direction)
    for row in rows:
        _per_run_medians(study_dir, row)
    return StudyData(study_dir=study_dir, info=info, study=study, rows=rows,
                     param_keys=param_keys, trial_states=Counter(t.state.name for t in trials))


def _per_run_medians(study_dir: Path, row: ConfigRow) -> None:
    """Throughput and time per run (seed), medians over the configuration's runs, from their metrics.json.
    A trial's own duration counts its seeds one after another and the time it waited for a core; one
    run's figures do not. Without metrics files the trial's recorded values stay."""
    runs = []
    for run_dir in row.run_dirs:
        try:
            runs.append(json.loads((study_dir / run_dir / "metrics.json").read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    rates = [m["tokens_per_s"] for m in runs if _finite(m.get("tokens_per_s"))]
    times = [m["wall_time_s"] for m in runs if _finite(m.get("wall_time_s"))]
    if rates:
        row.tokens_per_s = statistics.median(rates)
    if times:
        row.run_time_s = statistics.median(times)


def config_rows(trials: list[FrozenTrial], direction: str) -> list[ConfigRow]:
    """One row per config_id (its latest trial; earlier ones counted as retries), best first."""
    groups: dict[tuple, list[FrozenTrial]] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        config_id = trial.user_attrs.get("config_id")
        key = ("config", config_id) if config_id is not None else ("trial", trial.number)
        groups.setdefault(key, []).append(trial)
    rows = [_row(group[-1], retries=len(group) - 1) for group in groups.values()]
    return sort_rows(rows, direction)


def _row(trial: FrozenTrial, retries: int) -> ConfigRow:
    attrs = trial.user_attrs
    mean = attrs.get("objective_mean")
    if mean is None and trial.state == TrialState.COMPLETE:
        mean = trial.value
    duration = attrs.get("duration_s")
    if duration is None and trial.duration is not None:
        duration = trial.duration.total_seconds()
    return ConfigRow(
        trial=trial.number, config_id=attrs.get("config_id"), state=trial.state.name,
        label=attrs.get("label") or _label(trial.params), params=dict(trial.params),
        objective_mean=mean, objective_std=attrs.get("objective_std"),
        objective_values=list(attrs.get("objective_values") or []), seeds=list(attrs.get("seeds") or []),
        run_dirs=list(attrs.get("run_dirs") or []), duration_s=duration,
        active_params=attrs.get("active_params"), total_params=attrs.get("total_params"),
        expert_hidden=attrs.get("expert_hidden"), tokens_per_s=attrs.get("tokens_per_s"),
        final_load_cv=attrs.get("final_load_cv"), collapse_events=attrs.get("collapse_events"),
        prune_reason=attrs.get("prune_reason"), error=attrs.get("error"), retries=retries)


def _label(params: dict[str, Any]) -> str:
    # Imported here: moe_lab.sweep.config pulls in the experiment schema and the data stack (seconds),
    # which a report needs only for trials the runner never labelled.
    from moe_lab.sweep.config import trial_label

    return trial_label(params)


def sort_rows(rows: list[ConfigRow], direction: str) -> list[ConfigRow]:
    """Complete configurations by objective (best first; a NaN or missing objective last among them),
    then the others by state (STATE_ORDER) and trial number."""
    sign = -1.0 if direction == "maximize" else 1.0

    def key(row: ConfigRow) -> tuple:
        rank = STATE_ORDER.index(row.state) if row.state in STATE_ORDER else len(STATE_ORDER)
        if row.state == "COMPLETE" and _finite(row.objective_mean):
            return rank, 0, sign * row.objective_mean, row.trial
        return rank, 1, 0.0, row.trial

    return sorted(rows, key=key)


def best_row(rows: list[ConfigRow]) -> ConfigRow | None:
    """The first complete row with a finite objective (rows come sorted, best first)."""
    return next((r for r in rows if r.state == "COMPLETE" and _finite(r.objective_mean)), None)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


# ------------------------------------------------------------------------------------------ tables

COLUMNS = ("trial", "config", "objective (mean ± std, n seeds)", "state", "total", "active", "load CV",
           "collapses", "retries", "time/run", "tok/s/run", "prune reason / error")
RIGHT_ALIGNED = {"trial", "objective (mean ± std, n seeds)", "total", "active", "load CV", "collapses",
                 "retries", "time/run", "tok/s/run"}
# Printed under every table that shows the two throughput columns.
LOAD_CAVEAT = ("time/run and tok/s/run are medians over a configuration's runs; they depend on the machine's "
               "load and on how many workers shared its cores, so they are not results and do not rank.")


def format_objective(row: ConfigRow) -> str:
    """'2.3457 ± 0.0120 (n=2)'; 'n=1/2' when a seed gave no value; '-' without a value."""
    if not _finite(row.objective_mean):
        return "-" if row.objective_mean is None else str(row.objective_mean)
    text = _number(row.objective_mean)
    if row.objective_std is not None:
        text += f" ± {_number(row.objective_std)}"
    n = f"{row.n_seeds}/{len(row.seeds)}" if row.seeds and row.n_seeds != len(row.seeds) else f"{row.n_seeds}"
    return f"{text} (n={n})"


def table_cells(rows: list[ConfigRow]) -> list[list[str]]:
    """The cells of the results table, shared by the terminal and the markdown versions."""
    return [[str(r.trial), r.label, format_objective(r), r.state, si(r.total_params), si(r.active_params),
             _optional(r.final_load_cv, "{:.3f}"), _optional(r.collapse_events, "{}"), str(r.retries),
             _duration(r.run_time_s), si(r.tokens_per_s), _note(r)] for r in rows]


def format_table(rows: list[ConfigRow]) -> str:
    """Plain aligned text, one line per configuration, best first."""
    cells = table_cells(rows)
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(COLUMNS)]

    def line(values) -> str:
        return "  ".join(v.rjust(w) if c in RIGHT_ALIGNED else v.ljust(w)
                         for c, v, w in zip(COLUMNS, values, widths)).rstrip()

    return "\n".join([line(COLUMNS), "  ".join("-" * w for w in widths)] + [line(c) for c in cells]
                     + ([LOAD_CAVEAT] if cells else []))


def markdown_table(rows: list[ConfigRow]) -> str:
    rule = ["---:" if c in RIGHT_ALIGNED else "---" for c in COLUMNS]
    lines = [COLUMNS, rule] + [[v.replace("|", "\\|") for v in c] for c in table_cells(rows)]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def _number(x: float) -> str:
    return f"{x:.4f}" if abs(x) < 1e3 else f"{x:.1f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes}m{s:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _optional(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _note(row: ConfigRow) -> str:
    text = " ".join(str(row.prune_reason or row.error or "").split())  # one line
    return text if len(text) <= NOTE_WIDTH else text[:NOTE_WIDTH - 1] + "…"


# ------------------------------------------------------------------------------------------ files

CSV_COLUMNS = ("objective_mean", "objective_std", "n_seeds", "objective_values", "duration_s", "active_params",
               "total_params", "tokens_per_s", "final_load_cv", "collapse_events", "prune_reason", "error",
               "retries", "run_time_s")


def write_trials_csv(path: Path, rows: list[ConfigRow], param_keys: list[str]) -> None:
    """One line per configuration, best first; empty cells for missing values, objective_values as a
    JSON list (null for a seed without a value)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", "config_id", "state", *param_keys, *CSV_COLUMNS])
        for r in rows:
            values = [r.objective_mean, r.objective_std, r.n_seeds, json.dumps(r.objective_values), r.duration_s,
                      r.active_params, r.total_params, r.tokens_per_s, r.final_load_cv, r.collapse_events,
                      r.prune_reason, r.error, r.retries, r.run_time_s]
            writer.writerow([_csv(v) for v in (r.trial, r.config_id, r.state,
                                               *(r.params.get(k) for k in param_keys), *values)])
    tmp.replace(path)  # atomic, like moe_lab.artifacts.atomic


def _csv(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    return value


def summary_markdown(data: StudyData, plots: dict[str, Path], skipped: dict[str, str]) -> str:
    info, rows = data.info, data.rows
    order = [s for s in STATE_ORDER if s in data.trial_states] + sorted(set(data.trial_states) - set(STATE_ORDER))
    states = ", ".join(f"{s} {data.trial_states[s]}" for s in order)
    retries = sum(r.retries for r in rows)
    lines = [
        f"# Sweep report: {info.study_name}",
        "",
        f"- objective: `{info.objective_metric}` ({info.direction}), mean ± std over seeds {info.seeds}",
        f"- sampler: {info.sampler}; base experiment: `{_relative(info.base, data.study_dir) or '?'}`",
        f"- compute matching: **{info.compute_matching}**: "
        f"{MATCHING_MEANS.get(info.compute_matching, 'unknown mode')}",
        *_held_constant(data),
        f"- trials: {sum(data.trial_states.values())} ({states or 'none'}) in {len(rows)} configurations"
        + (f", {retries} retried" if retries else ""),
        "",
        "## Best configuration",
        "",
        _best_text(best_row(rows), info),
        "",
        "## Results",
        "",
        markdown_table(rows) if rows else "No trials yet.",
        "",
        *([LOAD_CAVEAT, ""] if rows else []),
        *seed_noise_lines(rows, info),
        "## Plots",
        "",
    ]
    by_plot: dict[str, list[Path]] = {}
    for path in plots.values():
        if path.suffix in (".html", ".png"):  # not plotly.min.js
            by_plot.setdefault(path.stem, []).append(path)
    for name, files in by_plot.items():
        links = ", ".join(f"[{p.suffix[1:]}]({p.relative_to(data.study_dir).as_posix()})" for p in files)
        lines.append(f"- {name.replace('_', ' ')}: {links}")
    lines += [f"- {name.replace('_', ' ')}: skipped ({why})" for name, why in skipped.items()]
    if "train_loss_curves" in plots and TRAIN_SMOOTHING:
        lines += ["", f"Train-loss curves are smoothed per seed with an EMA of weight {TRAIN_SMOOTHING} "
                      "(TensorBoard's smoothing) before the mean; validation curves are raw."]
    return "\n".join(lines) + "\n"


def _relative(path: str, study_dir: Path) -> str:
    """A path recorded by the runner (absolute, of the machine it ran on) as seen from summary.md."""
    return os.path.relpath(path, study_dir.resolve()) if path and Path(path).is_absolute() else path


def seed_noise_lines(rows: list[ConfigRow], info: StudyInfo) -> list[str]:
    """The best configuration against each other complete one: is the difference beyond seed noise?
    (moe_lab.stats, the statistics of the ablation report's claims.)"""
    best = best_row(rows)
    others = [r for r in rows if r is not best and r.state == "COMPLETE" and _finite(r.objective_mean)]
    if best is None or not others:
        return []
    lines = ["## Best against the others: beyond seed noise?", "",
             f"Δ = mean {info.objective_metric} of **{best.label}** − that of the other configuration; "
             f"seed σ = the pooled seed std of the two; z = Δ / Welch's standard error. |z| ≥ {NOISE_Z:g}: "
             f"beyond seed noise; |z| < {NOISE_Z:g}: within it (changing the seed alone moves the mean that much).",
             "", "| against | Δ | seed σ | z | difference |", "| --- | ---: | ---: | ---: | --- |"]
    best_values = [v for v in best.objective_values if _finite(v)] or [best.objective_mean]
    for row in others:
        values = [v for v in row.objective_values if _finite(v)] or [row.objective_mean]
        c = compare(best_values, values, (best.label, row.label))
        verdict = {"clear": "**beyond seed noise**", "within": "within seed noise"}.get(c.noise, c.why_no_z)
        label = row.label.replace("|", "\\|")
        lines.append(f"| {label} | {c.delta:+.4f} | {_optional(c.sigma, '{:.4f}')} | "
                     f"{_optional(c.z, '{:+.2f}')} | {verdict} |")
    return lines + [""]


def _held_constant(data: StudyData) -> list[str]:
    """What the data says is constant: searched keys with one value, and the parameter counts."""
    lines = []
    values = {k: {json.dumps(r.params.get(k), default=str) for r in data.rows if k in r.params}
              for k in data.param_keys}
    searched = [f"`{k}` ({len(v)} values)" for k, v in values.items() if len(v) > 1]
    constant = [f"`{k}={json.loads(next(iter(v)))}`" for k, v in values.items() if len(v) == 1]
    if searched:
        lines.append(f"- searched: {', '.join(searched)}")
    if constant:
        lines.append(f"- constant over the trials so far: {', '.join(constant)}")
    complete = [r for r in data.rows if r.state == "COMPLETE"]
    observed = []
    for name in ("active_params", "total_params", "expert_hidden"):
        seen = [getattr(r, name) for r in complete if getattr(r, name) is not None]
        if seen:
            low, high = si(min(seen)), si(max(seen))
            observed.append(f"{name} {low}" if low == high else f"{name} {low}–{high}")
    if observed:
        lines.append(f"- observed over complete configurations: {', '.join(observed)}")
    return lines


def _best_text(row: ConfigRow | None, info: StudyInfo) -> str:
    if row is None:
        return "No complete configuration yet."
    params = ", ".join(f"`{k}={v}`" for k, v in row.params.items()) or "base"
    runs = ", ".join(f"`{d}`" for d in row.run_dirs) or "-"
    return (f"**{row.label}** (trial {row.trial}, config {row.config_id}; {params}): "
            f"{info.objective_metric} {format_objective(row)}; active params {si(row.active_params)}, "
            f"total params {si(row.total_params)}, "
            f"final load CV {_optional(row.final_load_cv, '{:.3f}')}. Runs: {runs}.")


# ------------------------------------------------------------------------------------------ plots

def _optuna_plots() -> dict[str, tuple]:
    from optuna.visualization import matplotlib as mpl_vis

    vis = optuna.visualization
    return {name: (getattr(vis, f"plot_{name}"), getattr(mpl_vis, f"plot_{name}"))
            for name in ("optimization_history", "param_importances", "parallel_coordinate", "slice")}


def _cannot_plot(name: str, study: optuna.Study) -> str | None:
    """Why Optuna cannot draw `name` for this study (checked up front: Optuna would warn and draw an
    empty figure, or raise), or None."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if _finite(t.value)]
    if not complete:
        return "no complete trial yet"
    if name in ("parallel_coordinate", "slice", "param_importances") and not any(t.params for t in complete):
        return "the complete trials have no parameters"
    if name == "param_importances":
        varying = [k for k in {k for t in complete for k in t.params}
                   if len({json.dumps(t.params.get(k), default=str) for t in complete}) > 1]
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


def write_optuna_plots(study: optuna.Study, plots_dir: Path, target_name: str,
                       html: bool = False) -> tuple[dict[str, Path], dict]:
    """Each plot as PNG (Optuna's matplotlib backend) and, with `html`, as HTML (plotly;
    plotly.min.js, 4.8 MB, written once beside them, so they open offline). Returns ({key: path},
    {plot: why it was skipped})."""
    import matplotlib

    from moe_lab.viz import save_figure

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
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if reason is not None:
            skipped[name] = reason
            log.warning("note: skipped the %s plot: %s", name.replace("_", " "), reason)
    if (plots_dir / "plotly.min.js").is_file() and written:
        written["plotly_js"] = plots_dir / "plotly.min.js"
    return written, skipped


def one_key_grid(data: StudyData) -> str | None:
    """The searched key when the study is a grid over one key (its plots are drawn by hand), else None."""
    return data.param_keys[0] if data.info.sampler == "grid" and len(data.param_keys) == 1 else None


def write_objective_by_value(data: StudyData, key: str, plots_dir: Path) -> dict[str, Path]:
    """The objective against the one searched value: each seed as a point, the mean over seeds as a
    line with a ±1 std bar. Values are the x axis in their own order (numbers sorted), evenly spaced."""
    from moe_lab.viz import objective_by_value, save_figure

    rows = [r for r in data.rows if key in r.params and any(_finite(v) for v in r.objective_values)]
    if not rows:
        return {}
    values = list(dict.fromkeys(r.params[key] for r in rows))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        values.sort()
    seeds = {}
    for value in values:
        row = next(r for r in rows if r.params[key] == value)
        seeds[str(value)] = {seed: v for seed, v in zip(row.seeds, row.objective_values) if _finite(v)}
    title = f"{data.info.study_name}: {data.info.objective_metric} by {key}"
    fig = objective_by_value(seeds, xlabel=key, ylabel=f"{data.info.objective_metric} ({data.info.direction})",
                             title=title)
    name = f"objective_vs_{key.rsplit('.', 1)[-1]}"
    return {name: save_figure(fig, plots_dir / f"{name}.png")}


MEAN_RUN = "mean"  # trials/<config>/mean: the TensorBoard run of the mean over seeds
MEAN_TAGS = ("val/loss", "val/bpb", "train/lm_loss")


def write_mean_runs(data: StudyData) -> list[Path]:
    """Beside a configuration's seed runs, a TensorBoard run `mean` holding the mean over its seeds of
    MEAN_TAGS at the steps every seed logged, so TensorBoard shows one line per configuration too.
    Rewritten from the seed runs each time (never appended to)."""
    from torch.utils.tensorboard import SummaryWriter

    from moe_lab.tb_logs import event_files, read_scalars

    written = []
    for row in data.rows:
        if len(row.run_dirs) < 2:
            continue
        mean_dir = (data.study_dir / row.run_dirs[0]).parent / MEAN_RUN
        curves = {tag: [read_scalars(data.study_dir / d, tag) for d in row.run_dirs] for tag in MEAN_TAGS}
        for old in event_files(mean_dir):
            old.unlink()
        if not any(all(runs) for runs in curves.values()):
            continue
        with SummaryWriter(str(mean_dir)) as writer:
            for tag, runs in curves.items():
                if not all(runs):
                    continue
                for step in sorted(set.intersection(*(set(r) for r in runs))):
                    writer.add_scalar(tag, statistics.fmean(r[step] for r in runs), step)
        written.append(mean_dir)
    return written


def study_curves(data: StudyData, tag: str) -> dict[str, list[dict[int, float]]]:
    """{'#<trial> <label>': one {step: value} curve per seed} for the configurations that logged `tag`,
    best first; a seed without the tag (failed before logging) is left out."""
    from moe_lab.tb_logs import read_scalars

    curves = {}
    for row in data.rows:
        runs = [read_scalars(data.study_dir / d, tag) for d in row.run_dirs]
        runs = [r for r in runs if r]
        if runs:
            curves[f"#{row.trial} {row.label}"] = runs
    return curves


def write_curve_plots(data: StudyData, plots_dir: Path) -> tuple[dict[str, Path], dict]:
    from moe_lab.viz import curves_with_band, save_figure

    written, skipped = {}, {}
    for key, tag, ylabel, smoothing in (("val_loss_curves", "val/loss", "validation loss", 0.0),
                                        ("train_loss_curves", "train/lm_loss", "train LM loss", TRAIN_SMOOTHING)):
        curves = study_curves(data, tag)
        if not curves:
            skipped[key] = f"no run directory has logged {tag}"
            log.warning("note: skipped the %s plot: %s", key.replace("_", " "), skipped[key])
            continue
        title = f"{data.info.study_name}: {tag}, mean over seeds, min-max band"
        fig = curves_with_band(curves, ylabel, title + (f", EMA {smoothing}" if smoothing else ""), smoothing)
        written[key] = save_figure(fig, plots_dir / f"{key}.png")
    return written, skipped


def write_study_report(study_dir: str | Path, data: StudyData | None = None, html: bool = False) -> dict[str, Path]:
    """Write summary.md, trials.csv, plots/ and the mean-over-seeds TensorBoard runs into the study
    directory; return {what: path}. `data` (from load_study_data) saves reading the study twice;
    `html` adds Optuna's interactive plots."""
    data = data or load_study_data(study_dir)
    plots_dir = data.study_dir / PLOTS
    target = f"{data.info.objective_metric} (mean over seeds)"
    key = one_key_grid(data)
    if key is None:
        optuna_plots, skipped = write_optuna_plots(data.study, plots_dir, target, html=html)
    else:
        optuna_plots, skipped = write_objective_by_value(data, key, plots_dir), {}
    write_mean_runs(data)
    curve_plots, skipped_curves = write_curve_plots(data, plots_dir)
    plots = {**optuna_plots, **curve_plots}
    paths = {"summary": data.study_dir / "summary.md", "trials_csv": data.study_dir / "trials.csv"}
    write_trials_csv(paths["trials_csv"], data.rows, data.param_keys)
    write_text_atomic(paths["summary"], summary_markdown(data, plots, {**skipped, **skipped_curves}))
    return {**paths, **plots}
