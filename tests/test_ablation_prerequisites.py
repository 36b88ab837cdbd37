"""An ablation's prerequisite runs (moe_lab.sweep.prerequisites) end to end on a tiny experiment: they train
per seed before any arm, each arm's `@name` is its own seed's run (in the config.yaml it records, and in the
weights it starts from: steps that change nothing leave the dense run's val loss), a second run of the command
trains nothing, and a bad `@name` is one line. Also the shipped upcycling ablation's compute matching."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moe_lab.ablate import load_ablation
from moe_lab.config import derive, load_config
from moe_lab.config.budget import training_flops, training_flops_per_step
from moe_lab.errors import ConfigError
from moe_lab.model.config import renormalizes
from moe_lab.sweep import prerequisite_runs
from tests.helpers import write_tiny_experiment

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::DeprecationWarning", "ignore::optuna.exceptions.ExperimentalWarning"
)

# Steps that change nothing (lr 1e-12, no decay): each arm ends where it started. Top-2 renormalised over
# experts as wide as the dense FFN (d_ff 64) is the upcycle that computes the dense model exactly.
ABLATION = """
paper: "Test paper"
claim: "upcycled beats dense"
base: tiny.yaml
output_dir: {out}
seeds: [0, 1]
compute_matching: none
overrides: [model.moe.top_k=2, model.moe.expert_hidden=64]
prerequisites:
  dense: [model.moe.placement=none]
arms:
  dense_continued: [model.moe.placement=none, model_init=@dense, optim.lr=1e-12, optim.weight_decay=0]
  upcycled: [upcycle.method=copy, upcycle.source=@dense, optim.lr=1e-12, optim.weight_decay=0]
claims:
  - {{metric: val_loss, arm: upcycled, less_than: dense_continued}}
"""


def write(folder: Path, data_cache: Path, text: str = ABLATION) -> Path:
    write_tiny_experiment(folder / "tiny.yaml", data_cache, deterministic=True)
    path = folder / "abl.yaml"
    path.write_text(text.format(out=folder / "out"))
    return path


def ablate(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "moe_lab.ablate", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def study(tmp_path_factory, data_cache) -> Path:
    path = write(tmp_path_factory.mktemp("prerequisites"), data_cache)
    done = ablate(str(path))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return path.parent / "out" / "abl"


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]


def test_prerequisites_train_per_seed_before_any_arm(study):
    dense = [study / "prerequisites" / "dense" / f"seed{s}" for s in (0, 1)]
    assert [metrics(d)["status"] for d in dense] == ["completed", "completed"]
    arms = sorted(study.glob("trials/*/seed*"))
    assert len(arms) == 4
    last_prerequisite = max((d / "metrics.json").stat().st_mtime for d in dense)
    assert all((arm / "config.yaml").stat().st_mtime > last_prerequisite for arm in arms)


@pytest.mark.parametrize("seed", [0, 1])
def test_each_arm_records_and_starts_from_its_own_seeds_dense_run(study, seed):
    dense_dir = (study / "prerequisites" / "dense" / f"seed{seed}").resolve()
    continued = study / "trials" / "t000-arm=dense_continued" / f"seed{seed}"
    upcycled = study / "trials" / "t001-arm=upcycled" / f"seed{seed}"
    assert load_config(continued / "config.yaml").model_init == str(dense_dir)
    assert load_config(upcycled / "config.yaml").upcycle.source == str(dense_dir)
    # The weights: every expert of the upcycled MoE is the dense FFN of its layer, the rest the dense model.
    dense, moe = weights(dense_dir), weights(upcycled)
    for name, tensor in dense.items():
        if ".ffn." not in name:
            torch.testing.assert_close(moe[name], tensor, rtol=0, atol=1e-6)
    for layer in (0, 1):
        w_in = dense[f"model.blocks.{layer}.ffn.w_in.weight"]
        for expert in moe[f"model.blocks.{layer}.ffn.experts.w_in"]:
            torch.testing.assert_close(expert, w_in, rtol=0, atol=1e-6)
    # ... and both arms compute the dense model: its val loss, measured by three runs of two architectures.
    dense_loss = metrics(dense_dir)["val_loss"]
    assert metrics(continued)["val_loss"] == pytest.approx(dense_loss, abs=1e-5)
    assert metrics(upcycled)["val_loss"] == pytest.approx(dense_loss, abs=1e-4)
    other = metrics(study / "prerequisites" / "dense" / f"seed{1 - seed}")["val_loss"]
    assert abs(other - dense_loss) > 1e-3  # the seeds' dense runs differ: the match above is not by chance


def test_the_report_lists_each_prerequisite_with_its_seeds_val_loss(study):
    losses = [metrics(study / "prerequisites" / "dense" / f"seed{s}")["val_loss"] for s in (0, 1)]
    md = (study / "results.md").read_text()
    assert "## Prerequisites" in md
    by_seed = f"0: {losses[0]:.4f}, 1: {losses[1]:.4f}"
    assert f"- `dense`: `model.moe.placement=none`; final val loss by seed: {by_seed}" in md


def test_running_the_command_again_trains_nothing(study):
    runs = sorted(study.glob("prerequisites/*/seed*")) + sorted(study.glob("trials/*/seed*"))
    before = {run: (run / "metrics.json").stat().st_mtime_ns for run in runs}
    again = ablate(str(study.parent.parent / "abl.yaml"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "prerequisites: 2 of 2 runs completed" in again.stdout
    assert {run: (run / "metrics.json").stat().st_mtime_ns for run in runs} == before
    assert sorted(study.glob("prerequisites/*/seed*")) + sorted(study.glob("trials/*/seed*")) == runs


def test_an_interrupted_prerequisite_resumes_from_its_last_checkpoint(tmp_path, data_cache):
    """Seed 0's dense run stopped at step 2 of 4 with its last checkpoint, as a stop signal leaves it: training the
    prerequisites continues it there, and trains seed 1 from the start."""
    from moe_lab.training.run import run

    sweep = load_ablation(write(tmp_path, data_cache))
    run_dir = sweep.prerequisites.run_dir("dense", 0)
    cfg = prerequisite_runs.experiment(sweep, "dense", 0)
    run(derive(cfg, {"trainer": {"max_steps": 2, "keep_checkpoints": "all"}}), quiet=True)
    (run_dir / "metrics.json").write_text(json.dumps({**metrics(run_dir), "status": "interrupted"}))
    said: list[str] = []
    prerequisite_runs.train(sweep, log=said.append)
    assert "prerequisite dense seed 0: resuming to step 4" in said
    assert "prerequisite dense seed 1: training to step 4" in said
    record = metrics(run_dir)
    assert (record["status"], record["steps"], record["resumed_from_step"]) == ("completed", 4, 2)


def test_model_init_takes_the_architecture_and_weights_of_a_run_directory_or_its_checkpoint(study, tmp_path):
    """model_init accepts what upcycle.source does: the MoE experiment becomes the dense model it starts from."""
    dense_dir = study / "prerequisites" / "dense" / "seed0"
    for source in (dense_dir, dense_dir / "checkpoints" / "best.ckpt"):
        cfg = load_config(study.parent.parent / "tiny.yaml", [f"model_init={source}"])
        assert cfg.model.moe.placement == "none", source


def test_dry_run_counts_the_prerequisite_runs(tmp_path, data_cache):
    path = write(tmp_path, data_cache)
    done = ablate(str(path), "--dry-run", "--assume-gflops", "10")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pre  @dense" in done.stdout and "x 2 seeds, before the arms" in done.stdout
    assert "train the prerequisite runs one at a time" in done.stdout
    assert not (tmp_path / "out").exists()


def test_an_unknown_name_exits_2_in_one_line_naming_the_arm(tmp_path, data_cache):
    path = write(tmp_path, data_cache, ABLATION.replace("upcycle.source=@dense", "upcycle.source=@dense_B"))
    done = ablate(str(path))
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: arms.upcycled: upcycle.source=@dense_B: no prerequisite named 'dense_B'")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("  dense: [", "  dense/x: [", "prerequisites.dense/x"),  # names are checked as arm names are
        ("  dense: [model.moe.placement=none]", "  dense: [trainer.max_steps=0]", "prerequisites.dense"),
        ("arms:\n", "  unused: [model.moe.placement=none]\narms:\n", "prerequisites.unused"),
    ],
)
def test_bad_prerequisites_are_one_line_naming_the_key(tmp_path, data_cache, old, new, key):
    path = write(tmp_path, data_cache, ABLATION.replace(old, new))
    with pytest.raises(ConfigError) as err:
        load_ablation(path)
    assert err.value.key == key and "\n" not in str(err.value)


def test_the_shipped_upcycling_ablation_matches_training_flops_and_starts_at_the_dense_model():
    """Its arms are matched on training FLOPs (the MoE costs more per token than the dense model), each within
    one step: the upcycled arms spend what the dense continuation does, scratch what dense and continuation do
    together. The MoE is the one whose upcycle computes the dense model: full-width experts, gates that sum to 1."""
    sweep = load_ablation(REPO / "experiments" / "ablations" / "upcycling.yaml")
    cfg = {arm: sweep.experiment({"arm": arm})[0] for arm in sweep.arms}
    dense = sweep.prerequisites.planned["dense"]
    spent = {arm: training_flops(c) for arm, c in cfg.items()}
    step = training_flops_per_step(cfg["scratch"])
    for arm in ("upcycled_copy", "upcycled_drop"):
        assert abs(spent[arm] - spent["dense_continued"]) < step, arm
    assert abs(spent["scratch"] - training_flops(dense) - spent["dense_continued"]) < step
    for arm in ("upcycled_copy", "upcycled_drop", "scratch"):
        moe = cfg[arm].model
        assert moe.moe.expert_hidden == moe.d_ff == dense.model.d_ff and renormalizes(moe.moe), arm
