"""Running a sweep: the Optuna study, workers claiming trials, and the objective (train each seed).

Trials are claimed under a file lock beside the study, so any number of worker processes on a machine
share a study without running a configuration twice: a grid is enqueued once, up front, and each
worker pops one waiting trial at a time. A worker killed mid-trial leaves its trial RUNNING; the
RDB heartbeat marks it failed after `grace_period`, Optuna re-enqueues it with the same parameters,
and the retry resumes each seed's run from its last checkpoint (finished seeds are not rerun).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
from filelock import FileLock
from omegaconf import OmegaConf
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from moe_lab.config import load_config
from moe_lab.errors import MoELabError
from moe_lab.records import write_json_atomic, write_text_atomic
from moe_lab.sweep.config import OBJECTIVES, Sweep, trial_label
from moe_lab.sweep.matching import match_expert_hidden
from moe_lab.tb_hparams import write_study_layout

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def make_storage(sweep: Sweep):
    url = sweep.storage_url
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    return optuna.storages.RDBStorage(
        url, heartbeat_interval=sweep.cfg.heartbeat_interval, grace_period=sweep.cfg.grace_period,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=sweep.cfg.max_retries),
    )


def make_sampler(sweep: Sweep) -> optuna.samplers.BaseSampler:
    if sweep.cfg.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=sweep.cfg.sampler_seed)
    # Grid trials are all enqueued with fixed parameters; the sampler is never asked for them.
    return optuna.samplers.RandomSampler(seed=sweep.cfg.sampler_seed)


def make_pruner(sweep: Sweep) -> optuna.pruners.BasePruner:
    if sweep.cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=sweep.cfg.pruner_warmup_steps)
    if sweep.cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def distributions(sweep: Sweep) -> dict[str, optuna.distributions.BaseDistribution]:
    out = {}
    for p in sweep.params:
        if p.kind == "categorical":
            out[p.key] = optuna.distributions.CategoricalDistribution(list(p.choices))
        elif p.kind == "int":
            out[p.key] = optuna.distributions.IntDistribution(int(p.low), int(p.high), log=p.log,
                                                              step=int(p.step or 1))
        else:
            out[p.key] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    return out


def retry_failed(study: optuna.Study) -> list[int]:
    """Enqueue again every configuration whose trials all FAILed (e.g. after fixing the cause);
    the retries keep their config ids, so they reuse the same run directories. Returns those ids."""
    by_config: dict[int, list] = {}
    for t in study.get_trials(deepcopy=False):
        by_config.setdefault(t.user_attrs.get("config_id", t.number), []).append(t)
    retried = []
    for config_id, trials in sorted(by_config.items()):
        if all(t.state == TrialState.FAIL for t in trials):
            last = trials[-1]
            study.enqueue_trial(last.params, user_attrs={"config_id": config_id,
                                                         "label": last.user_attrs.get("label", "")},
                                skip_if_exists=False)
            retried.append(config_id)
    return retried


# The keys that define what a study's trials mean; resuming with other values would mix two
# experiments in one table. Budget keys (n_trials, timeout_s) may change between invocations.
IDENTITY_KEYS = ("overrides", "objective", "sampler", "sampler_seed", "seeds", "compute_matching", "space",
                 "arms", "collapse_prunes", "pruner")


def study_identity(sweep: Sweep) -> str:
    values = OmegaConf.to_container(OmegaConf.structured(sweep.cfg))
    described = {k: values.get(k) for k in IDENTITY_KEYS} | {"base": sweep.cfg.base}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_identity(sweep: Sweep) -> None:
    info_path = sweep.study_dir / "study_info.json"
    if not info_path.is_file():
        return
    recorded = json.loads(info_path.read_text()).get("identity")
    if recorded and recorded != study_identity(sweep):
        raise MoELabError(f"name: study {sweep.name!r} in {sweep.study_dir} was run with other settings "
                          f"(space, arms, seeds, overrides, ...); resume it unchanged or pass name=<new name>")


def open_study(sweep: Sweep, retry: bool = False) -> optuna.Study:
    """Create or load the study; on creation write study_info.json and enqueue the grid (once).
    With `retry`, configurations that only ever failed are enqueued again."""
    _check_identity(sweep)  # before anything is written
    sweep.study_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(sweep.study_dir / ".study.lock")):
        study = optuna.create_study(study_name=sweep.name, storage=make_storage(sweep), load_if_exists=True,
                                    sampler=make_sampler(sweep), pruner=make_pruner(sweep),
                                    direction=sweep.cfg.objective.direction)
        if sweep.cfg.sampler == "grid" and not study.user_attrs.get("grid_enqueued"):
            for config_id, params in enumerate(sweep.grid()):
                study.enqueue_trial(params, user_attrs={"config_id": config_id, "label": trial_label(params)})
            study.set_user_attr("grid_enqueued", True)
        if retry:
            retry_failed(study)
        info = {"kind": "ablation" if sweep.arms is not None else "sweep", "study_name": sweep.name, "storage_url": sweep.storage_url,
                "objective_metric": sweep.cfg.objective.metric, "direction": sweep.cfg.objective.direction,
                "sampler": sweep.cfg.sampler, "seeds": list(sweep.cfg.seeds),
                "compute_matching": sweep.cfg.compute_matching, "base": str(sweep.base_path),
                "identity": study_identity(sweep)}
        write_json_atomic(sweep.study_dir / "study_info.json", info)
        write_text_atomic(sweep.study_dir / "sweep.yaml", OmegaConf.to_yaml(OmegaConf.structured(sweep.cfg)))
        write_study_layout(sweep.study_dir, {p.key: list(p.choices) or [p.low] for p in sweep.params},
                           sweep.cfg.objective.metric)
    return study


def claim_trial(study: optuna.Study, sweep: Sweep, deadline: float | None) -> optuna.Trial | None:
    """The next trial for this worker, or None when the sweep has nothing left to run."""
    with FileLock(str(sweep.study_dir / ".claim.lock")):
        optuna.storages.fail_stale_trials(study)  # dead workers' trials -> FAIL, retry enqueued (RDB)
        if deadline is not None and time.time() > deadline:
            return None
        trials = study.get_trials(deepcopy=False)
        if not any(t.state == TrialState.WAITING for t in trials):
            if sweep.cfg.sampler == "grid":
                return None
            claimed = {t.user_attrs.get("config_id", t.number) for t in trials}
            if len(claimed) >= sweep.n_trials():
                return None
        return study.ask(distributions(sweep))  # pops a waiting trial first, atomically under the lock


class ValidationPruning(pl.Callback):
    """Reports the validation metric to Optuna at each validation (by global step, not epoch, which
    is what an LM run has) and stops the run when the pruner says so."""

    def __init__(self, trial: optuna.Trial, monitor: str):
        self.trial, self.monitor = trial, monitor
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer, pl_module):
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or trainer.sanity_checking:
            return
        step = trainer.global_step
        self.trial.report(float(value), step)
        if self.trial.should_prune():
            self.pruned_at = step
            trainer.should_stop = True


@dataclass
class SeedResult:
    seed: int
    run_dir: Path
    metrics: dict


def config_id_of(trial: optuna.Trial) -> int:
    """Grid trials carry their grid index; other trials their own number. A retry copies the user
    attributes of the trial it retries, so it keeps the config id and resumes the same run directories."""
    return int(trial.user_attrs.get("config_id", trial.number))


def heartbeat(study: optuna.Study, trial: optuna.Trial):
    """Optuna's own heartbeat thread, as `study.optimize` runs it (we claim trials ourselves, under a
    lock, so we start it ourselves): it is what lets another worker detect that this one died."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(trial._trial_id, study._storage)


class Objective:
    def __init__(self, sweep: Sweep, quiet: bool = True):
        self.sweep, self.quiet = sweep, quiet
        self.base = load_config(sweep.base_path, list(sweep.cfg.overrides))

    def experiment(self, params: dict[str, Any], trial_dir: Path, seed: int):
        overrides = self.sweep.experiment_overrides(params) + [
            f"seed={seed}", f"output_dir={trial_dir.parent}", f"name={trial_dir.name}", f"version=seed{seed}",
            "trainer.progress_bar=false"]
        if self.sweep.cfg.collapse_prunes:
            overrides.append("monitor.collapse_action=prune")
        cfg = load_config(self.sweep.base_path, overrides)
        matched = None
        if self.sweep.cfg.compute_matching != "none":
            matched = match_expert_hidden(self.base.model, cfg.model, self.sweep.cfg.compute_matching)
            if matched is not None:
                cfg.model.moe.expert_hidden = matched.expert_hidden
        return cfg, matched

    def run_seed(self, trial: optuna.Trial, params: dict, trial_dir: Path, seed: int, report: bool) -> SeedResult:
        from moe_lab.train import run  # heavy import, only in processes that train

        cfg, _ = self.experiment(params, trial_dir, seed)
        run_dir = trial_dir / f"seed{seed}"
        metrics_path = run_dir / "metrics.json"
        if metrics_path.is_file():  # a retry: this seed already finished
            metrics = json.loads(metrics_path.read_text())
            if metrics.get("status") in ("completed", "pruned"):
                return SeedResult(seed, run_dir, metrics)
        if (run_dir / "checkpoints" / "last.ckpt").is_file():
            cfg.trainer.resume = "auto"
        monitor = OBJECTIVES[self.sweep.cfg.objective.metric]
        pruning = ValidationPruning(trial, monitor) if report and monitor and self.sweep.cfg.pruner != "none" else None
        result = run(cfg, extra_callbacks=(pruning,) if pruning else (), quiet=self.quiet,
                     session=(params, trial_label(params)))
        metrics = dict(result.metrics)
        if pruning is not None and pruning.pruned_at is not None:
            metrics["prune_reason"] = f"pruned by the {self.sweep.cfg.pruner} pruner at step {pruning.pruned_at}"
            metrics["status"] = "pruned"
            write_json_atomic(metrics_path, metrics)
        return SeedResult(seed, run_dir, metrics)

    def __call__(self, trial: optuna.Trial) -> float:
        params = dict(trial.params)
        config_id = config_id_of(trial)
        label = trial.user_attrs.get("label") or trial_label(params)
        trial_dir = self.sweep.study_dir / "trials" / f"t{config_id:03d}-{label}"
        trial.set_user_attr("config_id", config_id)
        trial.set_user_attr("label", label)
        start = time.time()
        _, matched = self.experiment(params, trial_dir, self.sweep.cfg.seeds[0])
        if matched is not None:
            trial.set_user_attr("expert_hidden", matched.expert_hidden)
        results: list[SeedResult] = []
        try:
            for i, seed in enumerate(self.sweep.cfg.seeds):
                results.append(self.run_seed(trial, params, trial_dir, seed, report=i == 0))
                if results[-1].metrics.get("status") == "pruned":
                    break
        except (MoELabError, FloatingPointError) as err:
            self.record(trial, trial_dir, results, start, error=str(err))
            raise
        value = self.record(trial, trial_dir, results, start)
        pruned = [r.metrics["prune_reason"] for r in results if r.metrics.get("status") == "pruned"]
        if pruned:
            raise optuna.TrialPruned(pruned[0])
        return value

    def record(self, trial, trial_dir: Path, results: list[SeedResult], start: float, error: str | None = None):
        metric = self.sweep.cfg.objective.metric
        values = [r.metrics.get(metric) for r in results]
        finite = [v for v in values if v is not None and math.isfinite(v)]
        mean = statistics.fmean(finite) if finite else float("nan")
        first = results[0].metrics if results else {}
        attrs = {
            "run_dirs": [str(r.run_dir.relative_to(self.sweep.study_dir)) for r in results],
            "seeds": [r.seed for r in results],
            "objective_values": values,
            "objective_mean": mean,
            "objective_std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
            "active_params": first.get("active_params"),
            "total_params": first.get("total_params"),
            "tokens_per_s": _mean(r.metrics.get("tokens_per_s") for r in results),
            "final_load_cv": _mean(r.metrics.get("final_load_cv") for r in results),
            "collapse_events": sum(r.metrics.get("collapse_events_count") or 0 for r in results),
            "prune_reason": next((r.metrics.get("prune_reason") for r in results if r.metrics.get("prune_reason")), None),
            "error": error,
            "duration_s": time.time() - start,
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return mean


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def run_worker(sweep: Sweep, quiet: bool = True, log=print, retry: bool = False) -> int:
    """Claim and run trials until the sweep is done (or the time budget is spent). Returns how many
    trials this worker ran. `retry`: first enqueue again the configurations that only failed."""
    study = open_study(sweep, retry=retry)
    objective = Objective(sweep, quiet=quiet)
    deadline = time.time() + sweep.cfg.timeout_s if sweep.cfg.timeout_s else None
    ran = 0
    while (trial := claim_trial(study, sweep, deadline)) is not None:
        log(f"trial {trial.number}: {trial_label(dict(trial.params))}")
        with heartbeat(study, trial):
            try:
                value = objective(trial)
                state, note = TrialState.COMPLETE, f"{sweep.cfg.objective.metric} = {value:.4f}"
            except optuna.TrialPruned as pruned:
                state, note, value = TrialState.PRUNED, f"pruned: {pruned}", None
            except Exception as err:  # recorded as FAIL with its reason; the sweep goes on
                state, value = TrialState.FAIL, None
                note = f"failed: {type(err).__name__}: {err}".splitlines()[0]
                trial.set_user_attr("error", note.removeprefix("failed: "))
        study.tell(trial, value, state=state)
        log(f"trial {trial.number} {note}")
        ran += 1
    return ran
