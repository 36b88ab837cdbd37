"""Running a sweep: the Optuna study and workers claiming its trials (the work of one trial is
moe_lab.sweep.objective; a worker's hold on its trial, moe_lab.sweep.claims).

The unit of work is one WAITING trial in the storage: the worker that creates the study enqueues
one per grid point and seed (or, for random/TPE, `n_trials` empty slots the sampler fills when one is
claimed; such a trial trains every seed of the configuration it draws), and workers pop them with the
storage's own atomic state change (only one worker wins the WAITING -> RUNNING update). So workers
share nothing but the storage URL: processes on one host or on many (PostgreSQL), each with its own
output_dir. Grid units go seed by seed (every configuration's first seed, then every second seed, ...),
so the first results cover every configuration and no worker idles while another trains a
configuration's last seeds; the reports average a configuration's seeds over its trials.

A worker killed mid-trial leaves its trial RUNNING; when its heartbeat is older than `grace_period`,
any worker marks it FAIL and Optuna enqueues a retry with the same parameters. Each attempt writes
its own run directories (seed0, seed0.retry1, ...), so two attempts never write one directory; a
retry starts from the newest checkpoint an earlier attempt left in this output_dir (same host or a
shared filesystem), otherwise from scratch, and reuses seeds an earlier attempt finished. A worker
whose trial was taken away (its heartbeat went stale while it was paused or starved) finds out at
the next validation, checkpoint or result, and drops the trial without writing to it again.

A stop signal (SIGTERM, SIGINT, SIGUSR1: moe_lab.signals) ends the worker's run at its next step boundary
with last.ckpt saved there, and the worker hands its trial back (WAITING, moe_lab.sweep.claims.hand_back)
before it exits: re-running the same command claims that trial first and resumes the run as the same
attempt, with no grace period, no failure and no retry. Between trials the worker exits at once.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings

import optuna
from filelock import FileLock
from omegaconf import OmegaConf
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

from moe_lab import signals
from moe_lab.artifacts.atomic import write_json_atomic, write_text_atomic
from moe_lab.artifacts.study_dir import (
    STUDY_GRID_ENQUEUED,
    STUDY_INFO,
    STUDY_WORK_ENQUEUED,
    SWEEP_COPY,
    TRIAL_CONFIG_ID,
    TRIAL_DUPLICATE_OF,
    TRIAL_ERROR,
    TRIAL_LABEL,
    TRIAL_UNIT_SEED,
    trial_unit,
)
from moe_lab.errors import Interrupted, MoELabError, signal_name
from moe_lab.study.labels import trial_label
from moe_lab.study.storage import masked_url, open_storage, recorded_url
from moe_lab.sweep.claims import TrialTakenAway, fail_stale_trials, hand_back, heartbeat
from moe_lab.sweep.config import Sweep
from moe_lab.sweep.objective import Objective, one_line
from moe_lab.training.tb_hparams import write_study_layout

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def make_storage(sweep: Sweep):
    """The study's storage, checked (MoELabError naming it otherwise) before anything is written;
    only the default SQLite file needs the study directory to exist first."""
    if not sweep.cfg.storage:
        sweep.study_dir.mkdir(parents=True, exist_ok=True)
    return open_storage(sweep.storage_url, sweep.cfg.heartbeat_interval, sweep.cfg.grace_period, sweep.cfg.max_retries)


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
            out[p.key] = optuna.distributions.IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            out[p.key] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    return out


def retry_failed(study: optuna.Study) -> list[int]:
    """Enqueue again every unit ((configuration, seed), or a sampled configuration) whose trials all
    FAILed (e.g. after fixing the cause); the retries keep their units, so they reuse the same run
    directories. Returns the config ids retried."""
    by_unit: dict[tuple, list] = {}
    for t in study.get_trials(deepcopy=False):
        by_unit.setdefault(trial_unit(t), []).append(t)
    retried = []
    for (config_id, seed), trials in sorted(by_unit.items(), key=lambda item: (item[0][0], item[0][1] or 0)):
        if all(t.state == TrialState.FAIL for t in trials):
            last = trials[-1]
            attrs = {TRIAL_CONFIG_ID: config_id, TRIAL_LABEL: last.user_attrs.get(TRIAL_LABEL, "")}
            study.enqueue_trial(
                last.params,
                user_attrs=attrs if seed is None else {**attrs, TRIAL_UNIT_SEED: seed},
                skip_if_exists=False,
            )
            retried.append(config_id)
    return sorted(set(retried))


# The keys that define what a study's trials mean; resuming with other values would mix two
# experiments in one table. Budget keys (n_trials, timeout_s) may change between invocations.
IDENTITY_KEYS = (
    "overrides",
    "objective",
    "sampler",
    "sampler_seed",
    "seeds",
    "compute_matching",
    "space",
    "arms",
    "collapse_prunes",
    "pruner",
)


def study_identity(sweep: Sweep) -> str:
    values = OmegaConf.to_container(OmegaConf.structured(sweep.cfg))
    described = {k: values.get(k) for k in IDENTITY_KEYS} | {"base": sweep.cfg.base}
    if values.get("prerequisites"):  # only where set: the identities of studies without any stay as they were
        described["prerequisites"] = values["prerequisites"]
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_identity(sweep: Sweep) -> None:
    info_path = sweep.study_dir / STUDY_INFO
    if not info_path.is_file():
        return
    recorded = json.loads(info_path.read_text()).get("identity")
    if recorded and recorded != study_identity(sweep):
        raise MoELabError(
            f"name: study {sweep.name!r} in {sweep.study_dir} was run with other settings "
            f"(space, arms, seeds, overrides, ...); resume it unchanged or pass name=<new name>"
        )


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
    """The creator's job: one WAITING trial per grid point and seed, seed by seed, or one per
    random/TPE trial (empty fixed parameters, so the sampler chooses them when the trial is claimed).
    `work_enqueued` is set last: the other workers wait for it."""
    if sweep.cfg.sampler == "grid":
        grid = sweep.grid()
        for seed in sweep.cfg.seeds:
            for config_id, params in enumerate(grid):
                attrs = {TRIAL_CONFIG_ID: config_id, TRIAL_LABEL: trial_label(params), TRIAL_UNIT_SEED: seed}
                study.enqueue_trial(params, user_attrs=attrs)
        study.set_user_attr(STUDY_GRID_ENQUEUED, True)
        study.set_user_attr(STUDY_WORK_ENQUEUED, len(grid) * len(sweep.cfg.seeds))
    else:
        _top_up_slots(study, sweep, have=0)


def _top_up_slots(study: optuna.Study, sweep: Sweep, have: int) -> None:
    for config_id in range(have, sweep.n_trials()):
        study.enqueue_trial({}, user_attrs={TRIAL_CONFIG_ID: config_id})
    study.set_user_attr(STUDY_WORK_ENQUEUED, max(have, sweep.n_trials()))


def _wait_for_creator(study: optuna.Study, sweep: Sweep) -> None:
    deadline = time.time() + ENQUEUE_WAIT_S
    while not (STUDY_WORK_ENQUEUED in study.user_attrs or study.user_attrs.get(STUDY_GRID_ENQUEUED)):
        if time.time() > deadline:
            raise MoELabError(
                f"name: study {sweep.name!r} in {masked_url(sweep.storage_url)} exists but its "
                f"trials were never enqueued (its creator stopped?); pass name=<new name>"
            )
        signals.raise_if_received()
        signals.wait(1)


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
            have = study.user_attrs.get(STUDY_WORK_ENQUEUED)
            if sweep.cfg.sampler != "grid" and isinstance(have, int) and have < sweep.n_trials():
                _top_up_slots(study, sweep, have)
        if retry:
            retry_failed(study)
        info = {
            "kind": "ablation" if sweep.arms is not None else "sweep",
            "study_name": sweep.name,
            "storage_url": recorded_url(sweep.storage_url),
            "objective_metric": sweep.cfg.objective.metric,
            "direction": sweep.cfg.objective.direction,
            "sampler": sweep.cfg.sampler,
            "seeds": list(sweep.cfg.seeds),
            "compute_matching": sweep.cfg.compute_matching,
            "base": str(sweep.base_path),
            "identity": study_identity(sweep),
        }
        write_json_atomic(sweep.study_dir / STUDY_INFO, info)
        recorded = OmegaConf.structured(sweep.cfg)
        recorded.storage = recorded_url(sweep.cfg.storage) if sweep.cfg.storage else ""
        write_text_atomic(sweep.study_dir / SWEEP_COPY, OmegaConf.to_yaml(recorded))
        write_study_layout(
            sweep.study_dir, {p.key: list(p.choices) or [p.low] for p in sweep.params}, sweep.cfg.objective.metric
        )
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


def _running(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def claim_trial(study: optuna.Study, sweep: Sweep, deadline: float | None) -> optuna.Trial | None:
    """The next trial for this worker, or None when the sweep has nothing left to run. While other
    workers' trials are RUNNING, an idle worker waits: one of them may die, and its retry needs a worker."""
    while True:
        signals.raise_if_received()  # no trial held: the worker stops here
        fail_stale_trials(study, sweep.cfg.grace_period)  # dead workers' trials -> FAIL, retry enqueued (RDB)
        if deadline is not None and time.time() > deadline:
            return None
        trial = _pop_waiting(study, sweep)
        if trial is not None or not _running(study) or not is_heartbeat_enabled(study._storage):
            return trial
        signals.wait(sweep.cfg.heartbeat_interval)


def run_worker(sweep: Sweep, quiet: bool = True, log=print, retry: bool = False) -> int:
    """Claim and run trials until the sweep is done (or the time budget is spent). Returns how many
    trials this worker ran. `retry`: first enqueue again the configurations that only failed. A stop signal
    ends it with Interrupted, its trial handed back (see the module's docstring)."""
    # A stop signal is only recorded: the trial's run acts on it at its next step boundary, claim_trial before
    # the next claim. So a trial this worker claimed is always handed back or told.
    with signals.handled(), signals.deferred():
        return _run_trials(sweep, quiet, log, retry)


def _run_trials(sweep: Sweep, quiet: bool, log, retry: bool) -> int:
    study = open_study(sweep, retry=retry)
    objective = Objective(sweep, quiet=quiet)
    deadline = time.time() + sweep.cfg.timeout_s if sweep.cfg.timeout_s else None
    ran = 0
    while (trial := claim_trial(study, sweep, deadline)) is not None:
        seed = trial.user_attrs.get(TRIAL_UNIT_SEED)
        log(f"trial {trial.number}: {trial_label(dict(trial.params))}" + ("" if seed is None else f" seed {seed}"))
        stop = None
        with heartbeat(study, trial):
            try:
                value = objective(trial)
                state, note = TrialState.COMPLETE, f"{sweep.cfg.objective.metric} = {value:.4f}"
                if (twin := trial.user_attrs.get(TRIAL_DUPLICATE_OF)) is not None:
                    note += f" (same parameters as trial {twin}, not trained again)"
            except Interrupted as interrupted:
                stop, state, value = interrupted, None, None
            except optuna.TrialPruned as pruned:
                state, note, value = TrialState.PRUNED, f"pruned: {pruned}", None
            except TrialTakenAway as taken:
                state, note, value = None, f"dropped: {taken}; its retry is another worker's", None
            except Exception as err:  # recorded as FAIL with its reason; the sweep goes on
                state, value, note = TrialState.FAIL, None, f"failed: {one_line(err)}"
        if stop is not None:
            handed = hand_back(trial, stop.signum)
            log(
                f"trial {trial.number} interrupted by {signal_name(stop.signum)}: "
                + ("waiting to be resumed from its checkpoint" if handed else "failed by another worker meanwhile")
            )
            raise stop
        if state is not None:
            try:
                if state == TrialState.FAIL:
                    trial.set_user_attr(TRIAL_ERROR, note.removeprefix("failed: "))
                study.tell(trial, value, state=state)
            except optuna.exceptions.UpdateFinishedTrialError:  # failed by another worker meanwhile
                note = f"dropped: trial {trial.number} was failed by another worker (heartbeat missed)"
        log(f"trial {trial.number} {note}")
        ran += 1
    return ran
