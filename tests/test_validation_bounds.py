"""Values that pass a type check but not reason are refused in one line naming the key, before anything
runs: names that would leave output_dir, seeds outside numpy's 32 bits, infinite rates and coefficients,
grids and trial counts that would fill memory or enqueue forever, more workers than cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from moe_lab.config import load_config
from moe_lab.errors import ConfigError
from moe_lab.sweep.config import load_sweep
from tests.helpers import write_tiny_experiment

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def exp(tmp_path):
    return write_tiny_experiment(tmp_path / "tiny.yaml", tmp_path / "cache")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("name=..", "name: must be a single directory name"),
        ("name=.", "name: must be a single directory name"),
        ("version=..", "version: must be a single directory name"),
        ("version=a/b", "version: must be a single directory name"),
        ("seed=-1", "seed: must be in [0, 2^32), got -1"),
        ("seed=4294967296", "seed: must be in [0, 2^32), got 4294967296"),
        ("optim.lr=inf", "optim.lr: must be a finite number > 0, got inf"),
        ("optim.lr=nan", "optim.lr: must be a finite number > 0, got nan"),
        ("model.moe.aux_loss_coef=inf", "model.moe.aux_loss_coef: must be a finite number >= 0, got inf"),
        ("model.moe.z_loss_coef=-inf", "model.moe.z_loss_coef: must be a finite number >= 0, got -inf"),
        ("optim.weight_decay=inf", "optim.weight_decay: must be a finite number >= 0, got inf"),
    ],
)
def test_experiment_values_out_of_reason(exp, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(exp, [override])
    assert str(err.value).startswith(message), str(err.value)


def test_a_nul_byte_in_a_name_from_a_yaml_file(tmp_path, exp):
    path = tmp_path / "nul.yaml"
    path.write_text(f'extends: {exp.name}\nname: "a\\0b"\n')
    with pytest.raises(ConfigError, match="^name: must be a single directory name"):
        load_config(path)


def sweep_file(tmp_path: Path, exp: Path, body: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(f"base: {exp.name}\noutput_dir: {tmp_path / 'out'}\n" + body)
    return path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("name: ../x\nspace: {model.moe.top_k: [1]}\n", "name: must be a single directory name"),
        ("seeds: [0, -3]\nspace: {model.moe.top_k: [1]}\n", "seeds: must be in [0, 2^32), got -3"),
        (
            "space: {model.d_model: {type: int, low: 1, high: 1000000000}}\n",
            "space: the grid has 1,000,000,000 configurations (1000000000); at most 10,000",
        ),
        (
            "space:\n  model.d_model: {type: int, low: 16, high: 1016}\n"
            "  model.n_layers: {type: int, low: 1, high: 100}\n",
            "space: the grid has 100,100 configurations (1001 x 100)",
        ),
        (
            "space: {model.d_model: {type: int, low: 16, high: 64, step: 0.5}}\n",
            "space.model.d_model: int range needs an integer step, got 0.5",
        ),
        (
            "sampler: random\nn_trials: 1000000000\nspace: {optim.lr: {type: float, low: 0.001, high: 0.01}}\n",
            "n_trials: at most 10000 trials a study, got 1000000000",
        ),
    ],
)
def test_sweep_values_out_of_reason(tmp_path, exp, body, message):
    with pytest.raises(ConfigError) as err:
        load_sweep(sweep_file(tmp_path, exp, body))
    assert str(err.value).startswith(message), str(err.value)


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_command_lines_say_it_in_one_line_and_write_nothing(tmp_path, exp):
    train = cli(["-m", "moe_lab.train", str(exp), "name=..", f"output_dir={tmp_path / 'runs'}"], tmp_path)
    assert train.returncode == 2 and train.stderr.startswith("error: name: ") and train.stderr.count("\n") == 1
    sweep = sweep_file(tmp_path, exp, "space: {model.moe.top_k: [1]}\n")
    many = (os.cpu_count() or 1) + 1
    workers = cli(["-m", "moe_lab.sweep", str(sweep), "--workers", str(many)], tmp_path)
    assert workers.returncode == 2 and workers.stderr.count("\n") == 1, workers.stderr
    assert workers.stderr.startswith(f"error: --workers: {many} workers on a host with {many - 1} cores")
    assert "--oversubscribe" in workers.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()
