"""The results report of a sweep study: summary.md, trials.csv, plots and the mean-over-seeds runs.

Everything is read back from the study directory the sweep runner wrote (its study info, the Optuna
storage, one run directory per trial and seed), so a report can be regenerated at any time, also while
the sweep is still running:

    <study_dir>/summary.md    settings, results table, best configuration, state counts, seed noise
    <study_dir>/trials.csv    one row per configuration, every number the table shows (sweep_tables)
    <study_dir>/plots/ and trials/<config>/mean/    figures and TensorBoard runs (sweep_plots)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from moe_lab.artifacts.atomic import write_text_atomic
from moe_lab.artifacts.metrics import metric_named
from moe_lab.artifacts.study_dir import PLOTS, SUMMARY, TRIALS_CSV
from moe_lab.formatting import si
from moe_lab.report.common import is_finite, matching_means
from moe_lab.report.config_colours import config_colours
from moe_lab.report.html_report import write_html_report
from moe_lab.report.stats import (
    CONFIDENCE,
    INDICATIVE_N,
    SUPPORTED,
    UNDECIDED,
    Comparison,
    compare,
    format_df,
    format_p,
)
from moe_lab.report.sweep_plots import (
    TRAIN_SMOOTHING,
    one_key_grid,
    write_curve_plots,
    write_load_balance,
    write_mean_runs,
    write_objective_by_value,
    write_optuna_plots,
)
from moe_lab.report.sweep_study import STATE_ORDER, ConfigRow, StudyData, StudyInfo, best_row, load_study_data
from moe_lab.report.sweep_tables import LOAD_CAVEAT, format_objective, format_table, markdown_table, write_trials_csv
from moe_lab.report.tb_link import answer_lines
from moe_lab.report.trace_plots import write_specialisation_plots


def write_study_report(
    study_dir: str | Path, data: StudyData | None = None, html: bool = False, echo: bool = False, storage_url: str = ""
) -> dict[str, Path]:
    """Write summary.md, trials.csv, plots/ and the mean-over-seeds TensorBoard runs into the study
    directory; return {what: path}. `data` (from load_study_data) saves reading the study twice;
    `html` adds report.html (moe_lab.report.html_report) and Optuna's interactive plots; `echo` prints the
    settings and the table first."""
    data = data or load_study_data(study_dir, storage_url)
    if echo:
        print(
            f"study {data.info.study_name}: {data.info.objective_metric} ({data.info.direction}), "
            f"seeds {data.info.seeds}, compute matching {data.info.compute_matching}"
        )
        # Before the plots, which take a few seconds.
        print(format_table(data.rows, data.info.objective_metric), flush=True)
    plots_dir = data.study_dir / PLOTS
    target = f"{data.info.objective_metric} (mean over seeds)"
    key = one_key_grid(data)
    colours = config_colours(data)
    if key is None:
        optuna_plots, skipped = write_optuna_plots(data.study, plots_dir, target, html=html)
    else:
        optuna_plots, skipped = write_objective_by_value(data, key, plots_dir, colours), {}
    write_mean_runs(data)
    curve_plots, skipped_curves = write_curve_plots(data, plots_dir, colours)
    load_plot, skipped_load = write_load_balance(data, plots_dir, colours)
    plots = {**optuna_plots, **curve_plots, **load_plot, **write_specialisation_plots(data, plots_dir)}
    skipped = {**skipped, **skipped_curves, **skipped_load}
    paths = {"summary": data.study_dir / SUMMARY, "trials_csv": data.study_dir / TRIALS_CSV}
    write_trials_csv(paths["trials_csv"], data.rows, data.param_keys)
    write_text_atomic(paths["summary"], summary_markdown(data, plots, skipped))
    if html:
        best = _best_text(best_row(data.rows), data.info)
        headline = best_headline(data.rows, data.info)
        paths["report_html"] = write_html_report(data, study_header(data), headline, best, colours)
    return {**paths, **plots}


def study_header(data: StudyData) -> list[str]:
    """The study's settings and trial counts, one markdown bullet each (summary.md and report.html)."""
    info, rows = data.info, data.rows
    order = [s for s in STATE_ORDER if s in data.trial_states] + sorted(set(data.trial_states) - set(STATE_ORDER))
    states = ", ".join(f"{s} {data.trial_states[s]}" for s in order)
    retries = sum(r.retries for r in rows)
    return [
        f"- objective: `{info.objective_metric}` ({info.direction}), "
        f"mean{' ± std' if len(info.seeds) > 1 else ''} over seeds {info.seeds}",
        f"- sampler: {info.sampler}; base experiment: `{_relative(info.base, data.study_dir) or '?'}`",
        f"- compute matching: **{info.compute_matching}**: "
        f"{matching_means(info.compute_matching, 'configuration', 'the expert width (expert_hidden)')}",
        *_held_constant(data),
        f"- trials: {sum(data.trial_states.values())} ({states or 'none'}) in {len(rows)} configurations"
        + (f", {retries} retried" if retries else ""),
    ]


def summary_markdown(data: StudyData, plots: dict[str, Path], skipped: dict[str, str]) -> str:
    info, rows = data.info, data.rows
    lines = [
        f"# Sweep report: {info.study_name}",
        "",
        *study_header(data),
        "",
        "## Best configuration",
        "",
        *([headline, ""] if (headline := best_headline(rows, info)) else []),
        _best_text(best_row(rows), info),
        "",
        "The answer in TensorBoard (validation loss, load CV and collapses, unsmoothed, one colour per "
        "configuration as in the plots), from this study's folder:",
        "",
        "```",
        *answer_lines("."),
        "```",
        "",
        "## Results",
        "",
        markdown_table(rows, info.objective_metric) if rows else "No trials yet.",
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
        lines += [
            "",
            f"Train-loss curves are smoothed per seed with an EMA of weight {TRAIN_SMOOTHING} "
            "(TensorBoard's smoothing) before the mean; validation curves are raw.",
        ]
    return "\n".join(lines) + "\n"


def _relative(path: str, study_dir: Path) -> str:
    """A path recorded by the runner (absolute, of the machine it ran on) as seen from summary.md."""
    return os.path.relpath(path, study_dir.resolve()) if path and Path(path).is_absolute() else path


def against_best(rows: list[ConfigRow], info: StudyInfo) -> list[tuple[ConfigRow, Comparison]]:
    """Each other complete configuration with the best mean's comparison against it (moe_lab.report.stats,
    the statistics of the ablation report's claims), oriented so that Δ < 0 always means "the best is
    better", also when the objective is maximised."""
    best = best_row(rows)
    others = [r for r in rows if r is not best and r.state == "COMPLETE" and is_finite(r.objective_mean)]
    return [(row, _compare(best, row, _sign(info))) for row in others]


def best_headline(rows: list[ConfigRow], info: StudyInfo) -> str:
    """Which configurations are best, in a sentence the comparisons below decide. The configurations not
    decided worse than the best mean (the interval of Δ not wholly below 0) form a tie group: their order
    is within seed noise as far as the seeds tell. Each member is then set against the configurations
    decided worse (HEADLINE_DETAIL of them at most; the rest are counted)."""
    best = best_row(rows)
    if best is None:
        return ""
    sign, compared = _sign(info), against_best(rows, info)
    if not compared:
        return f"**{best.label}**: the only complete configuration."
    tied = [(r, c) for r, c in compared if c.outcome() != SUPPORTED]
    worse = [r for r, c in compared if c.outcome() == SUPPORTED]
    if not tied:
        beats = [f"beats {r.label} {_beats_by(c)}" for r, c in compared[:HEADLINE_DETAIL]]
        return f"**{best.label}** is best: " + "; ".join(beats) + _more_worse(worse, len(beats), best) + "."
    ties = [best] + [r for r, _ in tied]
    text = f"**{' ≈ '.join(r.label for r in ties)}** ({_tie_words(tied, best, sign)})"
    shown = worse[:HEADLINE_DETAIL] if len(ties) <= HEADLINE_DETAIL else []
    text += "".join(_ties_against(ties, loser, sign) for loser in shown)
    return text + _more_worse(worse, len(shown), best) + "."


HEADLINE_DETAIL = 3  # configurations the headline spells out in one part (a tie group, those it beats)


def _tie_words(tied: list[tuple[ConfigRow, Comparison]], best: ConfigRow, sign: float) -> str:
    if len(tied) == 1:
        return _undecided(tied[0][1], sign)
    if len(tied) < HEADLINE_DETAIL:
        return "; ".join(f"against {r.label} {_undecided(c, sign)}" for r, c in tied)
    return f"none decided worse than {best.label}: the comparisons below"


def _ties_against(ties: list[ConfigRow], loser: ConfigRow, sign: float) -> str:
    """'; both beat C: A by … and B by …', or each member's own verdict where not all of them beat C."""
    against = [(r, _compare(r, loser, sign)) for r in ties]
    if all(c.outcome() == SUPPORTED for _, c in against):
        everyone = "both" if len(ties) == 2 else f"all {len(ties)}"
        return f"; {everyone} beat {loser.label}: " + " and ".join(f"{r.label} {_beats_by(c)}" for r, c in against)
    return "; " + ", ".join(
        f"{r.label} beats {loser.label} {_beats_by(c)}"
        if c.outcome() == SUPPORTED
        else f"{r.label} against {loser.label} {_undecided(c, sign)}"
        for r, c in against
    )


def _beats_by(c: Comparison) -> str:
    """'by 0.6000 ± 0.2267 (95% CI; Welch t(4) p = 0.0018)' for a decided comparison (oriented Δ < 0)."""
    t = c.test
    return f"by {-t.delta:.4f} ± {(t.high - t.low) / 2:.4f} ({CONFIDENCE:.0%} CI; {c.brief()})"


def _undecided(c: Comparison, sign: float) -> str:
    """'undecided: Δ -0.0500, 95% CI [-0.2767, +0.1767], Welch t(4) p = 0.57' in the objective's own sign."""
    word = "undecided" if c.outcome() == UNDECIDED else "decided the other way"
    if c.test is None:
        return f"{word}: Δ {sign * c.delta:+.4f}, {c.why_no_test}"
    low, high = sorted((sign * c.test.low, sign * c.test.high))
    return f"{word}: Δ {sign * c.delta:+.4f}, {CONFIDENCE:.0%} CI [{low:+.4f}, {high:+.4f}], {c.brief()}"


def _more_worse(worse: list[ConfigRow], shown: int, best: ConfigRow) -> str:
    more = len(worse) - shown
    if more <= 0:
        return ""
    return f"; {more}{' more' if shown else ''} decided worse than {best.label} (the comparisons below)"


def seed_noise_lines(rows: list[ConfigRow], info: StudyInfo) -> list[str]:
    """The best mean against each other complete configuration: a difference, or seed noise?"""
    best, compared, sign = best_row(rows), against_best(rows, info), _sign(info)
    if not compared:
        return []
    lines = [
        "## Best mean against the others: a difference or seed noise?",
        "",
        f"Δ = mean {info.objective_metric} of **{best.label}** − that of the other configuration"
        + (" (negated: the objective is maximised)" if sign < 0 else "")
        + f". {SWEEP_METHOD}",
        "",
        f"| against | Δ | test | p | {CONFIDENCE:.0%} CI of Δ | verdict |",
        "| --- | ---: | --- | ---: | --- | --- |",
    ]
    for row, c in compared:
        label = row.label.replace("|", "\\|")
        if c.test is None:
            lines.append(f"| {label} | {c.delta:+.4f} | - | - | - | {c.why_no_test} |")
            continue
        t = c.test
        verdict = {SUPPORTED: f"**{best.label} better**", UNDECIDED: "undecided (a tie within seed noise)"}.get(
            c.outcome(), f"**{row.label} better**"
        )
        if c.indicative:
            verdict += f" (indicative: n ≤ {min(c.a.n, c.b.n)})"
        lines.append(
            f"| {label} | {c.delta:+.4f} | {t.name}({format_df(t.df)}) | {format_p(t.p)} | "
            f"[{t.low:+.4f}, {t.high:+.4f}] | {verdict} |"
        )
    return lines + [""]


SWEEP_METHOD = (
    "Paired t on per-seed differences where the two share at least two seeds (a seed fixes the data order), "
    f"Welch's t otherwise. **better**: the {CONFIDENCE:.0%} confidence interval of Δ excludes 0; "
    f"**undecided**: it straddles 0, and its ends bound the difference either way. With n ≤ {INDICATIVE_N} "
    "seeds a decision is indicative only."
)


def _sign(info: StudyInfo) -> float:
    return -1.0 if info.direction == "maximize" else 1.0


def _compare(a: ConfigRow, b: ConfigRow, sign: float) -> Comparison:
    """Δ = a − b over seeds by the shared rule: paired where they share 2 seeds, Welch otherwise."""
    return compare(_seed_values(a, sign), _seed_values(b, sign), (a.label, b.label))


def _seed_values(row: ConfigRow, sign: float) -> dict[int, float] | list[float]:
    """{seed: objective} of a configuration (oriented so lower is better); its mean alone without seeds."""
    pairs = {s: sign * v for s, v in zip(row.seeds, row.objective_values, strict=False) if is_finite(v)}
    return pairs or [sign * row.objective_mean]


def _held_constant(data: StudyData) -> list[str]:
    """What the data says is constant: searched keys with one value, and the parameter counts."""
    lines = []
    values = {
        k: {json.dumps(r.params.get(k), default=str) for r in data.rows if k in r.params} for k in data.param_keys
    }
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
    return (
        f"Best mean: **{row.label}** (trial {row.trial}, config {row.config_id}; {params}): "
        f"{info.objective_metric} {format_objective(row)}; active params {si(row.active_params)}, "
        f"total params {si(row.total_params)}, "
        f"final load CV {metric_named('final_load_cv').format(row.metrics.get('final_load_cv'))}. Runs: {runs}."
    )
