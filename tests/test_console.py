"""The sweep console: a tiny sweep's captured output (not a TTY: the plain-line fallback) reports every
trial and the counts, and none of the library chatter, which lands in each trial's train.log instead."""

import io
import subprocess
import sys
import warnings
from pathlib import Path

import optuna
import pytest

from moe_lab.cli import filter_known_harmless_warnings
from moe_lab.sweep.config import load_sweep
from moe_lab.sweep.console import SweepConsole
from tests.helpers import write_tiny_experiment

REPO = Path(__file__).resolve().parents[1]
# What a sweep console used to repeat for every trial and seed (issue 14).
NOISE = (
    "GPU available",
    "TPU available",
    "litlogger",
    "LeafSpec",
    "`Trainer.fit` stopped",
    "Heartbeat of storage",
    "A new study created",
    "Warning",
)


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, data_cache):
    tmp = tmp_path_factory.mktemp("console")
    write_tiny_experiment(tmp / "tiny.yaml", data_cache, steps=2)
    path = tmp / "sweep.yaml"
    path.write_text(f"base: tiny.yaml\noutput_dir: {tmp / 'out'}\nsampler: grid\nspace:\n  model.moe.top_k: [1, 2]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "moe_lab.sweep", str(path)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    return load_sweep(path), proc.stdout + proc.stderr


@pytest.mark.slow
def test_console_reports_trials_and_counts_without_noise(tiny_sweep):
    sweep, output = tiny_sweep
    study = optuna.load_study(study_name=sweep.name, storage=sweep.storage_url)
    for trial in study.get_trials():
        # A grid trains one (configuration, seed) per trial: the console names both.
        unit = f"{trial.user_attrs['label']} seed {trial.user_attrs['unit_seed']}"
        assert f"trial {trial.number} started: {unit}" in output
        assert f"trial {trial.number} done: {unit}, val_loss = {trial.value:.4f}" in output
    assert "2 done, 0 pruned, 0 failed, 0 running, 0 waiting" in output
    for line in NOISE:
        assert line not in output, line


def test_each_trial_log_holds_its_lightning_output(tiny_sweep):
    sweep, _ = tiny_sweep
    logs = sorted(sweep.study_dir.glob("trials/*/seed0/train.log"))
    assert len(logs) == 2
    for log in logs:
        text = log.read_text()
        assert "GPU available" in text and "`Trainer.fit` stopped: `max_steps=2` reached" in text


def test_live_view_draws_the_study(tiny_sweep):
    """The rich view (what a terminal gets), drawn once into a buffer over the finished study."""
    sweep, _ = tiny_sweep
    study = optuna.load_study(study_name=sweep.name, storage=sweep.storage_url)
    buffer = io.StringIO()
    with SweepConsole(sweep, study, planned_flops=1.0, stream=buffer, live=True, refresh_s=0.05):
        pass
    text = buffer.getvalue()
    assert f"sweep {sweep.name}: 2 done, 0 pruned, 0 failed, 0 running, 0 waiting" in text
    assert "configuration" in text and "val loss" in text  # the table of running trials (empty now)


def test_only_the_known_harmless_warnings_are_filtered():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filter_known_harmless_warnings()
        warnings.warn("Heartbeat of storage is supposed to be used with Study.optimize.", UserWarning, stacklevel=1)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("Heartbeat of storage is supposed to be used with Study.optimize.", RuntimeWarning, stacklevel=1)
        warnings.warn("something a researcher should see", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == [
        "Heartbeat of storage is supposed to be used with Study.optimize.",
        "something a researcher should see",
    ]


def test_a_trial_shorter_than_one_refresh_still_gets_its_started_line(tmp_path):
    """Waiting at one snapshot, complete at the next: both lines appear, in order. A trial that had ended
    before the console began (a resumed sweep) is reported as ended only."""
    from types import SimpleNamespace

    sweep = SimpleNamespace(
        study_dir=tmp_path, n_trials=lambda: 2, cfg=SimpleNamespace(objective=SimpleNamespace(metric="val_loss"))
    )
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(value=1.5, user_attrs={"label": "old"}))
    console = SweepConsole(sweep, study, planned_flops=1.0, stream=io.StringIO(), live=False)
    assert console.snapshot().events == ["trial 0 done: old, val_loss = 1.5000"]
    study.add_trial(optuna.trial.create_trial(value=1.25, user_attrs={"label": "fast"}))
    assert console.snapshot().events == ["trial 1 started: fast", "trial 1 done: fast, val_loss = 1.2500"]
    assert console.snapshot().events == []
