"""resume=auto resumes only the run the checkpoint belongs to: a changed setting that a resume must keep
(the model, the data, the optimiser, the seed) is refused in one line naming the keys, before anything is
written; an intact checkpoint of another model is not called damaged; the settings a resume may change
(how long, where, how it logs and runs) resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from moe_lab.config import load_config
from moe_lab.config.resume_rules import changes_on_resume, may_change
from moe_lab.errors import ConfigError
from moe_lab.training.resume_check import check_resume_checkpoint
from tests.helpers import write_tiny_experiment

ROOT = Path(__file__).resolve().parents[1]


def train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "moe_lab.train", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume_rules")
    exp = write_tiny_experiment(base / "tiny.yaml", base / "cache", steps=2)
    done = train([str(exp), f"output_dir={base / 'runs'}"], base)
    assert done.returncode == 0, done.stderr
    return base, exp


def test_a_changed_setting_is_refused_in_one_line_naming_it_and_nothing_is_written(trained, tmp_path):
    """top_k 2 -> 1 keeps every tensor shape: before, the run resumed silently and recorded the new config."""
    base, exp = trained
    shutil.copytree(base / "runs", tmp_path / "runs")
    before = tree(tmp_path / "runs")
    change = "model.moe.top_k=1"
    result = train([str(exp), f"output_dir={tmp_path / 'runs'}", "trainer.resume=auto", change], tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: trainer.resume: auto: ")
    assert "model.moe.top_k: 2 in the checkpoint, 1 now" in result.stderr and "damaged" not in result.stderr
    assert "continue anyway with trainer.resume=" in result.stderr
    assert tree(tmp_path / "runs") == before  # nothing written


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("seed=1", "seed: 0 in the checkpoint, 1 now"),
        ("model.moe.n_experts=8", "model.moe.n_experts: 4 in the checkpoint, 8 now"),  # other shapes: "damaged" before
        ("optim.lr=0.1", "optim.lr: "),
    ],
)
def test_each_setting_a_resume_must_keep(trained, change, named):
    base, exp = trained
    ckpt = base / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    cfg = load_config(exp, [f"output_dir={base / 'runs'}", "trainer.resume=auto", change])
    with pytest.raises(ConfigError) as err:
        check_resume_checkpoint(cfg, ckpt)
    assert named in str(err.value) and "damaged" not in str(err.value)


def test_settings_a_resume_may_change_resume(trained, tmp_path):
    base, exp = trained
    shutil.copytree(base / "runs", tmp_path / "runs")
    args = [str(exp), f"output_dir={tmp_path / 'runs'}", "trainer.resume=auto", "trainer.max_steps=3"]
    result = train([*args, "trainer.log_every_n_steps=1", "monitor.sample_tokens=0", "trainer.threads=1"], tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "runs" / "tiny" / "version_0" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 3


def test_the_rules_by_hand():
    saved = {"seed": 0, "trainer": {"max_steps": 10, "precision": "32-true"}, "monitor": {"log_every_n_steps": 5}}
    now = {"seed": 0, "trainer": {"max_steps": 20, "precision": "bf16-mixed"}, "monitor": {"log_every_n_steps": 1}}
    assert changes_on_resume(saved, now) == ["trainer.precision: '32-true' in the checkpoint, 'bf16-mixed' now"]
    assert may_change("monitor.sample_prompt") and may_change("trainer.max_steps")
    assert not may_change("trainer.max_steps_extra") and not may_change("model.moe.top_k")
