"""The sweep report's results table (terminal and markdown) and trials.csv: one row per configuration,
best first."""

from __future__ import annotations

import json
from pathlib import Path

from moe_lab.artifacts.atomic import write_text_atomic
from moe_lab.formatting import si
from moe_lab.report import common
from moe_lab.report.common import csv_text, duration, four_decimals, is_finite, optional, text_table
from moe_lab.report.sweep_study import ConfigRow

NOTE_WIDTH = 48  # prune reason / error characters shown in the tables (trials.csv has them whole)
COLUMNS = (
    "trial",
    "config",
    "objective (mean ± std, n seeds)",
    "state",
    "total",
    "active",
    "load CV",
    "collapses",
    "retries",
    "time/run",
    "tok/s/run",
    "prune reason / error",
)
RIGHT_ALIGNED = {
    "trial",
    "objective (mean ± std, n seeds)",
    "total",
    "active",
    "load CV",
    "collapses",
    "retries",
    "time/run",
    "tok/s/run",
}
# Printed under every table that shows the two throughput columns.
LOAD_CAVEAT = (
    "time/run and tok/s/run are medians over a configuration's runs; they depend on the machine's "
    "load and on how many workers shared its cores, so they are not results and do not rank."
)


def format_objective(row: ConfigRow) -> str:
    """'2.3457 ± 0.0120 (n=2)'; 'n=1/2' when a seed gave no value; '-' without a value."""
    if not is_finite(row.objective_mean):
        return "-" if row.objective_mean is None else str(row.objective_mean)
    text = four_decimals(row.objective_mean)
    if row.objective_std is not None:
        text += f" ± {four_decimals(row.objective_std)}"
    n = f"{row.n_seeds}/{len(row.seeds)}" if row.seeds and row.n_seeds != len(row.seeds) else f"{row.n_seeds}"
    return f"{text} (n={n})"


def table_cells(rows: list[ConfigRow]) -> list[list[str]]:
    """The cells of the results table, shared by the terminal and the markdown versions."""
    return [
        [
            str(r.trial),
            r.label,
            format_objective(r),
            r.state,
            si(r.total_params),
            si(r.active_params),
            optional(r.final_load_cv, "{:.3f}"),
            optional(r.collapse_events, "{}"),
            str(r.retries),
            duration(r.run_time_s),
            si(r.tokens_per_s),
            _note(r),
        ]
        for r in rows
    ]


def format_table(rows: list[ConfigRow]) -> str:
    """Plain aligned text, one line per configuration, best first."""
    cells = table_cells(rows)
    return text_table(COLUMNS, cells, RIGHT_ALIGNED) + (f"\n{LOAD_CAVEAT}" if cells else "")


def markdown_table(rows: list[ConfigRow]) -> str:
    return common.markdown_table(COLUMNS, table_cells(rows), RIGHT_ALIGNED)


def _note(row: ConfigRow) -> str:
    text = " ".join(str(row.prune_reason or row.error or "").split())  # one line
    return text if len(text) <= NOTE_WIDTH else text[: NOTE_WIDTH - 1] + "…"


CSV_COLUMNS = (
    "objective_mean",
    "objective_std",
    "n_seeds",
    "objective_values",
    "duration_s",
    "active_params",
    "total_params",
    "tokens_per_s",
    "final_load_cv",
    "collapse_events",
    "prune_reason",
    "error",
    "retries",
    "run_time_s",
)


def write_trials_csv(path: Path, rows: list[ConfigRow], param_keys: list[str]) -> None:
    """One line per configuration, best first; empty cells for missing values, objective_values as a
    JSON list (null for a seed without a value)."""
    lines = [
        [
            r.trial,
            r.config_id,
            r.state,
            *(r.params.get(k) for k in param_keys),
            r.objective_mean,
            r.objective_std,
            r.n_seeds,
            json.dumps(r.objective_values),
            r.duration_s,
            r.active_params,
            r.total_params,
            r.tokens_per_s,
            r.final_load_cv,
            r.collapse_events,
            r.prune_reason,
            r.error,
            r.retries,
            r.run_time_s,
        ]
        for r in rows
    ]
    # The csv module's default (Excel) line ends, as trials.csv has always had.
    write_text_atomic(
        path, csv_text(["trial", "config_id", "state", *param_keys, *CSV_COLUMNS], lines, line_end="\r\n")
    )
