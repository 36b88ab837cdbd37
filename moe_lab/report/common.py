"""What the sweep report and the ablation report share: reading a run's records and a study's storage,
finite-value tests, number formatting, and text / markdown / CSV / LaTeX tables."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from moe_lab.artifacts.run_dir import METRICS
from moe_lab.errors import MoELabError


class ReportError(MoELabError):
    """A study or ablation directory (or the storage it names) cannot be read."""


# ------------------------------------------------------------------------------------------ wording

# What each compute_matching mode holds constant; {unit}: what varies (a configuration, an arm).
MATCHING_MEANS = {
    "none": "no parameter count is held constant: each {unit} keeps the base experiment's expert width",
    "active": "active parameters per token are held constant: {width} is resized per {unit} to match the "
    "base experiment",
    "total": "total parameters are held constant: {width} is resized per {unit} to match the base experiment",
}


def matching_means(mode: str, unit: str, width: str = "the expert width") -> str:
    """What compute matching `mode` holds constant, in words; `width` names the resized expert width."""
    return MATCHING_MEANS[mode].format(unit=unit, width=width) if mode in MATCHING_MEANS else "unknown mode"


# ------------------------------------------------------------------------------------------ reading


def read_json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError(f"{path}: not readable JSON: {err}") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object")
    return data


def optional_json_object(path: Path) -> dict:
    """A run's own record, or {} while it is being written or was never written."""
    try:
        return read_json_object(path)
    except ReportError:
        return {}


def run_metrics(run_dir: Path) -> dict:
    """The final metrics a run recorded, or {} while it is running (or died before finishing)."""
    return optional_json_object(Path(run_dir) / METRICS)


# ------------------------------------------------------------------------------------------ values


def code_revision(env: dict) -> str:
    """The commit a run's environment record names, '<commit> (dirty)' unless known clean and unchanged."""
    git = env.get("git") or {}
    dirty = git.get("dirty") is not False or git.get("changed_since_start")
    return f"{git.get('commit') or 'unknown'}{' (dirty)' if dirty else ''}"


def is_finite(x: Any) -> bool:
    """An int or float (a bool counts, as an int) that is not NaN or infinite: a value Optuna recorded."""
    return isinstance(x, (int, float)) and math.isfinite(x)


def is_finite_non_bool(x: Any) -> bool:
    """As is_finite, but a bool is not a number: a metric read back from a run's JSON record."""
    return is_finite(x) and not isinstance(x, bool)


def four_decimals(x: float) -> str:
    """An objective: 4 decimals, 1 above 1000 ('2.3457', '1234.5')."""
    return f"{x:.4f}" if abs(x) < 1e3 else f"{x:.1f}"


def four_decimals_or_sci(x: float | None) -> str:
    """A metric of any size: 4 decimals in [1e-3, 1e4) (and for 0), scientific outside; '-' for None."""
    if x is None:
        return "-"
    return f"{x:.4f}" if x == 0 or 1e-3 <= abs(x) < 1e4 else f"{x:.3e}"


def optional(value: Any, fmt: str) -> str:
    """`fmt` filled with `value`, or '-' for None."""
    return "-" if value is None else fmt.format(value)


def duration(seconds: float | None) -> str:
    """'42.0s', '3m05s', '2h07m'; '-' for None."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes}m{s:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


# ------------------------------------------------------------------------------------------ tables


def text_table(columns: tuple[str, ...], cells: list[list[str]], right_aligned: set[str]) -> str:
    """Plain aligned text for the terminal: a header, a rule, one line per row."""
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]

    def line(values) -> str:
        return "  ".join(
            v.rjust(w) if c in right_aligned else v.ljust(w) for c, v, w in zip(columns, values, widths, strict=True)
        ).rstrip()

    return "\n".join([line(columns), "  ".join("-" * w for w in widths)] + [line(c) for c in cells])


def markdown_table(columns: tuple[str, ...], cells: list[list[str]], right_aligned: set[str]) -> str:
    rule = ["---:" if c in right_aligned else "---" for c in columns]
    lines = [list(columns), rule] + [[v.replace("|", "\\|") for v in c] for c in cells]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def csv_cell(value: Any) -> Any:
    """Empty for None, a list as JSON, anything else as the csv module writes it (floats in full)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    return value


def csv_text(header: list[str], rows: list[list[Any]], line_end: str = "\n") -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=line_end)
    writer.writerow(header)
    writer.writerows([csv_cell(v) for v in row] for row in rows)
    return out.getvalue()


LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in text)
