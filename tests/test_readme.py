"""The README's commands, run as it says to run them: in a shell that activated `.venv` (here, the
environment running the tests when the checkout has no `.venv` of its own), shrunk to seconds by
overrides appended to each command (never ones the command sets itself)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ACTIVATE = "source .venv/bin/activate"
# A model of seconds; appended to experiment commands, and as `overrides=[...]` to sweep commands.
TINY = [
    "model.d_model=32",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.d_ff=64",
    "model.max_seq_len=32",
    "model.moe.n_experts=4",
    "model.moe.top_k=2",
    "model.moe.expert_hidden=32",
    "data.block_size=32",
    "data.batch_size=4",
    "trainer.max_steps=2",
    "trainer.val_every_n_steps=2",
    "trainer.val_batches=1",
    "monitor.sample_tokens=0",
    "monitor.heatmap_every_n_steps=0",
]


def readme_commands() -> list[str]:
    """Every command line of the README's bash blocks, comments removed, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def tiny(command: str) -> str:
    """The command with TINY added after its own overrides (before its --options, which argparse wants
    last), leaving out the keys it sets itself except trainer.max_steps (a smoke test's 50 steps are
    minutes on a shared 2-core machine)."""
    words = shlex.split(command)
    given = {w.split("=", 1)[0] for w in words if "=" in w} - {"trainer.max_steps"}
    extra = [o for o in TINY if o.split("=", 1)[0] not in given]
    if words[:2] != ["python", "-m"]:
        return command
    if words[2] == "moe_lab.train":
        added = extra
    elif words[2] in ("moe_lab.sweep", "moe_lab.ablate"):  # the study's runs get the tiny model
        added = ["seeds=[0]", f"'overrides=[{','.join(extra)}]'"]
    else:
        return command
    options = next((i for i, w in enumerate(words) if w.startswith("--")), len(words))
    return " ".join([*map(shlex.quote, words[:options]), *added, *map(shlex.quote, words[options:])])


def shell(tmp_path: Path, commands: list[str]) -> subprocess.CompletedProcess:
    """Run `commands` in one bash, from a directory laid out like the checkout, after `source
    .venv/bin/activate`; PATH holds no other Python with torch."""
    work = tmp_path / "checkout"
    work.mkdir()
    for name in ("experiments", "sweeps"):
        (work / name).symlink_to(REPO / name)
    venv = REPO / ".venv"
    if (venv / "bin" / "activate").is_file():
        (work / ".venv").symlink_to(venv)
    else:  # the tests run from another environment: an activate script that puts it first on PATH
        (work / ".venv" / "bin").mkdir(parents=True)
        (work / ".venv" / "bin" / "activate").write_text(
            f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"\n'
        )
    script = "set -e\n" + "\n".join(f"echo '$ {c}'\n{c}" for c in commands) + "\n"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "MOE_LAB_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    return subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=900)


def test_readme_says_to_activate_before_its_first_python_command():
    commands = readme_commands()
    assert commands[:2] == ["make demo", "make test"]  # the two set-up commands, unchanged
    first_python = next(i for i, c in enumerate(commands) if c.startswith(("python", "tensorboard")))
    assert ACTIVATE in commands[:first_python]


def _pick(commands: list[str], *prefixes: str) -> list[str]:
    picked = [c for c in commands if c.startswith(prefixes)]
    assert picked, f"the README has no command starting with {prefixes}"  # a test that finds nothing fails
    return picked


def test_first_hour_commands_work_as_typed(tmp_path):
    """The smoke test, a sweep's dry run, run and report, and TensorBoard, as the README writes them."""
    commands = readme_commands()
    smoke = _pick(commands, "python -m moe_lab.train experiments/shakespeare_moe.yaml trainer.max_steps=50")
    sweep = [c for c in _pick(commands, "python -m moe_lab.sweep sweeps/topk.yaml") if "--workers" not in c]
    report = _pick(commands, "python -m moe_lab.report sweeps_out/topk")
    board = _pick(commands, "tensorboard --logdir sweeps_out/topk")
    script = [
        ACTIVATE,
        "python -c 'import torch, moe_lab'",
        *map(tiny, smoke + sweep + report),
        *(f"{c} --inspect" for c in board),
    ]  # --inspect reads the logs and exits, no server
    proc = shell(tmp_path, script)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    # The smoke run ends with its result and where to look (its warmup of 100 scaled to the run).
    assert "completed after 2 steps" in out and "val loss" in out and "tensorboard --logdir runs" in out
    assert "0/-2" not in out and "v_num" not in out  # the progress bar counts a run in steps
    assert "estimated time: about" in out and "estimated disk:" in out
    assert "sweep finished" in out and "objective_vs_top_k.png" in out
    assert "val/loss" in out  # tensorboard --inspect found the runs' scalars


@pytest.mark.slow
def test_every_readme_experiment_sweep_and_ablation_command_works_as_typed(tmp_path):
    commands = readme_commands()
    runnable = _pick(
        commands,
        "python -m moe_lab.train experiments/",
        "python -m moe_lab.sweep sweeps/",
        "python -m moe_lab.report sweeps_out/",
        "python -m moe_lab.ablate experiments/",
        "python -m moe_lab.report ablations_out/",
    )
    # Commands that name a database server (`dbhost`) need one; tests/test_sweep_postgres.py runs that path.
    runnable = [c for c in runnable if "postgresql" not in c]
    proc = shell(tmp_path, [ACTIVATE, *map(tiny, runnable)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
