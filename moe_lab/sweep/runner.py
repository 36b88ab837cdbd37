"""Running a sweep: the Optuna study, workers claiming trials, and the objective (train each seed).

The unit of work is one WAITING trial in the storage: the worker that creates the study enqueues
every grid point (or, for random/TPE, `n_trials` empty slots the sampler fills when one is claimed),
and workers pop them with the storage's own atomic state change (only one worker wins the
WAITING -> RUNNING update). So workers share nothing but the storage URL: processes on one host or on
many (PostgreSQL), each with its own output_dir. A trial trains all seeds of its configuration.

A worker killed mid-trial leaves its trial RUNNING; when its heartbeat is older than `grace_period`,
any worker marks it FAIL and Optuna enqueues a retry with the same parameters. Each attempt writes
its own run directories (seed0, seed0.retry1, ...), so two attempts never write one directory; a
retry starts from the newest checkpoint an earlier attempt left in this output_dir (same host or a
shared filesystem), otherwise from scratch, and reuses seeds an earlier attempt finished. A worker
whose trial was taken away (its heartbeat went stale while it was paused or starved) finds out at
the next validation, checkpoint or result, and drops the trial without writing to it again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import statistics
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
from filelock import FileLock
from omegaconf import OmegaConf
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

from moe_lab.config import load_config
from moe_lab.errors import MoELabError
from moe_lab.artifacts.atomic import write_json_atomic, write_text_atomic
from moe_lab.artifacts.run_dir import METRICS
from moe_lab.artifacts.study_dir import STUDY_INFO, SWEEP_COPY, TRIALS
from moe_lab.sweep.config import OBJECTIVES, Sweep, trial_label
from moe_lab.sweep.matching import match_expert_hidden
from moe_lab.sweep.storage import masked_url, open_storage, recorded_url
from moe_lab.tb_hparams import write_study_layout

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def make_storage(sweep: Sweep):
    """The study's storage, checked (MoELabError naming it otherwise) before anything is written;
    only the default SQLite file needs the study directory to exist first."""
    if not sweep.cfg.storage:
        sweep.study_dir.mkdir(parents=True, exist_ok=True)
    return open_storage(sweep.storage_url, sweep.cfg.heartbeat_interval, sweep.cfg.grace_period,
                        sweep.cfg.max_retries)


def make_sampler(sweep: Sweep, trial_number: int | None = None) -> optuna.samplers.BaseSampler:
    """With `trial_number`, the sampler for that trial: seeded by (sampler_seed, trial number), so
    workers that each hold a sampler seeded alike do not draw the same parameters, and a study's
    draws do not depend on which worker took which trial."""
    seed = sweep.cfg.sampler_seed if trial_number is None else hash((sweep.cfg.sampler_seed, trial_number)) % 2**31
    if sweep.cfg.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    # Grid trials are all enqueued with fixed parameters; the sampler is never asked for them.
    return optuna.samplers.RandomSampler(seed=seed)


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
    info_path = sweep.study_dir / STUDY_INFO
    if not info_path.is_file():
        return
    recorded = json.loads(info_path.read_text()).get("identity")
    if recorded and recorded != study_identity(sweep):
        raise MoELabError(f"name: study {sweep.name!r} in {sweep.study_dir} was run with other settings "
                          f"(space, arms, seeds, overrides, ...); resume it unchanged or pass name=<new name>")


# How long a worker that found the study already created waits for its creator to enqueue the work.
ENQUEUE_WAIT_S = 120


def _create_or_load(sweep: Sweep, storage) -> tuple[optuna.Study, bool]:
    """(study, whether this process created it). Creating a study name is atomic in every storage,
    so exactly one of several workers starting together on an empty study is its creator."""
    kwargs = dict(study_name=sweep.name, storage=storage, sampler=make_sampler(sweep), pruner=make_pruner(sweep))
    try:
        return optuna.create_study(direction=sweep.cfg.objective.direction, **kwargs), True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(**kwargs), False


def _enqueue_work(study: optuna.Study, sweep: Sweep) -> None:
    """The creator's job: one WAITING trial per grid point, or per random/TPE trial (empty fixed
    parameters, so the sampler chooses them when the trial is claimed). `work_enqueued` is set last:
    the other workers wait for it."""
    if sweep.cfg.sampler == "grid":
        for config_id, params in enumerate(sweep.grid()):
            study.enqueue_trial(params, user_attrs={"config_id": config_id, "label": trial_label(params)})
        study.set_user_attr("grid_enqueued", True)
        study.set_user_attr("work_enqueued", len(sweep.grid()))
    else:
        _top_up_slots(study, sweep, have=0)


def _top_up_slots(study: optuna.Study, sweep: Sweep, have: int) -> None:
    for config_id in range(have, sweep.n_trials()):
        study.enqueue_trial({}, user_attrs={"config_id": config_id})
    study.set_user_attr("work_enqueued", max(have, sweep.n_trials()))


def _wait_for_creator(study: optuna.Study, sweep: Sweep) -> None:
    deadline = time.time() + ENQUEUE_WAIT_S
    while not ("work_enqueued" in study.user_attrs or study.user_attrs.get("grid_enqueued")):
        if time.time() > deadline:
            raise MoELabError(f"name: study {sweep.name!r} in {masked_url(sweep.storage_url)} exists but its "
                              f"trials were never enqueued (its creator stopped?); pass name=<new name>")
        time.sleep(1)


def open_study(sweep: Sweep, retry: bool = False) -> optuna.Study:
    """Create or load the study; its creator enqueues the work, other workers wait for that.
    With `retry`, configurations that only ever failed are enqueued again."""
    _check_identity(sweep)  # before anything is written
    storage = make_storage(sweep)  # a storage that cannot work is refused before anything is written
    sweep.study_dir.mkdir(parents=True, exist_ok=True)
    # The lock serialises only what several workers of one host would otherwise race on when they
    # resume (a larger n_trials, --retry-failed); across hosts, the creator alone enqueues.
    with FileLock(str(sweep.study_dir / ".study.lock")):
        study, created = _create_or_load(sweep, storage)
        if created:
            _enqueue_work(study, sweep)
        else:
            _wait_for_creator(study, sweep)
            have = study.user_attrs.get("work_enqueued")
            if sweep.cfg.sampler != "grid" and isinstance(have, int) and have < sweep.n_trials():
                _top_up_slots(study, sweep, have)
        if retry:
            retry_failed(study)
        info = {"kind": "ablation" if sweep.arms is not None else "sweep", "study_name": sweep.name,
                "storage_url": recorded_url(sweep.storage_url),
                "objective_metric": sweep.cfg.objective.metric, "direction": sweep.cfg.objective.direction,
                "sampler": sweep.cfg.sampler, "seeds": list(sweep.cfg.seeds),
                "compute_matching": sweep.cfg.compute_matching, "base": str(sweep.base_path),
                "identity": study_identity(sweep)}
        write_json_atomic(sweep.study_dir / STUDY_INFO, info)
        recorded = OmegaConf.structured(sweep.cfg)
        recorded.storage = recorded_url(sweep.cfg.storage) if sweep.cfg.storage else ""
        write_text_atomic(sweep.study_dir / SWEEP_COPY, OmegaConf.to_yaml(recorded))
        write_study_layout(sweep.study_dir, {p.key: list(p.choices) or [p.low] for p in sweep.params},
                           sweep.cfg.objective.metric)
    return study


def _suggest(trial: optuna.Trial, name: str, dist: optuna.distributions.BaseDistribution) -> None:
    """Study.ask's parameter step through the public API: a fixed (enqueued) value wins, otherwise
    the sampler chooses."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        trial.suggest_categorical(name, dist.choices)
    elif isinstance(dist, optuna.distributions.IntDistribution):
        trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    else:
        trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def _pop_waiting(study: optuna.Study, sweep: Sweep) -> optuna.Trial | None:
    """A WAITING trial of the study made RUNNING by this worker, or None when there is none. The
    storage's state update is the claim: when two workers try the same trial, only one succeeds.
    (Study.ask would create a new trial when the queue is empty; a sweep never wants that.)"""
    storage = study._storage
    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if not storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        # Beat once now: Optuna never counts a RUNNING trial without a heartbeat as stale.
        if is_heartbeat_enabled(storage):
            storage.record_heartbeat(frozen._trial_id)
        study.sampler = make_sampler(sweep, frozen.number)  # samplers keep no state but their RNG
        trial = optuna.Trial(study, frozen._trial_id)
        for name, dist in distributions(sweep).items():
            _suggest(trial, name, dist)
        return trial
    return None


def fail_stale_trials(study: optuna.Study, grace_period: int) -> list[int]:
    """Optuna's fail_stale_trials, plus the reason on each trial it fails (set while the trial is
    still RUNNING: a finished trial takes no attributes). Returns the numbers of the trials this
    worker failed; the storage's state update lets only one worker fail each."""
    storage = study._storage
    if not is_heartbeat_enabled(storage):
        return []
    failed = []
    for trial_id in storage._get_stale_trial_ids(storage.get_study_id_from_name(study.study_name)):
        reason = (f"no heartbeat for over {grace_period} s (worker killed, paused or cut off); "
                  f"failed by worker {worker_name()}, retried as a new trial")
        try:
            storage.set_trial_user_attr(trial_id, "error", reason)
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker failed it first
        frozen = storage.get_trial(trial_id)
        failed.append(frozen.number)
        callback = storage.get_heartbeat_stale_trial_callback()
        if callback is not None:
            callback(study, frozen)
    return failed


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _running(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def claim_trial(study: optuna.Study, sweep: Sweep, deadline: float | None) -> optuna.Trial | None:
    """The next trial for this worker, or None when the sweep has nothing left to run. While other
    workers' trials are RUNNING, an idle worker waits: one of them may die, and its retry needs a worker."""
    while True:
        fail_stale_trials(study, sweep.cfg.grace_period)  # dead workers' trials -> FAIL, retry enqueued (RDB)
        if deadline is not None and time.time() > deadline:
            return None
        trial = _pop_waiting(study, sweep)
        if trial is not None or not _running(study) or not is_heartbeat_enabled(study._storage):
            return trial
        time.sleep(sweep.cfg.heartbeat_interval)


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


class TrialTakenAway(Exception):
    """This worker's trial is no longer RUNNING in the storage: its heartbeat went stale (the worker
    was paused, starved or cut off), another worker failed it and runs a retry."""


class Heartbeat:
    """Beats for one trial from a daemon thread until stopped. Unlike Optuna's own thread, a failed
    write (a locked SQLite file, a dropped connection) is retried at the next beat instead of ending
    the heartbeat for good, which left a healthy trial to be declared dead."""

    def __init__(self, storage, trial_id: int, interval: float):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # noqa: BLE001 - the next beat tries again; grace_period covers misses
                pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def heartbeat(study: optuna.Study, trial: optuna.Trial):
    """What lets another worker detect that this one died (RDB storages); a no-op context otherwise."""
    import contextlib

    if not is_heartbeat_enabled(study._storage):
        return contextlib.nullcontext()
    return Heartbeat(study._storage, trial._trial_id, study._storage.get_heartbeat_interval())


def still_mine(trial: optuna.Trial) -> bool:
    return trial.study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING


def fence(trial: optuna.Trial) -> None:
    if not still_mine(trial):
        raise TrialTakenAway(f"trial {trial.number} was failed by another worker (heartbeat missed)")


class Fence(pl.Callback):
    """Stops training as soon as the trial is no longer this worker's: checked at each validation,
    before each checkpoint is written, at the end of training, and every `interval` seconds of steps
    (so a worker resumed after a long pause stops within a step)."""

    def __init__(self, trial: optuna.Trial, interval: float):
        self.trial, self.interval = trial, interval
        self._checked = time.monotonic()

    def _check(self) -> None:
        self._checked = time.monotonic()
        fence(self.trial)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if time.monotonic() - self._checked >= self.interval:
            self._check()

    def on_validation_end(self, trainer, pl_module):
        self._check()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self._check()

    def on_train_end(self, trainer, pl_module):
        self._check()


def attempt_of(trial: optuna.Trial) -> int:
    """0 for the first trial of a configuration, n for its n-th retry (counted from the study)."""
    config_id = config_id_of(trial)
    return sum(1 for t in trial.study.get_trials(deepcopy=False)
               if t.number < trial.number and t.user_attrs.get("config_id", t.number) == config_id)


def seed_dir_name(seed: int, attempt: int) -> str:
    return f"seed{seed}" if attempt == 0 else f"seed{seed}.retry{attempt}"


def earlier_attempts(trial_dir: Path, seed: int, attempt: int) -> list[Path]:
    """Run directories of earlier attempts of this seed found in this output_dir, newest first."""
    return [trial_dir / seed_dir_name(seed, a) for a in range(attempt - 1, -1, -1)
            if (trial_dir / seed_dir_name(seed, a)).is_dir()]


def _finished(run_dir: Path) -> dict | None:
    path = run_dir / METRICS
    if path.is_file():
        metrics = json.loads(path.read_text())
        if metrics.get("status") in ("completed", "pruned"):
            return metrics
    return None


class Objective:
    def __init__(self, sweep: Sweep, quiet: bool = True):
        self.sweep, self.quiet = sweep, quiet
        self.base = load_config(sweep.base_path, list(sweep.cfg.overrides))

    def experiment(self, params: dict[str, Any], trial_dir: Path, seed: int, version: str | None = None):
        overrides = self.sweep.experiment_overrides(params) + [
            f"seed={seed}", f"output_dir={trial_dir.parent}", f"name={trial_dir.name}",
            f"version={version or f'seed{seed}'}", "trainer.progress_bar=false",
            f"trainer.keep_checkpoints={self.sweep.cfg.keep_checkpoints}"]
        if self.sweep.cfg.collapse_prunes:
            overrides.append("monitor.collapse_action=prune")
        cfg = load_config(self.sweep.base_path, overrides)
        matched = None
        if self.sweep.cfg.compute_matching != "none":
            matched = match_expert_hidden(self.base.model, cfg.model, self.sweep.cfg.compute_matching)
            if matched is not None:
                cfg.model.moe.expert_hidden = matched.expert_hidden
        return cfg, matched

    def run_seed(self, trial: optuna.Trial, params: dict, trial_dir: Path, seed: int, report: bool,
                 attempt: int = 0) -> SeedResult:
        """Train one seed in this attempt's own run directory. A seed an earlier attempt finished is
        reused as it is; otherwise training continues from the newest checkpoint an earlier attempt
        left (copied, so the earlier directory is never written again)."""
        from moe_lab.train import CHECKPOINTS, run  # heavy import, only in processes that train

        version = seed_dir_name(seed, attempt)
        cfg, _ = self.experiment(params, trial_dir, seed, version)
        run_dir = trial_dir / version
        earlier = earlier_attempts(trial_dir, seed, attempt)
        for previous in [run_dir, *earlier]:
            if (metrics := _finished(previous)) is not None:
                return SeedResult(seed, previous, metrics)
        ckpt = next((d / CHECKPOINTS / "last.ckpt" for d in [run_dir, *earlier]
                     if (d / CHECKPOINTS / "last.ckpt").is_file()), None)
        if ckpt is not None:
            target = run_dir / CHECKPOINTS / "last.ckpt"
            if ckpt != target:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ckpt, target.with_suffix(".tmp"))
                target.with_suffix(".tmp").replace(target)
            cfg.trainer.resume = "auto"
        monitor = OBJECTIVES[self.sweep.cfg.objective.metric]
        pruning = ValidationPruning(trial, monitor) if report and monitor and self.sweep.cfg.pruner != "none" else None
        callbacks = [Fence(trial, self.sweep.cfg.heartbeat_interval)] + ([pruning] if pruning else [])
        result = run(cfg, extra_callbacks=tuple(callbacks), quiet=self.quiet, session=(params, trial_label(params)))
        fence(trial)  # results of a trial taken away are not reported
        metrics = dict(result.metrics)
        if pruning is not None and pruning.pruned_at is not None:
            metrics["prune_reason"] = f"pruned by the {self.sweep.cfg.pruner} pruner at step {pruning.pruned_at}"
            metrics["status"] = "pruned"
            write_json_atomic(run_dir / METRICS, metrics)
        return SeedResult(seed, run_dir, metrics)

    def __call__(self, trial: optuna.Trial) -> float:
        params = dict(trial.params)
        config_id = config_id_of(trial)
        label = trial.user_attrs.get("label") or trial_label(params)
        trial_dir = self.sweep.study_dir / TRIALS / f"t{config_id:03d}-{label}"
        attempt = attempt_of(trial)
        trial.set_user_attr("config_id", config_id)
        trial.set_user_attr("label", label)
        trial.set_user_attr("attempt", attempt)
        trial.set_user_attr("worker", worker_name())
        trial.set_user_attr("error", None)  # a retry inherits the attributes of the attempt it retries
        start = time.time()
        _, matched = self.experiment(params, trial_dir, self.sweep.cfg.seeds[0])
        if matched is not None:
            trial.set_user_attr("expert_hidden", matched.expert_hidden)
        results: list[SeedResult] = []
        try:
            for i, seed in enumerate(self.sweep.cfg.seeds):
                results.append(self.run_seed(trial, params, trial_dir, seed, report=i == 0, attempt=attempt))
                if results[-1].metrics.get("status") == "pruned":
                    break
        except TrialTakenAway:
            raise
        except Exception as err:
            # The seed that failed has a run directory too: record it, so the failure can be read.
            failing = trial_dir / seed_dir_name(self.sweep.cfg.seeds[len(results)], attempt)
            if still_mine(trial):
                self.record(trial, trial_dir, results, start, error=_one_line(err),
                            failed_dir=failing if failing.is_dir() else None)
            raise
        fence(trial)
        value = self.record(trial, trial_dir, results, start)
        pruned = [r.metrics["prune_reason"] for r in results if r.metrics.get("status") == "pruned"]
        if pruned:
            raise optuna.TrialPruned(pruned[0])
        return value

    def record(self, trial, trial_dir: Path, results: list[SeedResult], start: float, error: str | None = None,
               failed_dir: Path | None = None):
        metric = self.sweep.cfg.objective.metric
        values = [r.metrics.get(metric) for r in results]
        finite = [v for v in values if v is not None and math.isfinite(v)]
        mean = statistics.fmean(finite) if finite else float("nan")
        first = results[0].metrics if results else {}
        run_dirs = [r.run_dir for r in results] + ([failed_dir] if failed_dir is not None else [])
        attrs = {
            "run_dirs": [str(d.relative_to(self.sweep.study_dir)) for d in run_dirs],
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


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".splitlines()[0]


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
            except TrialTakenAway as taken:
                state, note, value = None, f"dropped: {taken}; its retry is another worker's", None
            except Exception as err:  # recorded as FAIL with its reason; the sweep goes on
                state, value, note = TrialState.FAIL, None, f"failed: {_one_line(err)}"
        if state is not None:
            try:
                if state == TrialState.FAIL:
                    trial.set_user_attr("error", note.removeprefix("failed: "))
                study.tell(trial, value, state=state)
            except optuna.exceptions.UpdateFinishedTrialError:  # failed by another worker meanwhile
                note = f"dropped: trial {trial.number} was failed by another worker (heartbeat missed)"
        log(f"trial {trial.number} {note}")
        ran += 1
    return ran
