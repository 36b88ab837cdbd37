"""A sweep study read back for its report: the settings the runner recorded (STUDY_INFO), the Optuna
study, and one row per configuration, best first.

A configuration is a `config_id`; a grid trains it as one trial per seed (the unit of work, its seed
in `unit_seed`), a sampled configuration as one trial for all seeds. A trial retried after its worker
died shares the unit of the trial it retries. The report takes the latest trial of each unit (counting
the others as retries) and merges a configuration's units into one row: its seeds' values and mean.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from moe_lab.artifacts.metrics import metrics_where
from moe_lab.artifacts.study_dir import (
    STUDY_INFO,
    TRIAL_CONFIG_ID,
    TRIAL_DURATION_S,
    TRIAL_ERROR,
    TRIAL_EXPERT_HIDDEN,
    TRIAL_LABEL,
    TRIAL_OBJECTIVE_MEAN,
    TRIAL_OBJECTIVE_STD,
    TRIAL_OBJECTIVE_VALUES,
    TRIAL_PRUNE_REASON,
    TRIAL_RUN_DIRS,
    TRIAL_SEEDS,
    trial_metric,
    trial_unit,
)
from moe_lab.report.common import ReportError, is_finite, read_json_object, run_metrics
from moe_lab.study.finished import seeds_finished_by
from moe_lab.study.labels import trial_label
from moe_lab.study.storage import load_stored_study

TABLE_METRICS = metrics_where("table")
# Non-complete configurations go below the complete ones, in this order.
STATE_ORDER = ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL")
# A configuration of several units takes the state of its least finished one, in this order: one
# failed seed fails it, one still training keeps it running, one pruned seed prunes it.
UNIT_STATE_PRECEDENCE = ("FAIL", "RUNNING", "WAITING", "PRUNED", "COMPLETE")


@dataclass
class StudyInfo:
    study_name: str
    storage_url: str = ""
    objective_metric: str = "objective"
    direction: str = ""  # "" = the Optuna study's own direction
    sampler: str = "?"
    seeds: list[int] = field(default_factory=list)
    compute_matching: str = "none"
    base: str = ""


@dataclass
class ConfigRow:
    """One configuration: the latest trial of its config_id, flattened from the trial's user attrs."""

    trial: int
    config_id: int | None
    state: str
    label: str
    params: dict[str, Any]
    objective_mean: float | None
    objective_std: float | None
    objective_values: list[float | None]
    seeds: list[int]
    run_dirs: list[str]
    duration_s: float | None
    active_params: int | None
    total_params: int | None
    expert_hidden: int | None
    # The vocabulary's table metrics (moe_lab.artifacts.metrics), its seeds combined as each metric says;
    # machine figures are medians over the runs' own metrics files where those can be read.
    metrics: dict[str, float | None]
    prune_reason: str | None
    error: str | None
    retries: int = 0
    run_time_s: float | None = None  # median wall time of one run (seed)
    finished_seeds: list[int] = field(default_factory=list)  # seeds whose trial completed or was pruned

    @property
    def n_seeds(self) -> int:
        """Seeds that produced a finite objective value (those the mean is over)."""
        if self.objective_values:
            return sum(is_finite(v) for v in self.objective_values)
        return int(is_finite(self.objective_mean))


@dataclass
class StudyData:
    study_dir: Path
    info: StudyInfo
    study: optuna.Study
    rows: list[ConfigRow]  # best first
    param_keys: list[str]
    trial_states: Counter  # state name -> number of Optuna trials (retries included)


def load_study_info(study_dir: Path) -> StudyInfo:
    path = Path(study_dir) / STUDY_INFO
    if not Path(study_dir).is_dir():
        raise ReportError(f"{study_dir}: no such directory")
    if not path.is_file():
        raise ReportError(f"{study_dir}: no {STUDY_INFO}; expected a sweep study directory")
    raw = read_json_object(path)
    if not isinstance(raw.get("study_name"), str):
        raise ReportError(f"{path}: expected an object with a 'study_name' string")
    known = {k: v for k, v in raw.items() if k in StudyInfo.__dataclass_fields__ and v is not None}
    return StudyInfo(**known)


def load_study_data(study_dir: str | Path, storage_url: str = "") -> StudyData:
    """The study, its rows and settings. `storage_url` overrides the URL the study recorded, which has no
    password (a sweep reporting on itself passes the URL it ran with)."""
    study_dir = Path(study_dir)
    info = load_study_info(study_dir)
    study = load_stored_study(study_dir, info.study_name, storage_url or info.storage_url)
    trials = study.get_trials(deepcopy=False)
    if not info.direction:
        info.direction = study.direction.name.lower()
    param_keys = list(dict.fromkeys(key for t in trials for key in t.params))
    rows = config_rows(trials, info.direction)
    for row in rows:
        _per_run_medians(study_dir, row)
    return StudyData(
        study_dir=study_dir,
        info=info,
        study=study,
        rows=rows,
        param_keys=param_keys,
        trial_states=Counter(t.state.name for t in trials),
    )


def _per_run_medians(study_dir: Path, row: ConfigRow) -> None:
    """The machine's figures (throughput) and the time per run (seed), medians over the configuration's
    runs, from their final metrics. A trial's own duration counts its seeds one after another and the
    time it waited for a core; one run's figures do not. Without metrics files the trial's recorded
    values stay."""
    runs = [run_metrics(study_dir / run_dir) for run_dir in row.run_dirs]
    for metric in TABLE_METRICS:
        values = [m[metric.name] for m in runs if is_finite(m.get(metric.name))]
        if metric.machine and values:
            row.metrics[metric.name] = statistics.median(values)
    times = [m["wall_time_s"] for m in runs if is_finite(m.get("wall_time_s"))]
    if times:
        row.run_time_s = statistics.median(times)


def config_rows(trials: list[FrozenTrial], direction: str) -> list[ConfigRow]:
    """One row per config_id, merged from the latest trial of each of its units (earlier ones counted
    as retries), best first."""
    units: dict[tuple, list[FrozenTrial]] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        units.setdefault(trial_unit(trial), []).append(trial)
    configs: dict[int, list[ConfigRow]] = {}
    for (config_id, _), group in units.items():
        configs.setdefault(config_id, []).append(_row(group[-1], retries=len(group) - 1))
    rows = [merge_units(unit_rows) for unit_rows in configs.values()]
    return sort_rows(rows, direction)


def merge_units(units: list[ConfigRow]) -> ConfigRow:
    """One configuration's row from the rows of its units (seeds): their runs in seed order, the mean
    and std over their finite values, the state of the least finished unit."""
    if len(units) == 1:
        return units[0]
    units = sorted(units, key=lambda u: (u.seeds or [0])[0])
    runs = [(seed, value, run_dir) for u in units for seed, value, run_dir in _runs(u)]
    finite = [v for _, v, _ in runs if is_finite(v)]
    state = min((u.state for u in units), key=_precedence)
    first = min(units, key=lambda u: u.trial)
    return ConfigRow(
        trial=first.trial,
        config_id=first.config_id,
        state=state,
        label=first.label,
        params=first.params,
        objective_mean=statistics.fmean(finite) if finite else None,
        objective_std=statistics.stdev(finite) if len(finite) > 1 else (0.0 if finite else None),
        objective_values=[v for _, v, _ in runs],
        seeds=[seed for seed, _, _ in runs],
        run_dirs=[d for u in units for d in u.run_dirs],
        duration_s=_sum(u.duration_s for u in units),
        active_params=_first(u.active_params for u in units),
        total_params=_first(u.total_params for u in units),
        expert_hidden=_first(u.expert_hidden for u in units),
        metrics={m.name: m.combine(u.metrics.get(m.name) for u in units) for m in TABLE_METRICS},
        prune_reason=_first(u.prune_reason for u in units),
        error=_first(u.error for u in units),
        retries=sum(u.retries for u in units),
        finished_seeds=sorted(s for u in units for s in u.finished_seeds),
    )


def _runs(unit: ConfigRow) -> list[tuple]:
    """(seed, objective value, run dir) of each run a unit trained (a failed run has a dir, no value)."""
    return list(zip(unit.seeds, unit.objective_values, unit.run_dirs, strict=False))


def _precedence(state: str) -> int:
    return UNIT_STATE_PRECEDENCE.index(state) if state in UNIT_STATE_PRECEDENCE else 0


def _first(values):
    return next((v for v in values if v is not None), None)


def _sum(values):
    values = [v for v in values if v is not None]
    return sum(values) if values else None


def _row(trial: FrozenTrial, retries: int) -> ConfigRow:
    attrs = trial.user_attrs
    mean = attrs.get(TRIAL_OBJECTIVE_MEAN)
    if mean is None and trial.state == TrialState.COMPLETE:
        mean = trial.value
    duration = attrs.get(TRIAL_DURATION_S)
    if duration is None and trial.duration is not None:
        duration = trial.duration.total_seconds()
    return ConfigRow(
        trial=trial.number,
        config_id=attrs.get(TRIAL_CONFIG_ID),
        state=trial.state.name,
        label=attrs.get(TRIAL_LABEL) or trial_label(trial.params),
        params=dict(trial.params),
        objective_mean=mean,
        objective_std=attrs.get(TRIAL_OBJECTIVE_STD),
        objective_values=list(attrs.get(TRIAL_OBJECTIVE_VALUES) or []),
        seeds=list(attrs.get(TRIAL_SEEDS) or []),
        run_dirs=list(attrs.get(TRIAL_RUN_DIRS) or []),
        duration_s=duration,
        active_params=attrs.get("active_params"),
        total_params=attrs.get("total_params"),
        expert_hidden=attrs.get(TRIAL_EXPERT_HIDDEN),
        metrics={m.name: trial_metric(attrs, m.name) for m in TABLE_METRICS},
        prune_reason=attrs.get(TRIAL_PRUNE_REASON),
        error=attrs.get(TRIAL_ERROR),
        retries=retries,
        finished_seeds=seeds_finished_by(trial),
    )


def sort_rows(rows: list[ConfigRow], direction: str) -> list[ConfigRow]:
    """Complete configurations by objective (best first; a NaN or missing objective last among them),
    then the others by state (STATE_ORDER) and trial number."""
    sign = -1.0 if direction == "maximize" else 1.0

    def key(row: ConfigRow) -> tuple:
        rank = STATE_ORDER.index(row.state) if row.state in STATE_ORDER else len(STATE_ORDER)
        if row.state == "COMPLETE" and is_finite(row.objective_mean):
            return rank, 0, sign * row.objective_mean, row.trial
        return rank, 1, 0.0, row.trial

    return sorted(rows, key=key)


def best_row(rows: list[ConfigRow]) -> ConfigRow | None:
    """The first complete row with a finite objective (rows come sorted, best first)."""
    return next((r for r in rows if r.state == "COMPLETE" and is_finite(r.objective_mean)), None)
