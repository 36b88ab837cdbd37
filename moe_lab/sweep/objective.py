"""A sweep trial's work: train its configuration for its seed (a grid's unit of work is one
(configuration, seed), so workers share a configuration's seeds) or, for a sampled configuration, once
per seed; each run in its own run directory. The outcome goes on the trial (user attributes, named in
moe_lab.artifacts.study_dir); the reports average a configuration's seeds over its trials.

A retry (the same unit after its worker died) trains in new run directories (seed0.retry1, ...),
reuses seeds an earlier attempt finished, and continues a seed from the newest checkpoint an earlier
attempt left in this output_dir. A sampled trial whose parameters a completed trial already drew (TPE
proposes a finished point again) trains nothing: it reports that trial's result, marked `duplicate_of`."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import statistics
import time
from pathlib import Path

import optuna

from moe_lab.artifacts.metrics import metrics_where
from moe_lab.artifacts.run_dir import CHECKPOINTS, FINISHED_STATUSES, LAST_CKPT, METRIC_CURVES, METRICS
from moe_lab.artifacts.run_index import run_key
from moe_lab.artifacts.study_dir import (
    TRIAL_ATTEMPT,
    TRIAL_CONFIG_ID,
    TRIAL_DUPLICATE_OF,
    TRIAL_DURATION_S,
    TRIAL_ERROR,
    TRIAL_EXPERT_HIDDEN,
    TRIAL_FIRST_RUN_METRICS,
    TRIAL_INTERRUPTED,
    TRIAL_LABEL,
    TRIAL_OBJECTIVE_MEAN,
    TRIAL_OBJECTIVE_STD,
    TRIAL_OBJECTIVE_VALUES,
    TRIAL_PRUNE_REASON,
    TRIAL_RUN_DIRS,
    TRIAL_SEEDS,
    TRIAL_UNIT_SEED,
    TRIAL_WORKER,
    TRIALS,
    trial_unit,
)
from moe_lab.errors import first_line
from moe_lab.redact import redact
from moe_lab.study.labels import trial_label
from moe_lab.sweep.claims import TrialTakenAway, fence, still_mine, worker_name
from moe_lab.sweep.config import Sweep


@dataclasses.dataclass
class SeedResult:
    seed: int
    run_dir: Path
    metrics: dict  # the run's final metrics (RunMetrics fields)


def attempt_of(trial: optuna.Trial) -> int:
    """0 for the first trial of a unit, n for its n-th retry (counted from the study)."""
    unit = trial_unit(trial)
    trials = trial.study.get_trials(deepcopy=False)
    return sum(1 for t in trials if t.number < trial.number and trial_unit(t) == unit)


def pruned_sibling(trial: optuna.Trial) -> str | None:
    """Why another seed of this trial's configuration was pruned, if one was: its other seeds are
    then skipped (a configuration is pruned as a whole, as when one worker trained all its seeds)."""
    config_id, _ = trial_unit(trial)
    for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)):
        if t.number != trial.number and trial_unit(t)[0] == config_id:
            return f"seed {t.user_attrs.get(TRIAL_UNIT_SEED, '?')} was pruned: {t.user_attrs.get(TRIAL_PRUNE_REASON)}"
    return None


# What a duplicate does not take over from the trial it repeats: which trial it is, and where and how that one ran.
NOT_DUPLICATED = (
    TRIAL_CONFIG_ID,
    TRIAL_LABEL,
    TRIAL_ATTEMPT,
    TRIAL_WORKER,
    TRIAL_ERROR,
    TRIAL_INTERRUPTED,
    TRIAL_RUN_DIRS,
    TRIAL_DURATION_S,
)


def completed_twin(trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
    """The first completed trial of the study with this trial's parameters, if there is one."""
    params = trial.params
    for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.number != trial.number and t.params == params:
            return t
    return None


def seed_dir_name(seed: int, attempt: int) -> str:
    return f"seed{seed}" if attempt == 0 else f"seed{seed}.retry{attempt}"


def earlier_attempts(trial_dir: Path, seed: int, attempt: int) -> list[Path]:
    """Run directories of earlier attempts of this seed found in this output_dir, newest first."""
    return [
        trial_dir / seed_dir_name(seed, a)
        for a in range(attempt - 1, -1, -1)
        if (trial_dir / seed_dir_name(seed, a)).is_dir()
    ]


def _finished(run_dir: Path) -> dict | None:
    path = run_dir / METRICS
    if path.is_file():
        metrics = json.loads(path.read_text())
        if metrics.get("status") in FINISHED_STATUSES:
            return metrics
    return None


class Objective:
    def __init__(self, sweep: Sweep, quiet: bool = True):
        self.sweep, self.quiet = sweep, quiet

    def run_seed(
        self, trial: optuna.Trial, params: dict, trial_dir: Path, seed: int, report: bool, attempt: int = 0
    ) -> SeedResult:
        """Train one seed in this attempt's own run directory. A seed an earlier attempt finished is
        reused as it is; otherwise training continues from the newest checkpoint an earlier attempt
        left (copied, so the earlier directory is never written again)."""
        from moe_lab.callbacks.fence import Fence  # Lightning: only in processes that train
        from moe_lab.callbacks.pruning import ValidationPruning
        from moe_lab.training.results import write_metrics
        from moe_lab.training.run import run
        from moe_lab.training.tb_hparams import as_categories

        version = seed_dir_name(seed, attempt)
        run_dir = trial_dir / version
        earlier = earlier_attempts(trial_dir, seed, attempt)
        for previous in [run_dir, *earlier]:
            if (metrics := _finished(previous)) is not None:
                return SeedResult(seed, previous, metrics)
        placement = self.sweep.placement(trial_dir, seed, version)
        cfg, _ = self.sweep.experiment(params, placement)
        index = self.sweep.run_index()
        key = run_key(cfg) if index is not None else None
        if index is not None and (source := index.find(key)) is not None:
            return SeedResult(seed, run_dir, index.reuse(source, run_dir, key))
        if self._continue_from_checkpoint(run_dir, earlier):
            placement["trainer"] = {"resume": "auto"}
            cfg, _ = self.sweep.experiment(params, placement)
        monitor = METRIC_CURVES[self.sweep.cfg.objective.metric]
        pruning = ValidationPruning(trial, monitor) if report and monitor and self.sweep.cfg.pruner != "none" else None
        callbacks = [Fence(lambda: fence(trial), self.sweep.cfg.heartbeat_interval)] + ([pruning] if pruning else [])
        session = (as_categories(params), trial_label(params))
        result = run(cfg, extra_callbacks=tuple(callbacks), quiet=self.quiet, session=session)
        fence(trial)  # results of a trial taken away are not reported
        record = result.record
        if pruning is not None and pruning.pruned_at is not None:
            record = dataclasses.replace(
                record,
                status="pruned",
                prune_reason=f"pruned by the {self.sweep.cfg.pruner} pruner at step {pruning.pruned_at}",
            )
            write_metrics(run_dir, record)
        if index is not None and record.status == "completed":
            index.record(key, run_dir)
        return SeedResult(seed, run_dir, dataclasses.asdict(record))

    def __call__(self, trial: optuna.Trial) -> float:
        params = dict(trial.params)
        config_id, _ = trial_unit(trial)  # grid trials carry their grid index; other trials their own number
        label = trial.user_attrs.get(TRIAL_LABEL) or trial_label(params)
        trial_dir = self.sweep.study_dir / TRIALS / f"t{config_id:03d}-{label}"
        attempt = attempt_of(trial)
        trial.set_user_attr(TRIAL_CONFIG_ID, config_id)
        trial.set_user_attr(TRIAL_LABEL, label)
        trial.set_user_attr(TRIAL_ATTEMPT, attempt)
        trial.set_user_attr(TRIAL_WORKER, worker_name())
        trial.set_user_attr(TRIAL_ERROR, None)  # a retry inherits the attributes of the attempt it retries
        trial.set_user_attr(TRIAL_INTERRUPTED, None)  # claimed again after a stop signal: no longer waiting
        start = time.time()
        _, matched = self.sweep.experiment(params)  # the configuration the checks validated already
        if matched is not None:
            trial.set_user_attr(TRIAL_EXPERT_HIDDEN, matched.expert_hidden)
        unit_seed = trial.user_attrs.get(TRIAL_UNIT_SEED)
        seeds = list(self.sweep.cfg.seeds) if unit_seed is None else [unit_seed]
        # A sampled configuration trains every seed: one a completed trial drew already has its result.
        if unit_seed is None and (twin := completed_twin(trial)) is not None:
            for key, value in twin.user_attrs.items():
                if key not in NOT_DUPLICATED:
                    trial.set_user_attr(key, value)
            trial.set_user_attr(TRIAL_DUPLICATE_OF, twin.number)
            trial.set_user_attr(TRIAL_DURATION_S, time.time() - start)
            return twin.value
        if unit_seed is not None and (reason := pruned_sibling(trial)) is not None:
            self.record(trial, trial_dir, [], start)
            trial.set_user_attr(TRIAL_PRUNE_REASON, f"not trained: {reason}")
            raise optuna.TrialPruned(f"not trained: {reason}")
        results: list[SeedResult] = []
        try:
            for seed in seeds:
                # The pruner sees one curve per configuration, its first seed's, as it compares like with like.
                report = seed == self.sweep.cfg.seeds[0]
                results.append(self.run_seed(trial, params, trial_dir, seed, report=report, attempt=attempt))
                if results[-1].metrics.get("status") == "pruned":
                    break
        except TrialTakenAway:
            raise
        except Exception as err:
            # The seed that failed has a run directory too: record it, so the failure can be read.
            failing = trial_dir / seed_dir_name(seeds[len(results)], attempt)
            if still_mine(trial):
                self.record(
                    trial,
                    trial_dir,
                    results,
                    start,
                    error=one_line(err),
                    failed_dir=failing if failing.is_dir() else None,
                )
            raise
        fence(trial)
        value = self.record(trial, trial_dir, results, start)
        pruned = [r.metrics["prune_reason"] for r in results if r.metrics.get("status") == "pruned"]
        if pruned:
            raise optuna.TrialPruned(pruned[0])
        return value

    def record(
        self,
        trial,
        trial_dir: Path,
        results: list[SeedResult],
        start: float,
        error: str | None = None,
        failed_dir: Path | None = None,
    ):
        metric = self.sweep.cfg.objective.metric
        values = [r.metrics.get(metric) for r in results]
        finite = [v for v in values if v is not None and math.isfinite(v)]
        mean = statistics.fmean(finite) if finite else float("nan")
        first = results[0].metrics if results else {}
        run_dirs = [r.run_dir for r in results] + ([failed_dir] if failed_dir is not None else [])
        attrs = {
            TRIAL_RUN_DIRS: [str(d.relative_to(self.sweep.study_dir)) for d in run_dirs],
            TRIAL_SEEDS: [r.seed for r in results],
            TRIAL_OBJECTIVE_VALUES: values,
            TRIAL_OBJECTIVE_MEAN: mean,
            TRIAL_OBJECTIVE_STD: statistics.stdev(finite) if len(finite) > 1 else 0.0,
            **{name: first.get(name) for name in TRIAL_FIRST_RUN_METRICS},
            **{m.name: m.combine(r.metrics.get(m.name) for r in results) for m in metrics_where("table")},
            TRIAL_PRUNE_REASON: next(
                (r.metrics.get("prune_reason") for r in results if r.metrics.get("prune_reason")), None
            ),
            TRIAL_ERROR: error,
            TRIAL_DURATION_S: time.time() - start,
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return mean

    @staticmethod
    def _continue_from_checkpoint(run_dir: Path, earlier: list[Path]) -> bool:
        """Put the newest last.ckpt of this or an earlier attempt in place for this run to resume from;
        False when there is none."""
        ckpt = next(
            (d / CHECKPOINTS / LAST_CKPT for d in [run_dir, *earlier] if (d / CHECKPOINTS / LAST_CKPT).is_file()), None
        )
        if ckpt is None:
            return False
        target = run_dir / CHECKPOINTS / LAST_CKPT
        if ckpt != target:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ckpt, target.with_suffix(".tmp"))
            target.with_suffix(".tmp").replace(target)
        return True


def one_line(err: BaseException) -> str:
    """How a failure is recorded in the study (credentials masked: the storage is shared)."""
    return f"{type(err).__name__}: {redact(first_line(err))}" if str(err).strip() else type(err).__name__
