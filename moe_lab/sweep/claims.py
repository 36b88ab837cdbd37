"""A worker's hold on the trial it runs: heartbeats that tell other workers it is alive, failing the
trials of workers that died (their retry is enqueued), the fence that stops a worker whose trial
was taken away from writing to it again, and handing a trial back when a stop signal ends the worker."""

from __future__ import annotations

import contextlib
import os
import socket
import threading

import optuna
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

from moe_lab.artifacts.study_dir import TRIAL_ERROR, TRIAL_INTERRUPTED
from moe_lab.errors import signal_name


def fail_stale_trials(study: optuna.Study, grace_period: int) -> list[int]:
    """Optuna's fail_stale_trials, plus the reason on each trial it fails (set while the trial is
    still RUNNING: a finished trial takes no attributes). Returns the numbers of the trials this
    worker failed; the storage's state update lets only one worker fail each."""
    storage = study._storage
    if not is_heartbeat_enabled(storage):
        return []
    failed = []
    for trial_id in storage._get_stale_trial_ids(storage.get_study_id_from_name(study.study_name)):
        reason = (
            f"no heartbeat for over {grace_period} s (worker killed, paused or cut off); "
            f"failed by worker {worker_name()}, retried as a new trial"
        )
        try:
            storage.set_trial_user_attr(trial_id, TRIAL_ERROR, reason)
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
            # A failed beat is not fatal: the next one tries again and grace_period covers misses.
            with contextlib.suppress(Exception):
                self.storage.record_heartbeat(self.trial_id)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def heartbeat(study: optuna.Study, trial: optuna.Trial):
    """What lets another worker detect that this one died (RDB storages); a no-op context otherwise."""
    if not is_heartbeat_enabled(study._storage):
        return contextlib.nullcontext()
    return Heartbeat(study._storage, trial._trial_id, study._storage.get_heartbeat_interval())


def still_mine(trial: optuna.Trial) -> bool:
    return trial.study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING


def fence(trial: optuna.Trial) -> None:
    if not still_mine(trial):
        raise TrialTakenAway(f"trial {trial.number} was failed by another worker (heartbeat missed)")


def hand_back(trial: optuna.Trial, signum: int) -> bool:
    """Put this worker's trial back to WAITING after a stop signal ended its run at a step boundary, last.ckpt
    saved: the next claim (a re-run of the same command) takes it at once and resumes that run as the same
    attempt; no heartbeat grace period, no failure, no retry counted. False when it is no longer this worker's."""
    storage = trial.study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, TRIAL_INTERRUPTED, signal_name(signum))
        return storage.set_trial_state_values(trial._trial_id, state=TrialState.WAITING)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # failed by another worker meanwhile (heartbeat missed)
