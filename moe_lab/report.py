"""Report on a results directory: `python -m moe_lab.report DIR`.

DIR is a sweep study directory (study_info.json, written by `python -m moe_lab.sweep`): prints the
results table, one row per configuration, best first, and writes summary.md, trials.csv and plots/
into DIR (see moe_lab.sweep.report). Reports can be regenerated at any time, also mid-sweep.

Each kind of directory has one detection rule in `detect_kind` and one line in REPORTS.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from moe_lab.errors import MoELabError


def report_study(path: Path) -> dict[str, Path]:
    from moe_lab.sweep.report import format_table, load_study_data, write_study_report

    data = load_study_data(path)
    print(f"study {data.info.study_name}: {data.info.objective_metric} ({data.info.direction}), "
          f"seeds {data.info.seeds}, compute matching {data.info.compute_matching}")
    print(format_table(data.rows), flush=True)  # before the plots, which take a few seconds
    return write_study_report(path, data)


REPORTS: dict[str, Callable[[Path], dict[str, Path]]] = {"study": report_study}


def detect_kind(path: Path) -> str:
    """Which report a directory gets, from the file that marks it."""
    if not path.is_dir():
        raise MoELabError(f"{path}: no such directory")
    if (path / "study_info.json").is_file():
        return "study"
    raise MoELabError(f"{path}: no study_info.json; expected a sweep study directory")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moe_lab.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="a sweep study directory")
    args = parser.parse_args(argv)
    try:
        written = REPORTS[detect_kind(args.dir)](args.dir)
    except MoELabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\nwrote:")
    for path in written.values():
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
