"""What a new user meets first: every README-style mistake is one line, exit 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from moe_lab.config import load_config
from moe_lab.interop.checkpoint import save_pretrained
from moe_lab.model import MoETransformer
from tests.helpers import write_tiny_experiment

ROOT = Path(__file__).resolve().parents[1]


def cli(args: list[str], cwd: Path, warnings: str = "ignore") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env.update({"PYTHONPATH": str(ROOT), **({"PYTHONWARNINGS": warnings} if warnings else {})})
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_model_init_with_model_keys_that_change_its_shapes_is_one_line(tmp_path):
    """A fine-tune YAML that extends an experiment setting another width: before, a 30-line RuntimeError
    from load_state_dict; now one line naming model_init and the first tensor that does not fit."""
    exp = write_tiny_experiment(tmp_path / "tiny.yaml", tmp_path / "cache")
    cfg = load_config(exp)
    save_pretrained(tmp_path / "pre", cfg.model, MoETransformer(cfg.model).state_dict())
    wider = cfg.model.d_model * 2
    (tmp_path / "ft.yaml").write_text(
        f"extends: tiny.yaml\nmodel_init: {tmp_path / 'pre'}\nmodel:\n  d_model: {wider}\n"
    )
    result = cli(["-m", "moe_lab.train", str(tmp_path / "ft.yaml"), f"output_dir={tmp_path / 'runs'}"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: model_init: {tmp_path / 'pre'}: ")
    assert f"[256, {cfg.model.d_model}], the model config gives [256, {wider}]" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_train_prints_only_its_own_lines_and_says_why_a_short_run_has_no_best_checkpoint(tmp_path):
    """Lightning's device lines, its litlogger tip, "`Trainer.fit` stopped" and torch's LeafSpec warning
    used to add 5 lines to every run: the console shows moe_lab's summary and nothing else. A run shorter
    than its validation interval used to print "best -": it says why it has no best.ckpt."""
    exp = write_tiny_experiment(tmp_path / "tiny.yaml", tmp_path / "cache")
    args = [str(exp), f"output_dir={tmp_path / 'runs'}", "trainer.val_every_n_steps=10", "trainer.max_steps=3"]
    result = cli(["-m", "moe_lab.train", *args], tmp_path, warnings="")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("run directory: ") and "completed after 3 steps" in result.stdout
    assert "GPU available" not in result.stdout and "litlogger" not in result.stdout
    assert "no best.ckpt: validation first ran after the last step" in result.stdout
    assert "best -" not in result.stdout
    assert not (tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "best.ckpt").exists()

    # Resumed, the run used to add Lightning's "Checkpoint directory ... exists and is not empty" (and more).
    resumed = cli(
        ["-m", "moe_lab.train", *args[:-1], "trainer.max_steps=5", "trainer.resume=auto"], tmp_path, warnings=""
    )
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr == ""
    assert "completed after 5 steps" in resumed.stdout and "version_0" in resumed.stdout


def test_the_tests_write_no_cache_into_the_users_home(tmp_path):
    """What conftest.py sets up, checked from a fresh process: moe_lab's caches and wandb's resolve under the
    session's temporary home, not the user's (the session also fails at its end if the real caches changed)."""
    from tests import conftest

    probe = (
        "from moe_lab.sweep.estimate import cache_path; from moe_lab.data.config import DataConfig, resolve_cache_dir; "
        "import os; print(cache_path()); print(resolve_cache_dir(DataConfig())); print(os.environ['WANDB_DIR'])"
    )
    result = cli(["-c", probe], tmp_path)
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        assert Path(line).is_relative_to(conftest.TEST_HOME), line
