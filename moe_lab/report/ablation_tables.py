"""The ablation report's table, one row per arm: for the terminal, results.md, results.csv (every number
at full precision, as mean / std / n columns) and results.tex (booktabs, for a paper)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from moe_lab.artifacts.metrics import SEED_MEAN, Metric, metric_named, metrics_where
from moe_lab.artifacts.run_dir import METRICS
from moe_lab.artifacts.run_index import reused_from
from moe_lab.formatting import si
from moe_lab.report import columns, common
from moe_lab.report.ablation_data import AblationData, Arm, SeedRun
from moe_lab.report.columns import Column, CsvColumn
from moe_lab.report.common import csv_text, four_decimals_or_sci, latex_escape
from moe_lab.report.stats import Stat


@dataclass
class ArmRow:
    arm: Arm
    stats: dict[str, Stat]  # metric -> over the completed seeds
    active_params: int | None
    total_params: int | None

    @property
    def n_label(self) -> str:
        return f"{len(self.arm.completed)}/{len(self.arm.runs)}"

    def combined(self, metric: Metric) -> float | None:
        """The completed seeds' values combined as the metric says (a sum of counts, a median of the
        machine's figures)."""
        return metric.combine(self.arm.values(metric.name))


def arm_rows(data: AblationData) -> list[ArmRow]:
    metrics = csv_metrics(data)
    return [
        ArmRow(arm, {m: Stat.of(arm.values(m)) for m in metrics}, arm.first("active_params"), arm.first("total_params"))
        for arm in data.arms
    ]


def csv_metrics(data: AblationData) -> list[str]:
    """The table's metrics, then any other metric a claim is about."""
    return list(dict.fromkeys([m.name for m in TABLE_METRICS] + [c.metric for c in data.claims]))


TABLE_METRICS = metrics_where("table")


def _spread(metric: Metric) -> bool:
    """Whether the table shows the metric's mean ± std over seeds (else one combined figure)."""
    return metric.seeds == SEED_MEAN and not metric.machine


def _metric_cell(metric: Metric, row: ArmRow) -> str:
    if not _spread(metric):
        return metric.format(row.combined(metric))
    stat = row.stats[metric.name]
    return _mean_std(stat, with_n=stat.n != len(row.arm.completed))


def _metric_tex(metric: Metric, row: ArmRow) -> str:
    if not _spread(metric):
        value = row.combined(metric)
        return "--" if value is None else metric.format(value)
    return _tex_mean_std(row.stats[metric.name])


def _metric_column(metric: Metric) -> Column:
    title = metric.title + (" (mean ± std)" if _spread(metric) else "")
    return Column(
        title,
        lambda r: _metric_cell(metric, r),
        tex_title=latex_escape(metric.title),
        tex_cell=lambda r: _metric_tex(metric, r),
    )


# n: completed seeds of those run; a mean ± std cell says its own n when fewer seeds had the metric.
COLUMNS = (
    Column("arm", lambda r: r.arm.name, left=True, tex_title="Arm"),
    Column("n", lambda r: r.n_label, tex_title="$n$"),
    *(_metric_column(m) for m in TABLE_METRICS),
    Column("active", lambda r: si(r.active_params), tex_title="Active"),
    Column("total", lambda r: si(r.total_params), tex_title="Total"),
)


def format_table(rows: list[ArmRow]) -> str:
    """Plain aligned text for the terminal (arm names left, numbers right)."""
    return columns.text_table(COLUMNS, rows)


def markdown_table(rows: list[ArmRow]) -> str:
    return columns.markdown_table(COLUMNS, rows)


def seed_notes(data: AblationData) -> list[str]:
    """One line per arm with seeds that do not count: which, and why."""
    notes = []
    for arm in data.arms:
        left_out = [f"seed {r.seed} {_why_left_out(r)}" for r in arm.runs if not r.completed]
        if left_out:
            notes.append(f"- {arm.name}: n = {len(arm.completed)} of {len(arm.runs)}; " + "; ".join(left_out))
    return notes


def _why_left_out(run: SeedRun) -> str:
    if run.status in ("running", "not started"):
        return {"running": f"has no {METRICS} yet (running, or died before finishing)", "not started": "not started"}[
            run.status
        ]
    reason = run.metrics.get("prune_reason") or run.metrics.get("error") or ""
    reason = " ".join(str(reason).split())
    return run.status + (f" ({reason[:80]})" if reason else "")


def _mean_std(stat: Stat, with_n: bool = False) -> str:
    if stat.mean is None:
        return "-"
    text = four_decimals_or_sci(stat.mean)
    text += f" ± {four_decimals_or_sci(stat.std)}" if stat.std is not None else ""
    return text + (f" (n={stat.n})" if with_n else "")


def results_csv(data: AblationData, rows: list[ArmRow]) -> str:
    """One line per arm; mean/std/n per metric (empty cells for no value); floats at full precision."""
    collapses = metric_named("collapse_events_count")
    spec = (
        CsvColumn("arm", lambda r: r.arm.name),
        CsvColumn("overrides", lambda r: json.dumps(r.arm.overrides)),
        CsvColumn("seeds", lambda r: json.dumps([run.seed for run in r.arm.runs])),
        CsvColumn("seeds_completed", lambda r: json.dumps([run.seed for run in r.arm.completed])),
        CsvColumn("n", lambda r: len(r.arm.completed)),
        CsvColumn("active_params", lambda r: r.active_params),
        CsvColumn("total_params", lambda r: r.total_params),
        CsvColumn("collapse_events_total", lambda r: r.combined(collapses)),
        *(
            CsvColumn(f"{m}_{part}", lambda r, m=m, part=part: getattr(r.stats[m], part))
            for m in csv_metrics(data)
            for part in ("mean", "std", "n")
        ),
    )
    return columns.csv_table(spec, rows)


def _tex_mean_std(stat: Stat) -> str:
    if stat.mean is None:
        return "--"
    spread = rf" \pm {four_decimals_or_sci(stat.std)}" if stat.std is not None else ""
    return f"${four_decimals_or_sci(stat.mean)}{spread}$"


def results_tex(data: AblationData, rows: list[ArmRow]) -> str:
    label = re.sub(r"[^A-Za-z0-9:-]+", "-", data.name)
    head = columns.tex_header(COLUMNS)
    body = columns.tex_lines(COLUMNS, rows)
    return (
        "\n".join(
            [
                f"% {latex_escape(data.name)}: written by moe_lab.report from the run logs; "
                r"needs \usepackage{booktabs}",
                r"\begin{table}[t]",
                r"\centering",
                rf"\caption{{{latex_escape(data.name)}: mean $\pm$ sample std over the completed seeds "
                r"($n$ = completed / expected).}",
                rf"\label{{tab:{label}}}",
                rf"\begin{{tabular}}{{{columns.tex_alignment(COLUMNS)}}}",
                r"\toprule",
                head,
                r"\midrule",
                *body,
                r"\bottomrule",
                r"\end{tabular}",
                r"\end{table}",
            ]
        )
        + "\n"
    )


def per_seed_csv(data: AblationData) -> str:
    """One row per arm and seed, every seed with its status (only completed ones count in the means and
    tests): the metrics of the table and the claims, where the run is and which code trained it, so
    anyone can pair, re-test or pool the seeds without the run directories."""
    # A claim on collapses already puts the count among the metrics; a column appears once.
    metrics = list(dict.fromkeys([*csv_metrics(data), "collapse_events_count"]))
    header = ["arm", "seed", "status", *metrics, "steps", "run_dir", "code", "reused_from"]
    lines = [
        [
            arm.name,
            run.seed,
            run.status,
            *(run.metrics.get(m) for m in metrics),
            run.metrics.get("steps"),
            run.run_dir.relative_to(data.study_dir).as_posix() if run.run_dir else None,
            common.code_revision(run.env) if run.env else None,
            reused_from(run.run_dir) if run.run_dir else None,
        ]
        for arm in data.arms
        for run in arm.runs
    ]
    return csv_text(header, lines)


def per_seed_markdown(data: AblationData) -> list[str]:
    """Per claim metric, arms × seeds: the values the claims pair (`-`: the seed did not complete)."""
    lines = []
    seeds = sorted({run.seed for arm in data.arms for run in arm.runs})
    for metric in dict.fromkeys(c.metric for c in data.claims):
        cells = []
        for arm in data.arms:
            values = arm.by_seed(metric)
            cells.append([arm.name, *(four_decimals_or_sci(values[s]) if s in values else "-" for s in seeds)])
        columns = ("arm", *(f"seed {s}" for s in seeds))
        lines += [f"`{metric}`:", "", common.markdown_table(columns, cells, set(columns[1:])), ""]
    return lines


def reuse_lines(data: AblationData) -> list[str]:
    """Which runs were copied from an earlier study's identical run (moe_lab.artifacts.run_index)."""
    reused = [
        (arm.name, run.seed, source)
        for arm in data.arms
        for run in arm.runs
        if run.run_dir
        for source in [reused_from(run.run_dir)]
        if source
    ]
    if not reused:
        return []
    total = sum(1 for arm in data.arms for run in arm.runs if run.run_dir)
    lines = [
        f"{len(reused)} of {total} runs were reused, not trained: the same resolved config, seed, clean "
        "commit, packages and threads had completed before (their wall time is not counted):",
        "",
    ]
    return lines + [f"- {arm} seed {seed}: from `{source}`" for arm, seed, source in reused] + [""]
