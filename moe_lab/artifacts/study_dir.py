"""The layout of one sweep or ablation study directory (`<output_dir>/<study>/`): the file names the
sweep writes and the reports read."""

from __future__ import annotations

from pathlib import Path

STUDY_INFO = "study_info.json"  # what the report needs to open the study: storage URL, base, seeds
SWEEP_COPY = "sweep.yaml"  # the sweep file as run
TRIALS = "trials"  # one directory per configuration: trials/tNNN-<label>/seedS/
STUDY_DB = "study.db"  # the Optuna storage when the sweep names none (SQLite)
PLOTS = "plots"  # the reports' figures

# The sweep report
SUMMARY = "summary.md"  # settings, results table, best configuration
TRIALS_CSV = "trials.csv"  # one row per configuration, every number the table shows

# The ablation report
RESULTS_MD = "results.md"  # settings, provenance, results table, one verdict per claim
RESULTS_CSV = "results.csv"  # one row per arm, mean / std / n per metric
RESULTS_TEX = "results.tex"  # the table for a paper (booktabs)

# `python -m moe_lab.ablate --verify`: <study>/verify/<time>/
VERIFY = "verify"
VERIFY_MD = "verify.md"  # one verdict per rerun arm


def default_storage_url(study_dir: Path) -> str:
    """The storage of a study whose sweep names none: a SQLite file in the study directory."""
    return f"sqlite:///{(Path(study_dir) / STUDY_DB).resolve()}"
