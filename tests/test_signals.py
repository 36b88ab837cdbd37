"""Interruptions lose nothing: SIGTERM, SIGINT and SIGUSR1 stop `python -m moe_lab.train` at a step boundary
(last.ckpt saved there, metrics.json and progress.json "interrupted", the command that continues it on stderr,
exit 128 + the signal) and that command finishes the run bit-identically to one never interrupted; a signal
during a validation, with Lightning's SLURM handlers installed, too; a sweep hands its trial back so that the
same command resumes it at once, with no failure and no retry; a worker whose trial was taken away leaves
no progress file saying "running".

The signals are sent from outside once the run's progress.json shows a few steps, as a scheduler would."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import lightning.pytorch as pl
import optuna
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from optuna.trial import TrialState

from moe_lab import signals
from moe_lab.callbacks.fence import Fence
from moe_lab.callbacks.progress_file import ProgressFile
from moe_lab.config import load_config
from moe_lab.errors import Interrupted
from moe_lab.sweep.config import load_sweep
from moe_lab.train import resume_command
from moe_lab.training.run import run
from tests.helpers import write_tiny_experiment

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::DeprecationWarning", "ignore::optuna.exceptions.ExperimentalWarning"
)

# Long enough for a signal to land mid-training; validations and periodic checkpoints rare, so that the
# checkpoint a resumed run starts from is the one the stop saved.
LONG = ["trainer.val_every_n_steps=50", "trainer.checkpoint_every_n_steps=100", "trainer.keep_checkpoints=all"]
# Numbers that differ between two runs of the same training: time, and where the resumed part began.
TIMING = {"tokens_per_s", "train_seconds", "wall_time_s", "resumed_from_step", "this_part"}


def start(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def signal_mid_training(proc: subprocess.Popen, progress_glob: str, signum: int, root: Path) -> None:
    """Send `signum` once a progress.json under `root` shows step 2 or later."""
    deadline = time.time() + 240
    while True:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no progress.json reached step 2"
        for path in root.glob(progress_glob):
            try:
                if json.loads(path.read_text())["step"] >= 2:
                    os.kill(proc.pid, signum)
                    return
            except (OSError, ValueError):
                pass  # being replaced right now
        time.sleep(0.05)


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def train_cmd(config: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "moe_lab.train", str(config), f"output_dir={out}", *LONG]


def test_sigterm_stops_training_at_a_step_and_the_printed_command_continues_it_bit_identically(tmp_path, data_cache):
    config = write_tiny_experiment(tmp_path / "tiny.yaml", data_cache, steps=200, deterministic=True)
    reference = run(load_config(config, [f"output_dir={tmp_path / 'ref'}", *LONG]), quiet=True).run_dir

    proc = start(train_cmd(config, tmp_path / "out"))
    signal_mid_training(proc, "tiny/*/progress.json", signal.SIGTERM, tmp_path / "out")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    run_dir = tmp_path / "out" / "tiny" / "version_0"
    stopped = metrics(run_dir)
    assert stopped["status"] == "interrupted" and 2 <= stopped["steps"] < 200
    assert json.loads((run_dir / "progress.json").read_text())["status"] == "interrupted"
    # Saved at the step it stopped at, not the last periodic checkpoint (every 100 steps).
    assert last_checkpoint(run_dir)["global_step"] == stopped["steps"] != 100
    assert "Traceback" not in stderr and "interrupted by SIGTERM" in stderr
    (command,) = [line.strip() for line in stderr.splitlines() if line.strip().startswith("python -m moe_lab.train")]
    assert command.endswith("version=version_0 trainer.resume=auto")

    resumed = subprocess.run(
        [sys.executable, *shlex.split(command)[1:]], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = metrics(run_dir)
    assert final["resumed_from_step"] == stopped["steps"]
    expected = metrics(reference)
    assert {k: v for k, v in final.items() if k not in TIMING} == {k: v for k, v in expected.items() if k not in TIMING}
    weights, expected_weights = last_checkpoint(run_dir)["state_dict"], last_checkpoint(reference)["state_dict"]
    assert weights.keys() == expected_weights.keys()
    assert all(torch.equal(weights[k], expected_weights[k]) for k in weights)


# SIGUSR1 takes the same path as SIGTERM (the default suite's test above): the long suite checks it end to end.
@pytest.mark.parametrize(
    "signum, code", [(signal.SIGINT, 130), pytest.param(signal.SIGUSR1, 138, marks=pytest.mark.slow)]
)
def test_ctrl_c_and_sigusr1_stop_training_with_their_exit_codes(tmp_path, data_cache, signum, code):
    config = write_tiny_experiment(tmp_path / "tiny.yaml", data_cache, steps=200)
    proc = start(train_cmd(config, tmp_path / "out"))
    signal_mid_training(proc, "tiny/*/progress.json", signum, tmp_path / "out")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code == 128 + signum, stderr
    run_dir = tmp_path / "out" / "tiny" / "version_0"
    assert metrics(run_dir)["status"] == "interrupted"
    assert last_checkpoint(run_dir)["global_step"] == metrics(run_dir)["steps"]
    assert f"interrupted by {signal.Signals(signum).name}" in stderr and "trainer.resume=auto" in stderr


SIGNAL_WHILE_VALIDATING = textwrap.dedent("""
    import os, signal, sys
    import lightning.pytorch as pl
    from moe_lab.cli import run_main
    from moe_lab.config import load_config
    from moe_lab.training.run import run

    class SignalWhileValidating(pl.Callback):  # as a scheduler's signal landing mid-validation
        def on_validation_batch_start(self, trainer, *args):
            if trainer.global_step == 4:
                os.kill(os.getpid(), int(sys.argv[1]))

    cfg = load_config(sys.argv[2], sys.argv[3:])
    sys.exit(run_main(lambda: run(cfg, extra_callbacks=(SignalWhileValidating(),), quiet=True), stop_signals=True))
""")

# What SLURM sets in a job step: Lightning then installs its own SIGTERM handler and SIGUSR1 auto-requeue.
SLURM_ENV = {
    "SLURM_NTASKS": "1",
    "SLURM_JOB_NAME": "train",
    "SLURM_JOB_ID": "1234",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NODELIST": "localhost",
}


@pytest.mark.slow  # 20 s: two runs; the signal handling itself is unit-tested in the default suite
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_during_validation_stops_at_the_next_step_also_under_slurm(tmp_path, data_cache, signum):
    """Validations at steps 2, 4, ...; the signal lands in the one at step 4: training stops after step 5
    (not a checkpoint step) with last.ckpt saved there, Lightning's SIGTERMException (exit 0) and SLURM
    requeue (hpc_ckpt_*.ckpt, scontrol) kept out."""
    config = write_tiny_experiment(tmp_path / "tiny.yaml", data_cache, steps=40)
    proc = subprocess.run(
        [sys.executable, "-c", SIGNAL_WHILE_VALIDATING, str(int(signum)), str(config), f"output_dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **SLURM_ENV},
    )
    assert proc.returncode == 128 + signum, proc.stderr[-3000:]
    run_dir = tmp_path / "tiny" / "version_0"
    assert metrics(run_dir)["status"] == "interrupted" and metrics(run_dir)["steps"] == 5
    assert last_checkpoint(run_dir)["global_step"] == 5
    assert not list(run_dir.rglob("hpc_ckpt*"))


def test_a_signal_raises_at_once_outside_training_and_wakes_a_waiting_worker():
    """Outside a deferred block (data preparation, a sweep's parent) a stop signal acts at once; inside one it
    is recorded, a repeat is ignored, and an idle sweep worker's wait for other workers ends when it arrives."""
    before = signal.getsignal(signal.SIGINT)  # pytest's handler, or SIG_IGN in a shell's background job
    with signals.handled():
        with pytest.raises(Interrupted) as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        assert stop.value.signum == signal.SIGTERM
    with signals.handled(), signals.deferred():
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        began = time.monotonic()
        signals.wait(30)
        assert time.monotonic() - began < 10 and signals.received() == signal.SIGUSR1
        os.kill(os.getpid(), signal.SIGINT)  # a repeat: ignored
        assert signals.received() == signal.SIGUSR1
        with pytest.raises(Interrupted):
            signals.raise_if_received()
    assert signal.getsignal(signal.SIGINT) is before  # the handler from before is back


def test_the_resume_command_names_the_run_directory_and_resume_auto():
    run_dir = Path("/runs/tiny/version_3")
    args = ["exp.yaml", "trainer.resume=/old/last.ckpt", "seed=1"]
    assert resume_command(args, run_dir) == (
        "python -m moe_lab.train exp.yaml seed=1 version=version_3 trainer.resume=auto"
    )
    assert resume_command(["exp.yaml", "version=mine"], run_dir).endswith("exp.yaml version=mine trainer.resume=auto")
    # Stopped before a checkpoint existed: nothing to resume, the same command starts afresh.
    assert resume_command(["exp.yaml", "seed=1"], None) == "python -m moe_lab.train exp.yaml seed=1"


def test_sigterm_hands_a_sweep_trial_back_and_the_same_command_resumes_it_at_once(tmp_path, data_cache):
    write_tiny_experiment(tmp_path / "tiny.yaml", data_cache, steps=100)
    # A trial left RUNNING would hold the re-run for the grace period, then fail and be retried: an hour,
    # so a re-run that waited for it runs into its timeout (no wall-clock threshold to trip on a busy machine).
    grace = 3600
    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"base: tiny.yaml\noutput_dir: {tmp_path / 'out'}\nheartbeat_interval: 1\ngrace_period: {grace}\n"
        "overrides: [trainer.val_every_n_steps=50, trainer.checkpoint_every_n_steps=100]\n"
        "sampler: grid\nspace:\n  model.moe.top_k: [1, 2]\n"
    )
    cmd = [sys.executable, "-m", "moe_lab.sweep", str(path)]
    proc = start(cmd)
    signal_mid_training(proc, "sweep/trials/t000-*/seed0/progress.json", signal.SIGTERM, tmp_path / "out")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stdout + stderr
    sweep = load_sweep(path)
    study = optuna.load_study(study_name=sweep.name, storage=sweep.storage_url)
    (first, second) = study.get_trials()
    assert first.state == TrialState.WAITING and first.user_attrs["interrupted"] == "SIGTERM"
    assert second.state == TrialState.WAITING and "interrupted" not in second.user_attrs  # never claimed
    assert "trial 0 interrupted" in stdout and "failed" not in stdout.split("trial 0 interrupted")[1].split("\n")[0]
    assert f"python -m moe_lab.sweep {path}" in stderr
    seed_dir = tmp_path / "out" / "sweep" / "trials" / "t000-top_k=1" / "seed0"
    stopped = metrics(seed_dir)
    assert stopped["status"] == "interrupted"
    assert last_checkpoint(seed_dir)["global_step"] == stopped["steps"]

    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=grace / 6)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]  # no failure, no retry
    assert [t.user_attrs["attempt"] for t in trials] == [0, 0]
    assert trials[0].user_attrs["run_dirs"] == ["trials/t000-top_k=1/seed0"]
    assert metrics(seed_dir)["status"] == "completed" and metrics(seed_dir)["resumed_from_step"] == stopped["steps"]


def test_a_worker_whose_trial_was_taken_away_leaves_no_progress_file_saying_running(tmp_path):
    """The fence raises in the same hook in which the progress file has just written "running" (a worker
    resumed after a pause longer than the grace period): the file must end saying the attempt ended."""
    checks = []

    def taken_away_on_the_third_check():
        checks.append(1)
        if len(checks) == 3:
            raise RuntimeError("trial 0 was failed by another worker (heartbeat missed)")

    progress = tmp_path / "progress.json"
    trainer = pl.Trainer(
        max_steps=10,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[ProgressFile(progress, 0.0, min_interval_s=0.0), Fence(taken_away_on_the_third_check, 0.0)],
        default_root_dir=tmp_path,
    )
    with pytest.raises(RuntimeError, match="failed by another worker"):
        trainer.fit(BoringModel())
    written = json.loads(progress.read_text())
    assert written["step"] == 3 and written["status"] == "failed"
