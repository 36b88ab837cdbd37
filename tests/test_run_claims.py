"""Run directories are claimed, not guessed: two runs of one name started together get two directories,
each holding one run's records whole; a directory another live process writes into is never shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from moe_lab.artifacts.run_dir import LOCK, claim_run_dir
from moe_lab.errors import ConfigError
from tests.helpers import write_tiny_experiment

ROOT = Path(__file__).resolve().parents[1]


def test_a_held_directory_is_never_claimed_twice(tmp_path):
    first = claim_run_dir(tmp_path / "exp", None)
    second = claim_run_dir(tmp_path / "exp", None)  # version_0 is held: the next one
    assert (first.path.name, second.path.name) == ("version_0", "version_1")
    with pytest.raises(ConfigError, match="version: .*version_0: another run is writing into it now"):
        claim_run_dir(tmp_path / "exp", "version_0")  # a named version held by a live run
    first.release()
    again = claim_run_dir(tmp_path / "exp", "version_0")  # let go: it may be continued
    assert again.path == first.path and not again.made
    again.release()
    second.release(remove_if_unused=True)  # a refused run leaves no directory
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["version_0"]
    assert sorted(p.name for p in first.path.iterdir()) == [LOCK]


def test_two_runs_of_one_name_started_together_get_one_directory_each(tmp_path):
    exp = write_tiny_experiment(tmp_path / "tiny.yaml", tmp_path / "cache", steps=3)
    warm = [sys.executable, "-m", "moe_lab.train", str(exp), f"output_dir={tmp_path / 'warm'}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    assert subprocess.run(warm, cwd=tmp_path, env=env, capture_output=True).returncode == 0  # data cache built
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "moe_lab.train", str(exp), f"output_dir={tmp_path / 'runs'}", f"seed={seed}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    outputs = [p.communicate(timeout=600) for p in runs]
    assert [p.returncode for p in runs] == [0, 0], outputs
    run_dirs = sorted((tmp_path / "runs" / "tiny").iterdir())
    assert [d.name for d in run_dirs] == ["version_0", "version_1"]
    seeds = set()
    for run_dir in run_dirs:  # each directory holds one run's records, all of the same seed
        seed = yaml.safe_load((run_dir / "config.yaml").read_text())["seed"]
        assert json.loads((run_dir / "env.json").read_text())["seed"] == seed
        ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["hyper_parameters"]["config"]["seed"] == seed
        assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
        # TensorBoard's event files (events.out.tfevents.<time>.<host>.<pid>.<n>) all come from one process.
        assert len({f.name.split(".")[-2] for f in run_dir.glob("events.out.tfevents.*")}) == 1
        seeds.add(seed)
    assert seeds == {1, 2}
