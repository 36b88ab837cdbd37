"""Ablations end to end: a tiny two-arm two-seed ablation, resume skipping finished runs,
bit-for-bit determinism across fresh processes, and bad ablation files."""

import json
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from moe_lab.ablate import load_ablation
from moe_lab.errors import ConfigError
from moe_lab.report.tb_scalars import read_scalars
from moe_lab.sweep.claims import heartbeat
from moe_lab.sweep.objective import Objective
from moe_lab.sweep.runner import claim_trial, open_study, run_worker
from tests.helpers import write_tiny_experiment

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::DeprecationWarning", "ignore::optuna.exceptions.ExperimentalWarning"
)

ABLATION = """
paper: "Test paper, Table 1"
claim: "top-2 beats top-1"
base: tiny.yaml
output_dir: {out}
seeds: [0, 1]
heartbeat_interval: 1
grace_period: 2
arms:
  top1: [model.moe.top_k=1]
  top2: [model.moe.top_k=2]
claims:
  - {{metric: val_loss, arm: top2, less_than: top1}}
"""


def write(tmp_path: Path, data_cache: Path, extra: str = "") -> Path:
    write_tiny_experiment(tmp_path / "tiny.yaml", data_cache, deterministic=True)
    path = tmp_path / "abl.yaml"
    path.write_text(ABLATION.format(out=tmp_path / "out") + extra)
    return path


def test_two_arm_two_seed_ablation_end_to_end(tmp_path, data_cache):
    path = write(tmp_path, data_cache)
    proc = subprocess.run(
        [sys.executable, "-m", "moe_lab.ablate", str(path)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    study = tmp_path / "out" / "abl"
    runs = sorted(str(p.relative_to(study)) for p in study.glob("trials/*/seed*/metrics.json"))
    assert runs == [
        "trials/t000-arm=top1/seed0/metrics.json",
        "trials/t000-arm=top1/seed1/metrics.json",
        "trials/t001-arm=top2/seed0/metrics.json",
        "trials/t001-arm=top2/seed1/metrics.json",
    ]
    for name in ("results.md", "results.csv", "results.tex", "plots/val_curves.png", "plots/load_balance.png"):
        assert (study / name).is_file(), name
    md = (study / "results.md").read_text()
    assert "Test paper, Table 1" in md and "top2" in md and "top1" in md
    assert json.loads((study / "study_info.json").read_text())["kind"] == "ablation"


def test_resume_skips_finished_runs(tmp_path, data_cache):
    """A worker dies after its run finished but before it told the study: the rerun keeps that run."""
    sweep = load_ablation(write(tmp_path, data_cache))
    study = open_study(sweep)
    trial = claim_trial(study, sweep, None)  # arm top1, seed 0
    assert (trial.params["arm"], trial.user_attrs["unit_seed"]) == ("top1", 0)
    objective = Objective(sweep)
    trial_dir = sweep.study_dir / "trials" / "t000-arm=top1"
    with heartbeat(study, trial):  # as a live worker does; leaving it is the worker's death
        objective.run_seed(trial, dict(trial.params), trial_dir, 0, report=False)
    finished = trial_dir / "seed0" / "metrics.json"
    stamp = finished.stat().st_mtime_ns
    # ... and the worker dies here: the trial stays RUNNING with no heartbeat.
    time.sleep(3)
    assert run_worker(sweep, log=lambda m: None) == 4  # the retried (top1, 0), then (top2, 0), (top1, 1), (top2, 1)
    ts = optuna.load_study(study_name=sweep.name, storage=sweep.storage_url).get_trials()
    done = sorted((t.params["arm"], t.user_attrs["unit_seed"]) for t in ts if t.state == TrialState.COMPLETE)
    assert done == [("top1", 0), ("top1", 1), ("top2", 0), ("top2", 1)]
    assert finished.stat().st_mtime_ns == stamp  # seed 0 was not trained again
    # The retry (attempt 1 of top1 seed 0) reuses the finished run instead of training seed0.retry1.
    (retry,) = [t for t in ts if t.state == TrialState.COMPLETE and t.user_attrs["attempt"] == 1]
    assert retry.user_attrs["run_dirs"] == ["trials/t000-arm=top1/seed0"]
    assert not (trial_dir / "seed0.retry1").exists() and (trial_dir / "seed1" / "metrics.json").is_file()


@pytest.mark.slow
def test_same_arm_and_seed_in_fresh_processes_give_identical_metrics(tmp_path, data_cache):
    write_tiny_experiment(tmp_path / "tiny.yaml", data_cache, deterministic=True)
    outputs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        proc = subprocess.run(
            [sys.executable, "-m", "moe_lab.train", str(tmp_path / "tiny.yaml"), f"output_dir={out}", "seed=3"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        run_dir = out / "tiny" / "version_0"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        outputs.append(
            (
                metrics["val_loss"],
                metrics["final_load_cv"],
                read_scalars(run_dir, "train/lm_loss"),
                read_scalars(run_dir, "moe/layer0/max_over_uniform"),
            )
        )
    assert outputs[0] == outputs[1]
    assert len(outputs[0][2]) == 4


@pytest.mark.parametrize(
    "extra,key",
    [
        ("sampler: tpe\n", "sampler"),
        ("  - {metric: val_loss, arm: top3, less_than: top1}\n", "claims[1].arm"),
        ("  - {metric: accuracy, arm: top2, less_than: top1}\n", "claims[1].metric"),
        ("  - {metric: val_loss, arm: top2}\n", "claims[1]"),
    ],
)
def test_bad_ablation_files_name_the_key(tmp_path, data_cache, extra, key):
    path = write(tmp_path, data_cache, extra)
    with pytest.raises(ConfigError) as err:
        load_ablation(path)
    assert str(err.value).startswith(key)


def test_arm_with_an_invalid_experiment_is_named(tmp_path, data_cache):
    path = write(tmp_path, data_cache)
    path.write_text(
        path.read_text()
        .replace("top2: [model.moe.top_k=2]", "top9: [model.moe.top_k=9]")
        .replace("arm: top2", "arm: top9")
    )
    with pytest.raises(ConfigError) as err:
        load_ablation(path)
    assert str(err.value).startswith("arms.top9: invalid experiment: model.moe.top_k")


@pytest.mark.slow
def test_verify_reruns_a_stored_arm_and_says_whether_it_reproduced(tmp_path, data_cache):
    path = write(tmp_path, data_cache)
    sweep = load_ablation(path)
    # one trial per (arm, seed) unit: the unit of work since d198050
    assert run_worker(sweep, log=lambda m: None) == len(sweep.cfg.arms) * len(sweep.cfg.seeds)
    stored = sweep.study_dir / "trials" / "t001-arm=top2" / "seed0" / "metrics.json"
    verify = [sys.executable, "-m", "moe_lab.ablate", str(path), "--verify", "--arms", "top2"]
    proc = subprocess.run(verify, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| top2 |"))
    assert "| identical |" in row and "| none |" in row  # same code, torch and threads: bit-identical
    assert "1 of 1 arms reproduced" in proc.stdout
    # A stored number that the code cannot produce is caught, with identical settings even by a hair.
    metrics = json.loads(stored.read_text())
    metrics["val_loss"] += 1e-6
    stored.write_text(json.dumps(metrics))
    proc = subprocess.run(verify, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "NOT reproduced" in proc.stdout and "not reproduced: top2" in proc.stdout
    assert len(list((sweep.study_dir / "verify").glob("*/verify.md"))) >= 1


def test_verify_tolerates_seed_noise_only_where_settings_differ():
    from moe_lab.sweep.verify import Verdict

    same = Verdict("a", 0, stored=1.70, rerun=1.701, tolerance=0.01, setting_differences=[])
    other = Verdict("a", 0, stored=1.70, rerun=1.701, tolerance=0.01, setting_differences=["threads: 1 -> 2"])
    far = Verdict("a", 0, stored=1.70, rerun=1.75, tolerance=0.01, setting_differences=["threads: 1 -> 2"])
    assert (same.outcome, same.reproduced) == ("within seed noise", False)
    assert (other.outcome, other.reproduced) == ("within seed noise", True)
    assert (far.outcome, far.reproduced) == ("differs", False)


@pytest.mark.slow
def test_verify_without_stored_results_is_one_error_line(tmp_path, data_cache):
    path = write(tmp_path, data_cache)
    proc = subprocess.run(
        [sys.executable, "-m", "moe_lab.ablate", str(path), "--verify"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --verify: no completed run of arm=top1 seed 0")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


class CleanCommit:
    """A CodeRevision stand-in: the checkout the tests run from may have uncommitted changes."""

    def __init__(self, commit: str):
        self.commit = commit

    def record(self) -> dict:
        return {"commit": self.commit, "dirty": False, "changed_since_start": False}


def test_run_key_ignores_placement_and_changes_with_config_code_and_threads(tmp_path, data_cache, monkeypatch):
    from moe_lab.artifacts import run_index

    sweep = load_ablation(write(tmp_path, data_cache))
    clean = {"commit": "abc", "dirty": False}

    def key(placement_dir: str, seed: int = 0, code: dict = clean, arm: str = "top2") -> str | None:
        cfg, _ = sweep.experiment({"arm": arm}, sweep.placement(tmp_path / placement_dir, seed))
        return run_index.run_key(cfg, code)

    assert key("a") == key("elsewhere") is not None  # where a run writes is not what it computes
    assert key("a", seed=1) != key("a") and key("a", arm="top1") != key("a")
    assert key("a", code={"commit": "def", "dirty": False}) != key("a")
    assert key("a", code={"commit": "abc", "dirty": True}) is None  # uncommitted code is never reused
    assert key("a", code={"commit": None, "dirty": None}) is None
    before = key("a")
    monkeypatch.setattr(run_index.torch, "get_num_threads", lambda: 7)  # another thread count, other bits
    assert key("a") != before


def test_identical_runs_are_reused_across_studies_and_a_changed_key_retrains(tmp_path, data_cache, monkeypatch):
    from moe_lab.artifacts import run_index
    from moe_lab.report.ablation_results import write_ablation_report

    monkeypatch.setattr(run_index, "CODE", CleanCommit("abc"))
    path = write(tmp_path, data_cache)
    first = load_ablation(path, ["name=first", "seeds=[0]"])
    assert run_worker(first, log=lambda m: None) == 2
    trained = {
        arm: first.study_dir / "trials" / f"t00{i}-arm={arm}" / "seed0" for i, arm in enumerate(("top1", "top2"))
    }
    assert not any((d / run_index.REUSED).exists() for d in trained.values())

    # Another study with one arm unchanged and one whose config differs by a key: only that one trains.
    second = load_ablation(path, ["name=second", "seeds=[0]", "arms.top2=[model.moe.top_k=2,optim.lr=0.002]"])
    assert run_worker(second, log=lambda m: None) == 2
    reused = second.study_dir / "trials" / "t000-arm=top1" / "seed0"
    retrained = second.study_dir / "trials" / "t001-arm=top2" / "seed0"
    assert json.loads((reused / run_index.REUSED).read_text())["from"] == str(trained["top1"].resolve())
    assert (reused / "metrics.json").read_bytes() == (trained["top1"] / "metrics.json").read_bytes()
    assert not (retrained / run_index.REUSED).exists()
    assert (
        json.loads((retrained / "metrics.json").read_text())["val_loss"]
        != json.loads((trained["top2"] / "metrics.json").read_text())["val_loss"]
    )

    # A new commit retrains even the unchanged arm.
    monkeypatch.setattr(run_index, "CODE", CleanCommit("def"))
    third = load_ablation(path, ["name=third", "seeds=[0]", "arms.top2=[model.moe.top_k=2]"])
    assert run_worker(third, log=lambda m: None) == 2
    assert not list(third.study_dir.glob(f"trials/*/seed0/{run_index.REUSED}"))

    # The report says which run was reused and from where.
    paths = write_ablation_report(second.study_dir)
    md = paths["results_md"].read_text()
    assert "1 of 2 runs were reused, not trained" in md and f"- top1 seed 0: from `{trained['top1'].resolve()}`" in md
    rows = {r.split(",")[0]: r for r in paths["per_seed_csv"].read_text().splitlines()[1:]}
    assert str(trained["top1"].resolve()) in rows["top1"] and rows["top2"].endswith(",")
