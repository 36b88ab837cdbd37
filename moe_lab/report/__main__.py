"""Report on a results directory: `python -m moe_lab.report DIR`.

DIR is a sweep study directory (as `python -m moe_lab.sweep` writes it): prints the results table,
one row per configuration, best first, and writes summary.md, trials.csv and plots/ into DIR (see
moe_lab.report.sweep_summary). Reports can be regenerated at any time, also mid-sweep.

DIR is an ablation directory (its study info says "kind": "ablation"; `python -m moe_lab.ablate`
writes it): prints the table per arm and one verdict per claim, and writes results.md, results.csv,
results.tex and plots/ into DIR (see moe_lab.report.ablation_results), from the run logs alone.

Each kind of directory has one detection rule in `detect_kind` and one line in REPORTS.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from moe_lab.artifacts.study_dir import STUDY_INFO
from moe_lab.errors import MoELabError


def report_study(path: Path, html: bool = False) -> dict[str, Path]:
    from moe_lab.report.sweep_summary import write_study_report

    return write_study_report(path, html=html, echo=True)


def report_ablation(path: Path) -> dict[str, Path]:
    from moe_lab.report.ablation_results import write_ablation_report

    return write_ablation_report(path, echo=True)


REPORTS: dict[str, Callable[[Path], dict[str, Path]]] = {"study": report_study, "ablation": report_ablation}


def detect_kind(path: Path) -> str:
    """Which report a directory gets, from the file that marks it."""
    if not path.is_dir():
        raise MoELabError(f"{path}: no such directory")
    if (path / STUDY_INFO).is_file():
        return "ablation" if _study_kind(path / STUDY_INFO) == "ablation" else "study"
    raise MoELabError(f"{path}: no {STUDY_INFO}; expected a sweep study or ablation directory")


def _study_kind(path: Path) -> str | None:
    # Sweeps write "kind": "sweep" (older ones no kind). An unreadable file is left to the sweep
    # report, whose error names it.
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info.get("kind") if isinstance(info, dict) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moe_lab.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dir", type=Path, help="a sweep study or ablation directory")
    parser.add_argument(
        "--html",
        action="store_true",
        help="also write report.html for a sweep: settings, best configuration, sortable table, plots and "
        "a glossary of the metrics in one page that opens offline (a sweep over several keys also keeps Optuna's "
        "interactive plotly pages and plotly.min.js, 4.8 MB, in plots/)",
    )
    args = parser.parse_args(argv)
    try:
        kind = detect_kind(args.dir)
        if args.html and kind != "study":
            raise MoELabError(f"--html: {args.dir} is an ablation; its plots are PNG only")
        written = REPORTS[kind](args.dir, **({"html": True} if args.html else {}))
    except MoELabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\nwrote:")
    for path in written.values():
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
