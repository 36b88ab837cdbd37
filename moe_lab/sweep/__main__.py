"""Optuna sweeps: `python -m moe_lab.sweep SWEEP.yaml [key=value ...] [--dry-run] [--workers N]`.

Re-running the same command resumes the study; several processes (or --workers) share it.
SIGTERM, SIGINT (Ctrl-C) or SIGUSR1 stop the running trials at their next step boundary (passed on to
--workers), checkpoints saved and the trials waiting to be resumed first; the exit code is 128 + the signal.
Results: <output_dir>/<study>/ summary.md, trials.csv, plots/, and one run directory per trial and
seed under trials/ (`tensorboard --logdir <output_dir>/<study>` compares them).
"""

from __future__ import annotations

import sys
from pathlib import Path

from moe_lab.sweep.command import cli
from moe_lab.sweep.config import load_sweep


def report(study_dir: Path, storage_url: str) -> None:
    from moe_lab.report.sweep_summary import write_study_report
    from moe_lab.report.tb_link import answer_lines

    for path in write_study_report(study_dir, echo=True, storage_url=storage_url).values():
        print(f"  wrote {path}")
    command, link = answer_lines(str(study_dir))
    print(f"the answer in TensorBoard: {command}\n  {link}")


def main(argv: list[str] | None = None) -> int:
    return cli(argv, prog="python -m moe_lab.sweep", doc=__doc__, loader=load_sweep, reporter=report)


if __name__ == "__main__":
    sys.exit(main())
