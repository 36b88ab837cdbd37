"""What a sweep costs, told honestly and paid once: the console's ETA takes trials that ended early (pruned,
reused, repeated) off what is left; a dry run times each model shape once; a sampler that proposes a finished
configuration again gets its result without training it twice."""

import io
import json
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from moe_lab.artifacts.run_dir import PROGRESS
from moe_lab.artifacts.run_index import REUSED
from moe_lab.sweep import console as console_module
from moe_lab.sweep import estimate
from moe_lab.sweep.command import configuration_flops, dry_run, plan_flops
from moe_lab.sweep.config import load_sweep
from moe_lab.sweep.console import SweepConsole
from moe_lab.sweep.runner import open_study, run_worker
from tests.helpers import write_tiny_experiment

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::DeprecationWarning", "ignore::optuna.exceptions.ExperimentalWarning"
)
STEPS = 100


def write_sweep(tmp_path: Path, data_cache: Path, body: str, steps: int = STEPS) -> Path:
    write_tiny_experiment(tmp_path / "tiny.yaml", data_cache, steps=steps)
    path = tmp_path / "sweep.yaml"
    path.write_text(f"base: tiny.yaml\noutput_dir: {tmp_path / 'out'}\n" + body)
    return path


def write_progress(run_dir: Path, step: int, flops_per_step: float, status: str = "running") -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = {"status": status, "step": step, "max_steps": STEPS, "flops_per_step": flops_per_step}
    (run_dir / PROGRESS).write_text(json.dumps(progress))


def test_eta_takes_off_what_pruned_and_reused_trials_will_never_train(tmp_path, data_cache, monkeypatch):
    """Three sampled trials of 100 steps: trial 0 trains 10 steps in 10 s and is pruned; trial 1 is a reused run
    (done, no time). What is left is trial 2's plan alone, at the rate trial 0 trained."""
    body = "sampler: random\nn_trials: 3\npruner: median\nspace:\n  optim.lr: [0.001]\n"
    path = write_sweep(tmp_path, data_cache, body)
    sweep = load_sweep(path)
    per_config = configuration_flops(sweep)
    assert len(per_config) == 3 and plan_flops(sweep) == pytest.approx(sum(per_config))
    per_step = per_config[0] / STEPS
    study = open_study(sweep)
    now = [1000.0]
    monkeypatch.setattr(console_module, "time", SimpleNamespace(time=lambda: now[0]))
    console = SweepConsole(
        sweep, study, planned_flops=plan_flops(sweep), config_flops=per_config, stream=io.StringIO(), live=False
    )
    trial = study.ask()  # trial 0 (config 0), as a worker claims it
    trial.set_user_attr("label", "lr=0.001")
    runs = sweep.study_dir / "trials"
    write_progress(runs / "t000-lr=0.001" / "seed0", 0, per_step)
    assert console.snapshot().eta_s is None  # nothing trained yet: no rate
    now[0] += 10.0
    write_progress(runs / "t000-lr=0.001" / "seed0", 10, per_step)
    running = console.snapshot()
    assert running.eta_s == pytest.approx(290 * per_step / (per_step * 10 / 10.0))  # 290 steps left at 1 step/s
    study.tell(trial, state=TrialState.PRUNED)
    reused = study.ask()  # trial 1: copied from the run index, with the original's finished progress.json
    reused.set_user_attr("label", "lr=0.001")
    write_progress(runs / "t001-lr=0.001" / "seed0", STEPS, per_step, status="finished")
    (runs / "t001-lr=0.001" / "seed0" / REUSED).write_text("{}")
    study.tell(reused, 1.0)
    pruned = console.snapshot()
    assert pruned.eta_s == pytest.approx(STEPS)  # trial 2 alone, still at 1 step/s
    assert pruned.counts["pruned"] == 1 and pruned.counts["done"] == 1
    # A pruner (or the collapse detector) may stop trial 2 early too: the ETA is a bound, and says so.
    assert "ETA 1m40s (upper bound)" in console.status_line(pruned)
    no_pruning = load_sweep(path, ["pruner=none", "collapse_prunes=false"])
    assert "ETA 1m40s" in SweepConsole(no_pruning, study, 1.0).status_line(pruned)
    assert "upper bound" not in SweepConsole(no_pruning, study, 1.0).status_line(pruned)


def test_dry_run_times_each_model_shape_once(tmp_path, data_cache, capsys, monkeypatch):
    """Three learning rates, one model: timed once, even on a busy machine (whose times are not cached)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(estimate, "_machine_cpu_s", lambda: None)  # busy by the load average
    monkeypatch.setattr(estimate.os, "getloadavg", lambda: ((estimate.os.cpu_count() or 1) + 2.0, 0.0, 0.0))
    timed = []

    def measure(cfg, threads, concurrent=1):
        timed.append(cfg.optim.lr)
        return estimate.StepTimes(train_s=0.1, eval_s=0.05, threads=threads)

    monkeypatch.setattr(estimate, "measure_step_times", measure)
    path = write_sweep(tmp_path, data_cache, "sampler: grid\nspace:\n  optim.lr: [0.001, 0.003, 0.01]\n")
    dry_run(load_sweep(path))
    out = capsys.readouterr().out
    assert len(timed) == 1, timed
    assert out.count(" s/run") == 3 and "other processes kept the cores busy" in out
    # Another model shape is timed on its own.
    body = "sampler: grid\nspace:\n  optim.lr: [0.001, 0.01]\n  model.moe.top_k: [1, 2]\n"
    path = write_sweep(tmp_path, data_cache, body)
    timed.clear()
    dry_run(load_sweep(path))
    assert len(timed) == 2


def test_tpe_proposing_a_finished_configuration_again_reuses_its_result(tmp_path, data_cache):
    """A space with one point: the sampler can only propose it again. The second trial trains nothing."""
    path = write_sweep(tmp_path, data_cache, "sampler: tpe\nn_trials: 2\nspace:\n  optim.lr: [0.001]\n", steps=2)
    sweep = load_sweep(path)
    log = []
    assert run_worker(sweep, log=log.append) == 2
    study = optuna.load_study(study_name=sweep.name, storage=sweep.storage_url)
    first, second = study.get_trials()
    assert first.state == second.state == TrialState.COMPLETE
    assert second.value == first.value and second.user_attrs["duplicate_of"] == 0
    assert "duplicate_of" not in first.user_attrs
    trained = sorted(p.relative_to(sweep.study_dir).as_posix() for p in sweep.study_dir.glob("trials/*/seed*"))
    assert trained == ["trials/t000-lr=0.001/seed0"]
    assert "trial 1 val_loss = " in log[-1] and "same parameters as trial 0, not trained again" in log[-1]
    # The console says so, as the trial ends.
    events = SweepConsole(sweep, study, planned_flops=1.0, stream=io.StringIO(), live=False).snapshot().events
    assert f"trial 1 done: lr=0.001, val_loss = {second.value:.4f} (same parameters as trial 0)" in events


def test_a_table_wider_than_the_terminal_cuts_the_configuration_not_the_numbers():
    from collections import Counter

    from rich.console import Console

    label = "top_k=2,n_experts=16,lr=0.000312,aux_loss_coef=0.01,router=noisy_topk"
    row = {"trial": 12, "label": label, "seed": 0, "step": 1234, "max_steps": 5000}
    row |= {"train_loss": 3.1234, "val_loss": 3.2345, "tokens_per_s": 12345.0}
    snap = console_module.Snapshot(Counter(running=1), [row], [], elapsed_s=100.0, eta_s=200.0)
    sweep = SimpleNamespace(name="wide", stops_early=lambda: None)
    console = SweepConsole(sweep, None, 1.0, stream=io.StringIO())
    terminal = Console(file=io.StringIO(), width=80)
    terminal.print(console._table(snap, terminal.width))
    body = terminal.file.getvalue().splitlines()[2:]  # below the title (the status line)
    assert max(len(line) for line in body) <= 80
    cells = next(line for line in body if "1234/5000" in line)
    assert "top_k=2,n_exp" in cells and label not in cells and "\u2026" in cells
    assert all(number in cells for number in ("12", "3.1234", "3.2345", "12345"))
    wide = Console(file=io.StringIO(), width=200)
    wide.print(console._table(snap, wide.width))
    assert label in wide.file.getvalue()
    # The plain lines (a pipe, CI) cut the label at the terminal's width too; the started line has it whole.
    line = SweepConsole.trial_line(row, 100)
    assert len(line) == 100 and line.endswith("12345 tok/s") and label not in line
    assert label in SweepConsole.trial_line(row, 200)
