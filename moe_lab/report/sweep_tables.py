"""The sweep report's results table (terminal and markdown) and trials.csv: one row per configuration,
best first."""

from __future__ import annotations

import json
from pathlib import Path

from moe_lab.artifacts.atomic import write_text_atomic
from moe_lab.artifacts.metrics import Metric, metrics_where
from moe_lab.formatting import si
from moe_lab.report import columns
from moe_lab.report.columns import Column, CsvColumn
from moe_lab.report.common import duration, four_decimals, is_finite
from moe_lab.report.sweep_study import ConfigRow

NOTE_WIDTH = 48  # prune reason / error characters shown in the tables (trials.csv has them whole)
# The vocabulary's table metrics: results, then the machine's figures (medians over the runs, per run).
RESULT_METRICS = tuple(m for m in metrics_where("table") if not m.machine)
MACHINE_METRICS = tuple(m for m in metrics_where("table") if m.machine)
# Printed under every table that shows the throughput columns.
LOAD_CAVEAT = (
    "time/run and tok/s/run are medians over a configuration's runs; they depend on the machine's "
    "load and on how many workers shared its cores, so they are not results and do not rank."
)


def format_objective(row: ConfigRow) -> str:
    """'2.3457 ± 0.0120 (n=2)'; 'n=1/2' when a seed gave no value; '-' without a value. One seed has no
    spread (the runner records std 0 for it): '2.3750 (n=1)', never '± 0.0000'."""
    if not is_finite(row.objective_mean):
        return "-" if row.objective_mean is None else str(row.objective_mean)
    text = four_decimals(row.objective_mean)
    if row.objective_std is not None and row.n_seeds > 1:
        text += f" ± {four_decimals(row.objective_std)}"
    n = f"{row.n_seeds}/{len(row.seeds)}" if row.seeds and row.n_seeds != len(row.seeds) else f"{row.n_seeds}"
    return f"{text} (n={n})"


def metric_column(metric: Metric, suffix: str = "") -> Column:
    return Column(metric.title + suffix, lambda r: metric.format(r.metrics.get(metric.name)))


def result_columns(objective: str) -> tuple[Column, ...]:
    """The results table's columns; `objective` (a metric name) has its own column, with its spread."""
    return (
        Column("trial", lambda r: str(r.trial)),
        Column("config", lambda r: r.label, left=True),
        Column("objective (mean ± std, n seeds)", format_objective),
        Column("state", lambda r: r.state, left=True),
        Column("total", lambda r: si(r.total_params)),
        Column("active", lambda r: si(r.active_params)),
        *(metric_column(m) for m in RESULT_METRICS if m.name != objective),
        Column("retries", lambda r: str(r.retries)),
        Column("time/run", lambda r: duration(r.run_time_s)),
        *(metric_column(m, "/run") for m in MACHINE_METRICS),
        Column("prune reason / error", _note, left=True),
    )


def format_table(rows: list[ConfigRow], objective: str) -> str:
    """Plain aligned text, one line per configuration, best first."""
    return columns.text_table(result_columns(objective), rows) + (f"\n{LOAD_CAVEAT}" if rows else "")


def markdown_table(rows: list[ConfigRow], objective: str) -> str:
    return columns.markdown_table(result_columns(objective), rows)


def _note(row: ConfigRow) -> str:
    text = " ".join(str(row.prune_reason or row.error or "").split())  # one line
    return text if len(text) <= NOTE_WIDTH else text[: NOTE_WIDTH - 1] + "…"


CSV_COLUMNS = (
    CsvColumn("objective_mean", lambda r: r.objective_mean),
    CsvColumn("objective_std", lambda r: r.objective_std),
    CsvColumn("n_seeds", lambda r: r.n_seeds),
    CsvColumn("objective_values", lambda r: json.dumps(r.objective_values)),
    CsvColumn("duration_s", lambda r: r.duration_s),
    CsvColumn("active_params", lambda r: r.active_params),
    CsvColumn("total_params", lambda r: r.total_params),
    *(CsvColumn(m.name, lambda r, name=m.name: r.metrics.get(name)) for m in metrics_where("table")),
    CsvColumn("prune_reason", lambda r: r.prune_reason),
    CsvColumn("error", lambda r: r.error),
    CsvColumn("retries", lambda r: r.retries),
    CsvColumn("run_time_s", lambda r: r.run_time_s),
)


def write_trials_csv(path: Path, rows: list[ConfigRow], param_keys: list[str]) -> None:
    """One line per configuration, best first; empty cells for missing values, objective_values as a
    JSON list (null for a seed without a value)."""
    spec = (
        CsvColumn("trial", lambda r: r.trial),
        CsvColumn("config_id", lambda r: r.config_id),
        CsvColumn("state", lambda r: r.state),
        *(CsvColumn(k, lambda r, key=k: r.params.get(key)) for k in param_keys),
        *CSV_COLUMNS,
    )
    # The csv module's default (Excel) line ends, as trials.csv has always had.
    write_text_atomic(path, columns.csv_table(spec, rows, line_end="\r\n"))
