"""The layout of one sweep or ablation study directory (`<output_dir>/<study>/`): the file names the
sweep writes and the reports read."""

from __future__ import annotations

from pathlib import Path

STUDY_INFO = "study_info.json"  # what the report needs to open the study: storage URL, base, seeds
SWEEP_COPY = "sweep.yaml"  # the sweep file as run
TRIALS = "trials"  # one directory per configuration: trials/tNNN-<label>/seedS/
PREREQUISITES = "prerequisites"  # an ablation's runs its arms start from: prerequisites/<name>/seedS/
STUDY_DB = "study.db"  # the Optuna storage when the sweep names none (SQLite)
PLOTS = "plots"  # the reports' figures

# The sweep report
SUMMARY = "summary.md"  # settings, results table, best configuration
TRIALS_CSV = "trials.csv"  # one row per configuration, every number the table shows
REPORT_HTML = "report.html"  # `report --html`: header, headline, table, plots and glossary in one offline page

# The ablation report
RESULTS_MD = "results.md"  # settings, provenance, results table, one verdict per claim
RESULTS_CSV = "results.csv"  # one row per arm, mean / std / n per metric
RESULTS_TEX = "results.tex"  # the table for a paper (booktabs)
PER_SEED_CSV = "per_seed.csv"  # one row per arm and seed: the values the claims are tested on

# `python -m moe_lab.ablate --verify`: <study>/verify/<time>/
VERIFY = "verify"
VERIFY_MD = "verify.md"  # one verdict per rerun arm


def default_storage_url(study_dir: Path) -> str:
    """The storage of a study whose sweep names none: a SQLite file in the study directory."""
    return f"sqlite:///{(Path(study_dir) / STUDY_DB).resolve()}"


# ------------------------------------------------------------------------- Optuna user attributes
# What the sweep records in the study's storage (study.user_attrs / trial.user_attrs) and the console
# and the reports read back: the key names, spelled here only.
STUDY_WORK_ENQUEUED = "work_enqueued"  # trials its creator enqueued; set last: other workers wait for it
STUDY_GRID_ENQUEUED = "grid_enqueued"  # set by studies from before work_enqueued existed
TRIAL_CONFIG_ID = "config_id"  # the configuration: grid index (or first trial number); retries keep it
# A grid's unit of work is one (configuration, seed): the seed its trial trains. A trial without it
# (random/TPE, whose sampler needs one value per configuration; studies from before) trains every seed.
TRIAL_UNIT_SEED = "unit_seed"
TRIAL_LABEL = "label"  # the configuration in short: "top_k=2", "arm=coef_0"
TRIAL_ATTEMPT = "attempt"  # 0 for a unit's first trial, n for its n-th retry
TRIAL_WORKER = "worker"  # host:pid of the worker that ran it
TRIAL_ERROR = "error"  # why it failed, one line (None while it has not)
# The signal that stopped its worker (e.g. "SIGTERM"): the trial went back to WAITING, its run's last.ckpt saved,
# and the next worker resumes it as the same attempt; None once a worker has claimed it again.
TRIAL_INTERRUPTED = "interrupted"
TRIAL_EXPERT_HIDDEN = "expert_hidden"  # the expert width compute matching chose
TRIAL_RUN_DIRS = "run_dirs"  # its run directories (one per seed), relative to the study directory
TRIAL_SEEDS = "seeds"  # the seeds those runs trained
TRIAL_OBJECTIVE_VALUES = "objective_values"  # the objective metric of each run
TRIAL_OBJECTIVE_MEAN = "objective_mean"  # their mean over finite values (the trial's value)
TRIAL_OBJECTIVE_STD = "objective_std"
TRIAL_DURATION_S = "duration_s"  # wall time of the whole trial
# A sampled trial whose parameters equal a completed trial's: that trial's number (it trained nothing).
TRIAL_DUPLICATE_OF = "duplicate_of"
# Also trial attributes, under their RunMetrics field names: these of the first run, and every table
# metric of the vocabulary (moe_lab.artifacts.metrics) with the runs combined as the metric says (mean,
# sum or median); prune_reason is the first run's that has one.
TRIAL_FIRST_RUN_METRICS = ("active_params", "total_params")
# Studies written before the vocabulary stored the collapse count under this name.
LEGACY_TRIAL_METRICS = {"collapse_events_count": "collapse_events"}
TRIAL_PRUNE_REASON = "prune_reason"


def trial_metric(attrs: dict, name: str):
    """A table metric a trial recorded (see TRIAL_FIRST_RUN_METRICS), or None."""
    if name in attrs:
        return attrs[name]
    return attrs.get(LEGACY_TRIAL_METRICS.get(name, name))


def trial_unit(trial) -> tuple[int, int | None]:
    """A trial's unit of work (an Optuna Trial or FrozenTrial): (config id, seed), or (config id, None) for a
    trial that trains every seed. A retry copies the user attributes of the trial it retries, so it has
    the same unit (and resumes its run directories); a trial without a config id is its own configuration."""
    return int(trial.user_attrs.get(TRIAL_CONFIG_ID, trial.number)), trial.user_attrs.get(TRIAL_UNIT_SEED)
