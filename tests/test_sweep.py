"""Sweeps end to end on a tiny experiment: grid coverage, kill + resume, concurrent workers, failures,
pruning (validation curve and expert collapse), compute matching, bad sweep files."""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from moe_lab.config import load_config
from moe_lab.errors import ConfigError, MoELabError
from moe_lab.model.accounting import count_model
from moe_lab.study import storage as storage_module
from moe_lab.sweep import estimate
from moe_lab.sweep.command import dry_run
from moe_lab.sweep.config import load_sweep
from moe_lab.sweep.objective import Objective
from moe_lab.sweep.runner import claim_trial, open_study, run_worker
from tests.helpers import write_tiny_experiment

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::DeprecationWarning", "ignore::optuna.exceptions.ExperimentalWarning"
)


def write_sweep(tmp_path: Path, data_cache: Path, body: str, steps: int = 4, grace: int = 2) -> Path:
    write_tiny_experiment(tmp_path / "tiny.yaml", data_cache, steps=steps)
    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"base: tiny.yaml\noutput_dir: {tmp_path / 'out'}\nheartbeat_interval: 1\ngrace_period: {grace}\n" + body
    )
    return path


def trials(sweep_path: Path) -> list[optuna.trial.FrozenTrial]:
    sweep = load_sweep(sweep_path)
    return optuna.load_study(study_name=sweep.name, storage=sweep.storage_url).get_trials()


def by_state(ts, state):
    return [t for t in ts if t.state == state]


GRID = "sampler: grid\nspace:\n  model.moe.top_k: [1, 2]\n  model.moe.n_experts: [4, 8]\n"


def test_grid_runs_every_point_exactly_once(tmp_path, data_cache, capsys):
    path = write_sweep(tmp_path, data_cache, GRID)
    assert run_worker(load_sweep(path), log=lambda m: None) == 4
    ts = trials(path)
    done = by_state(ts, TrialState.COMPLETE)
    assert len(ts) == len(done) == 4
    assert sorted((t.params["model.moe.top_k"], t.params["model.moe.n_experts"]) for t in done) == [
        (1, 4),
        (1, 8),
        (2, 4),
        (2, 8),
    ]
    for t in done:  # objective = the run's final val_loss, read back from its metrics.json
        run_dir = tmp_path / "out" / "sweep" / t.user_attrs["run_dirs"][0]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert t.value == pytest.approx(metrics["val_loss"])
        assert json.loads((run_dir.parent / "seed0" / "metrics.json").read_text())["steps"] == 4
    # Running the same sweep again resumes: nothing left, nothing rerun.
    assert run_worker(load_sweep(path), log=lambda m: None) == 0
    assert len(trials(path)) == 4
    # Its dry run says so, instead of estimating the whole grid again.
    dry_run(load_sweep(path))
    out = capsys.readouterr().out
    assert "is complete: 4 of 4 configurations finished" in out and "estimated time" not in out
    # The finished runs kept their best weights only (keep_checkpoints: best_weights by default).
    run_dir = tmp_path / "out" / "sweep" / done[0].user_attrs["run_dirs"][0]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt"]


def sweep_cmd(path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "moe_lab.sweep", str(path), *extra]


def test_sigkill_mid_trial_then_rerun_completes_without_loss_or_duplicates(tmp_path, data_cache):
    path = write_sweep(tmp_path, data_cache, "sampler: grid\nspace:\n  model.moe.top_k: [1, 2, 3]\n", steps=40)
    proc = subprocess.Popen(
        sweep_cmd(path), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    trial_dirs = tmp_path / "out" / "sweep" / "trials"
    deadline = time.time() + 240
    # Kill while the second configuration is training (its run directory has a checkpoint).
    while not list(trial_dirs.glob("t001-*/seed0/checkpoints/last.ckpt")):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert by_state(trials(path), TrialState.RUNNING)  # left behind by the dead worker
    time.sleep(3)  # past the grace period: the next worker finds it stale
    rerun = subprocess.run(sweep_cmd(path), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    ts = trials(path)
    done = by_state(ts, TrialState.COMPLETE)
    assert sorted(t.params["model.moe.top_k"] for t in done) == [1, 2, 3]  # none lost, none twice
    assert [t.user_attrs["config_id"] for t in by_state(ts, TrialState.FAIL)] == [1]  # the killed one
    assert not by_state(ts, TrialState.RUNNING) and not by_state(ts, TrialState.WAITING)
    assert sorted(p.name for p in trial_dirs.iterdir()) == ["t000-top_k=1", "t001-top_k=2", "t002-top_k=3"]
    # The retry wrote its own attempt directory, continuing from the killed attempt's checkpoint.
    (retry,) = [t for t in by_state(ts, TrialState.COMPLETE) if t.user_attrs["config_id"] == 1]
    assert retry.user_attrs["run_dirs"] == ["trials/t001-top_k=2/seed0.retry1"]
    resumed = json.loads((trial_dirs / "t001-top_k=2" / "seed0.retry1" / "metrics.json").read_text())
    assert resumed["steps"] == 40 and resumed["status"] == "completed"
    assert not (trial_dirs / "t001-top_k=2" / "seed0" / "metrics.json").exists()  # half-trained: no result


def event_file_pids(run_dir: Path) -> set[str]:
    """The processes that wrote TensorBoard events into a run directory.

    Event files are named events.out.tfevents.<time>.<host>.<pid>.<n>."""
    return {p.name.split(".")[-2] for p in run_dir.glob("events.out.tfevents.*")}


@pytest.mark.slow
def test_worker_paused_past_the_grace_period_drops_its_trial(tmp_path, data_cache):
    """SIGSTOP one of two workers mid-trial until the other has failed and retried its trial, then
    SIGCONT: the paused worker notices, stops that trial without writing results, and exits 0."""
    path = write_sweep(
        tmp_path, data_cache, "sampler: grid\nseeds: [0, 1]\nspace:\n  model.moe.top_k: [1, 2]\n", steps=30, grace=6
    )
    procs = [
        subprocess.Popen(
            sweep_cmd(path, "--worker-only"), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    trial_dirs, deadline = tmp_path / "out" / "sweep" / "trials", time.time() + 600

    def wait_for(pattern):
        while not list(trial_dirs.glob(pattern)):
            ended = [p.communicate()[0][-2000:] for p in procs if p.poll() is not None]
            assert not ended and time.time() < deadline, (pattern, ended)
            time.sleep(0.2)
        return list(trial_dirs.glob(pattern))

    ckpt = wait_for("t*/seed0/checkpoints/last.ckpt")[0]
    paused = next(p for p in procs if str(p.pid) in event_file_pids(ckpt.parent.parent))
    os.kill(paused.pid, signal.SIGSTOP)
    # The retry has been claimed once its run directory exists. Not its last.ckpt: the retry resumes from
    # the paused attempt's checkpoint, may finish within one poll and then deletes last.ckpt.
    wait_for(f"{ckpt.parent.parent.parent.name}/seed0.retry1")
    os.kill(paused.pid, signal.SIGCONT)
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert "dropped: trial" in logs[procs.index(paused)]
    ts = trials(path)
    done = by_state(ts, TrialState.COMPLETE)
    # One result per (configuration, seed), the unit of work.
    assert sorted((t.user_attrs["config_id"], t.user_attrs["unit_seed"]) for t in done) == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    ]
    assert [t.user_attrs["config_id"] for t in by_state(ts, TrialState.FAIL)] == [
        int(ckpt.parent.parent.parent.name[1:4])
    ]
    run_dirs = [p for p in trial_dirs.glob("t*/seed*") if p.is_dir()]
    assert all(len(event_file_pids(d)) == 1 for d in run_dirs), {d.name: event_file_pids(d) for d in run_dirs}
    # The paused attempt wrote no result; the counted ones are the retry's, each complete.
    assert not (ckpt.parent.parent / "metrics.json").exists()
    for t in done:
        for d in t.user_attrs["run_dirs"]:
            assert json.loads((tmp_path / "out" / "sweep" / d / "metrics.json").read_text())["steps"] == 30


def test_worker_that_loses_the_sqlite_table_creation_race_opens_the_study(tmp_path, monkeypatch):
    """Two workers started together on a new SQLite study both create Optuna's tables; SQLite tells
    the loser "table studies already exists" (an OperationalError, like a real connection failure).
    The loser must try again and find the tables, not exit with a storage error."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    real, calls = optuna.storages.RDBStorage, []

    def failing_once(reason: str, winner_first: bool):
        class Storage(real):
            def __init__(self, *args, **kwargs):
                calls.append(args)
                if len(calls) == 1 or not winner_first:
                    if winner_first:  # the other worker creates the tables while this one was about to
                        real(url)
                    raise sqlalchemy.exc.OperationalError("CREATE TABLE", {}, sqlite3.OperationalError(reason))
                super().__init__(*args, **kwargs)

        return Storage

    monkeypatch.setattr(storage_module.time, "sleep", lambda s: None)
    monkeypatch.setattr(optuna.storages, "RDBStorage", failing_once("table studies already exists", True))
    storage = storage_module.open_storage(url)
    assert len(calls) == 2 and optuna.create_study(storage=storage, study_name="s").study_name == "s"
    # A database that cannot be opened will not get better: one error, no retry.
    calls.clear()
    monkeypatch.setattr(optuna.storages, "RDBStorage", failing_once("unable to open database file", False))
    with pytest.raises(MoELabError, match="unable to open database file"):
        storage_module.open_storage(url)
    assert len(calls) == 1


def test_two_concurrent_workers_share_the_seeds_and_never_run_the_same_unit(tmp_path, data_cache):
    """A grid's unit of work is one (configuration, seed): 2 configurations x 2 seeds are 4 trials the
    workers share, and the report's row of a configuration is the mean over its seeds' runs."""
    path = write_sweep(tmp_path, data_cache, "sampler: grid\nseeds: [0, 1]\nspace:\n  model.moe.top_k: [1, 2]\n")
    load_sweep(path)
    procs = [
        subprocess.Popen(
            sweep_cmd(path, "--worker-only"), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    ts = trials(path)
    assert len(ts) == 4 and len(by_state(ts, TrialState.COMPLETE)) == 4
    # Seed by seed: every configuration's first seed is enqueued before any second seed.
    assert [(t.user_attrs["config_id"], t.user_attrs["unit_seed"]) for t in ts] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert all(t.user_attrs["seeds"] == [t.user_attrs["unit_seed"]] for t in ts)  # each trial trained one seed
    ran = [set(re.findall(r"trial (\d+) val_loss", log)) for log in logs]
    assert len(ran[0] | ran[1]) == 4 and not (ran[0] & ran[1])
    from moe_lab.report.sweep_study import load_study_data

    study_dir = tmp_path / "out" / "sweep"
    for row in load_study_data(study_dir).rows:
        assert row.state == "COMPLETE" and row.seeds == [0, 1] and row.retries == 0
        trial_dir = study_dir / "trials" / f"t{row.config_id:03d}-{row.label}"
        values = [json.loads((trial_dir / f"seed{s}" / "metrics.json").read_text())["val_loss"] for s in (0, 1)]
        assert row.objective_values == values and row.objective_mean == pytest.approx(sum(values) / 2)


def test_nan_trial_fails_with_its_reason_and_the_sweep_goes_on(tmp_path, data_cache):
    body = "sampler: grid\noverrides: [optim.grad_clip=0]\nspace:\n  optim.lr: [1.0e+30, 0.003]\n"
    path = write_sweep(tmp_path, data_cache, body)
    run_worker(load_sweep(path), log=lambda m: None)
    failed, done = by_state(trials(path), TrialState.FAIL), by_state(trials(path), TrialState.COMPLETE)
    assert [t.params["optim.lr"] for t in failed] == [1e30]
    assert "non-finite training loss" in failed[0].user_attrs["error"]
    assert [t.params["optim.lr"] for t in done] == [0.003]


def test_resuming_a_study_with_other_settings_is_refused(tmp_path, data_cache):
    path = write_sweep(tmp_path, data_cache, "sampler: grid\nspace:\n  model.moe.top_k: [1]\n")
    run_worker(load_sweep(path), log=lambda m: None)
    info = (tmp_path / "out" / "sweep" / "study_info.json").read_text()
    with pytest.raises(MoELabError, match="^name: study 'sweep'"):
        run_worker(load_sweep(path, ["overrides=[optim.lr=0.01]"]), log=lambda m: None)
    assert (tmp_path / "out" / "sweep" / "study_info.json").read_text() == info  # nothing rewritten
    assert run_worker(load_sweep(path, ["n_trials=1"]), log=lambda m: None) == 0  # budgets may change


def test_retry_failed_enqueues_only_configurations_that_never_succeeded(tmp_path, data_cache):
    body = "sampler: grid\noverrides: [optim.grad_clip=0]\nspace:\n  optim.lr: [1.0e+30, 0.003]\n"
    sweep = load_sweep(write_sweep(tmp_path, data_cache, body))
    run_worker(sweep, log=lambda m: None)
    assert run_worker(sweep, log=lambda m: None) == 0  # failures are final unless asked
    assert run_worker(sweep, log=lambda m: None, retry=True) == 1  # only the failed lr=1e30 again
    ts = trials(sweep.path)
    assert sorted((t.user_attrs["config_id"], t.state.name) for t in ts) == [(0, "FAIL"), (0, "FAIL"), (1, "COMPLETE")]


def test_median_pruner_stops_a_hopeless_configuration_and_its_other_seeds(tmp_path, data_cache):
    body = "sampler: grid\npruner: median\nseeds: [0, 1]\nspace:\n  optim.lr: [0.01, 1.0e-7]\n"
    path = write_sweep(tmp_path, data_cache, body, steps=12)
    run_worker(load_sweep(path), log=lambda m: None)
    pruned = by_state(trials(path), TrialState.PRUNED)
    assert [(t.params["optim.lr"], t.user_attrs["unit_seed"]) for t in pruned] == [(1e-7, 0), (1e-7, 1)]
    assert "median pruner" in pruned[0].user_attrs["prune_reason"]
    run_dir = tmp_path / "out" / "sweep" / pruned[0].user_attrs["run_dirs"][0]
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] < 12
    # Its second seed was not trained: the configuration was pruned as a whole.
    assert pruned[1].user_attrs["prune_reason"].startswith("not trained: seed 0 was pruned: pruned by the median")
    assert not (run_dir.parent / "seed1").exists() and pruned[1].user_attrs["run_dirs"] == []
    done = by_state(trials(path), TrialState.COMPLETE)
    assert [(t.params["optim.lr"], t.user_attrs["unit_seed"]) for t in done] == [(0.01, 0), (0.01, 1)]


def test_collapse_detector_prunes_with_its_reason(tmp_path, data_cache):
    body = (
        "sampler: grid\noverrides: [monitor.collapse_min_load_fraction=0.99, "
        "monitor.collapse_patience_steps=2]\nspace:\n  model.moe.aux_loss_coef: [0.0]\n"
    )
    path = write_sweep(tmp_path, data_cache, body, steps=12)
    run_worker(load_sweep(path), log=lambda m: None)
    (t,) = trials(path)
    assert t.state == TrialState.PRUNED
    assert "below 99% of uniform load" in t.user_attrs["prune_reason"]


def test_compute_matching_holds_active_params(tmp_path, data_cache):
    body = "sampler: grid\ncompute_matching: active\nspace:\n  model.moe.top_k: [1, 4]\n"
    sweep = load_sweep(write_sweep(tmp_path, data_cache, body))
    base = count_model(sweep.base_config.model).total_active_params
    for k, width in ((1, 64), (4, 16)):  # base: top-2 x width 32
        cfg, matched = sweep.experiment({"model.moe.top_k": k}, sweep.placement(tmp_path / "x", 0))
        assert cfg.model.moe.expert_hidden == matched.expert_hidden == width
        assert count_model(cfg.model).total_active_params == base


@pytest.mark.parametrize(
    "body,key",
    [
        ("space:\n  model.moe.topk: [1, 2]\n", "space.model.moe.topk"),
        ("samplr: grid\nspace:\n  model.moe.top_k: [1]\n", "samplr"),
        ("space:\n  optim.lr: {type: float, low: 0.1, high: 0.01}\n", "space.optim.lr"),
        ("space:\n  optim.lr: {type: float, low: 0.0, high: 0.1, log: true}\n", "space.optim.lr"),
        ("space:\n  optim.lr: {type: float, low: 0.001, high: 0.1}\n", "space.optim.lr"),  # grid of a range
        ("sampler: tpe\nspace:\n  model.moe.top_k: [1]\n", "n_trials"),
        ("space:\n  model.moe.top_k: [1, 9]\n", "space (model.moe.top_k=9)"),
        ("space: {}\n", "space"),
        ("pruner: sometimes\nspace:\n  model.moe.top_k: [1]\n", "pruner"),
    ],
)
def test_bad_sweep_files_name_the_key(tmp_path, data_cache, body, key):
    path = write_sweep(tmp_path, data_cache, body)
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


def test_cli_bad_sweep_exits_2_without_traceback(tmp_path, data_cache):
    path = write_sweep(tmp_path, data_cache, "space:\n  model.moe.topk: [1, 2]\n")
    proc = subprocess.run(sweep_cmd(path), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: space.model.moe.topk:")
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_overrides_may_follow_the_options(tmp_path, data_cache, capsys):
    from moe_lab.sweep.__main__ import main

    path = write_sweep(tmp_path, data_cache, GRID)
    assert main([str(path), "--dry-run", "--assume-gflops", "10", "name=after_the_options", "seeds=[3]"]) == 0
    assert "study after_the_options: grid sampler, 4 configurations x 1 seed," in capsys.readouterr().out


def test_dry_run_times_the_models_here_caches_them_and_schedules_the_runs(tmp_path, data_cache, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # A quiet machine (no load, no other process's CPU time), even where other jobs run.
    monkeypatch.setattr(estimate.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(estimate, "_machine_cpu_s", time.process_time)
    path = write_sweep(
        tmp_path, data_cache, "sampler: grid\nseeds: [0, 1]\nspace:\n  model.moe.top_k: [1, 2]\n", steps=10
    )
    sweep = load_sweep(path)
    dry_run(sweep, workers=2)
    first = capsys.readouterr().out
    assert "estimated time: about" in first and "now cached in" in first and "1 thread per worker" in first
    assert "MB of checkpoints at the end (keep_checkpoints=best_weights)" in first
    assert "every run to the end: an upper bound, as the collapse detector may stop some early" in first
    cache = json.loads((tmp_path / "cache" / "moe_lab" / "step_times.json").read_text())
    assert len(cache) == 2  # one entry per model shape
    dry_run(sweep, workers=2)
    assert "(cached in" in capsys.readouterr().out
    # The estimate from the cached times, by hand: the tiny experiment runs 10 steps, validates at
    # steps 2, 4, ..., 10 on 1 batch each, plus the per-run overhead.
    cfg = load_config(sweep.base_path, ["model.moe.top_k=1"])
    times = estimate.StepTimes(train_s=0.5, eval_s=0.25, threads=1)
    assert estimate.run_seconds(cfg, times) == 10 * 0.5 + 5 * 1 * 0.25 + estimate.RUN_OVERHEAD_S
    assert not os.path.exists(tmp_path / "out" / "sweep")  # a dry run writes no study


def test_dry_run_of_a_half_run_grid_counts_the_seeds_left(tmp_path, data_cache, capsys, monkeypatch):
    path = write_sweep(tmp_path, data_cache, "sampler: grid\nseeds: [0, 1]\nspace:\n  model.moe.top_k: [1, 2]\n")
    # A worker trains the first unit, (top_k=1, seed 0), and stops.
    sweep = load_sweep(path)
    study = open_study(sweep)
    trial = claim_trial(study, sweep, None)
    study.tell(trial, Objective(sweep)(trial))
    units = []
    monkeypatch.setattr(estimate, "makespan", lambda u, workers: units.extend(u) or 0.0)
    dry_run(load_sweep(path), workers=2, gflops=10.0)
    out = capsys.readouterr().out
    assert re.search(r"top_k=1 .* s/run \(1 of 2 seeds done\)", out) and "seeds done" not in out.split("top_k=2")[1]
    assert len(units) == 3 and len(set(units)) == 2  # (top_k=1, seed 1), (top_k=2, seeds 0 and 1)


def test_step_times_measured_on_a_busy_machine_are_used_but_not_cached(tmp_path, data_cache, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = load_config(write_tiny_experiment(tmp_path / "tiny.yaml", data_cache, steps=2))
    # Another process spins on a core while the step is timed: busy, used but not cached.
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        busy = estimate.step_times(cfg, threads=1)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy.busy and not busy.cached and not estimate.cache_path().exists()
    # A quiet machine, right after that: the load average still remembers the spinner (and would remember
    # a dry run's own timing of its previous configuration); the CPU time others used during the timing
    # does not. Quiet is simulated (the machine's CPU time is this process's own), so that the test holds
    # on a machine that other jobs keep busy.
    monkeypatch.setattr(estimate, "_machine_cpu_s", time.process_time)
    monkeypatch.setattr(estimate.os, "getloadavg", lambda: ((os.cpu_count() or 1) + 0.5, 0.0, 0.0))
    quiet = estimate.step_times(cfg, threads=1)
    assert not quiet.busy and estimate.step_times(cfg, threads=1).cached
    # Without /proc/stat, the 1-minute load average decides: every core in use by others is busy.
    monkeypatch.setattr(estimate, "_machine_cpu_s", lambda: None)
    monkeypatch.setattr(estimate.os, "getloadavg", lambda: ((os.cpu_count() or 1) + 0.5, 0.0, 0.0))
    assert estimate.step_times(cfg, threads=2).busy


def test_step_times_are_timed_and_cached_per_number_of_workers_running_at_once(tmp_path, data_cache, monkeypatch):
    """Workers sharing the cores slow each other (memory bandwidth, caches): a 2-worker estimate times two
    copies at once and never reuses a 1-worker measurement, nor the other way round."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # A quiet machine (no other process's CPU time, no load), even where other jobs run: the cache is tested.
    monkeypatch.setattr(estimate, "_machine_cpu_s", time.process_time)
    monkeypatch.setattr(estimate.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    cfg = load_config(write_tiny_experiment(tmp_path / "tiny.yaml", data_cache, steps=2))
    built = []
    real = estimate._steps_of_one_copy
    monkeypatch.setattr(estimate, "_steps_of_one_copy", lambda *a: built.append(a) or real(*a))
    alone = estimate.step_times(cfg, threads=1, concurrent=1)
    assert len(built) == 1 and not alone.cached
    together = estimate.step_times(cfg, threads=1, concurrent=2)
    assert len(built) == 3 and not together.cached and together.train_s > 0
    assert estimate.step_times(cfg, threads=1, concurrent=2).cached and len(built) == 3
    assert len(json.loads(estimate.cache_path().read_text())) == 2


def test_makespan_schedules_units_on_the_first_free_worker():
    # 3 configurations x 2 seeds claimed per configuration (20 s each) on 2 workers: one idles at the end.
    assert estimate.makespan([20.0, 20.0, 20.0], 2) == 40.0
    # Claimed per (configuration, seed): 6 units of 10 s.
    assert estimate.makespan([10.0] * 6, 2) == 30.0
    assert estimate.makespan([5.0, 1.0, 1.0, 1.0], 2) == 5.0 and estimate.makespan([], 3) == 0.0
    # A full checkpoint holds the weights and AdamW's two moments: 3 x 4 bytes per float32 parameter.
    assert estimate.checkpoint_bytes(1000, "32-true") == 12_000


def test_workers_get_disjoint_device_groups():
    from moe_lab.sweep.command import device_groups, devices_per_trial

    gpus = [str(i) for i in range(8)]
    assert device_groups(8, devices_per_trial("auto"), gpus) == gpus  # one trial per GPU
    assert device_groups(4, devices_per_trial("2"), gpus) == ["0,1", "2,3", "4,5", "6,7"]
    assert device_groups(2, devices_per_trial("0,1"), ["4", "5", "6", "7"]) == ["4,5", "6,7"]
    assert device_groups(4, 1, []) is None and device_groups(1, 1, gpus) is None  # CPU host; one worker
    with pytest.raises(MoELabError, match="^--workers: 3 workers x 3 device"):
        device_groups(3, 3, gpus)
