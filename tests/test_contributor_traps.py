"""Traps for a contributor's first hour: options --help does not show, a hand-written reading lost on
assemble, an unfinished ablation collected silently, README outputs git would add, a TORCH= that does nothing,
a resumed run's bar counting from the wrong total, a demo that starts without its estimate."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from moe_lab.config import load_config
from tests.helpers import write_tiny_experiment

ROOT = Path(__file__).resolve().parents[1]
VERIFY_OPTIONS = ("--verify", "--arms", "--seed", "--tolerance")


def help_text(main, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_ablate_help_lists_the_verify_options_and_sweep_help_does_not(capsys):
    from moe_lab.ablate import main as ablate_main
    from moe_lab.sweep.__main__ import main as sweep_main

    ablate, sweep = help_text(ablate_main, capsys), help_text(sweep_main, capsys)
    assert "--dry-run" in ablate and "--dry-run" in sweep  # both show the shared options
    assert [o for o in VERIFY_OPTIONS if re.search(rf"{o}\b", ablate)] == list(VERIFY_OPTIONS)
    assert [o for o in VERIFY_OPTIONS if re.search(rf"{o}\b", sweep)] == []


# -- the ablation suite: assemble keeps the reading, collect refuses an unfinished ablation


def collectable_ablation(tmp_path: Path) -> Path:
    from tests.test_ablation_report import make_ablation

    return make_ablation(tmp_path / "out" / "demo_ablation")


def test_assemble_keeps_the_hand_written_reading_of_the_existing_results_md(tmp_path):
    from moe_lab.report.ablation_suite import collect, main

    collect(collectable_ablation(tmp_path), tmp_path / "results")
    reading = "**Budget.** Written by hand.\n\n### A sub-heading of the reading\n\nIts last line."
    (tmp_path / "reading.md").write_text(reading + "\n")
    out = tmp_path / "RESULTS.md"
    args = ["assemble", "--results", str(tmp_path / "results"), "--out", str(out)]
    assert main([*args, "--reading", str(tmp_path / "reading.md")]) == 0
    first = out.read_text()
    assert f"\n## Reading\n\n{reading}\n\n## Ablation: demo_ablation\n" in first

    assert main(args) == 0  # as typed: no --reading
    assert out.read_text() == first
    (tmp_path / "reading.md").write_text("A new reading.\n")  # an explicit --reading still replaces it
    assert main([*args, "--reading", str(tmp_path / "reading.md")]) == 0
    assert "\n## Reading\n\nA new reading.\n\n## Ablation: demo_ablation\n" in out.read_text()


def unfinish(study_dir: Path) -> None:
    """e8_top2's seed 1 still running (no final metrics), dense's seed 2 never started."""
    (next(study_dir.glob("trials/*-arm=e8_top2/seed1")) / "metrics.json").unlink()
    shutil.rmtree(next(study_dir.glob("trials/*-arm=dense/seed2")))


def test_collect_refuses_an_unfinished_ablation_in_one_line(tmp_path, capsys):
    from moe_lab.report.ablation_suite import main

    study_dir = collectable_ablation(tmp_path)
    unfinish(study_dir)
    assert main(["collect", str(study_dir), "--into", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "demo_ablation" in err[0]
    assert "running: e8_top2 seed 1" in err[0] and "not started: dense seed 2" in err[0]
    assert "--partial" in err[0]
    assert not (tmp_path / "results").exists()


def test_collect_partial_takes_an_unfinished_ablation_and_says_so(tmp_path, capsys):
    from moe_lab.report.ablation_suite import SUITE_JSON, main

    study_dir = collectable_ablation(tmp_path)
    unfinish(study_dir)
    assert main(["collect", str(study_dir), "--into", str(tmp_path / "results"), "--partial"]) == 0
    out = capsys.readouterr().out
    assert "partial" in out and "running: e8_top2 seed 1" in out and "not started: dense seed 2" in out
    assert (tmp_path / "results" / "demo_ablation" / SUITE_JSON).is_file()


def test_collect_of_a_finished_ablation_says_nothing_of_partial(tmp_path, capsys):
    from moe_lab.report.ablation_suite import main

    study_dir = collectable_ablation(tmp_path)  # one seed failed: finished, not partial
    assert main(["collect", str(study_dir), "--into", str(tmp_path / "results")]) == 0
    assert "partial" not in capsys.readouterr().out


# -- outputs of README commands are not for git


@pytest.mark.parametrize("folder", ["converted", "hf_out"])
def test_readme_output_folders_are_ignored_by_git(folder):
    assert f" {folder}/" in (ROOT / "README.md").read_text()  # still made by a README command
    proc = subprocess.run(["git", "check-ignore", "-q", f"{folder}/x"], cwd=ROOT, timeout=30)
    assert proc.returncode == 0, f"{folder}/ is not ignored by git"


# -- make: TORCH= on the command line takes effect once .venv exists


def fake_venv(tmp_path: Path) -> tuple[Path, Path]:
    """A .venv whose python only logs its arguments (an installed torch >= 2.8 as far as make can tell)."""
    venv, log = tmp_path / "venv", tmp_path / "python.log"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    python.chmod(0o755)
    (venv / ".installed").touch()
    return venv, log


def make_test(venv: Path, log: Path, *args: str) -> list[str]:
    """The python commands `make test` ran, pytest's included."""
    log.write_text("")
    proc = subprocess.run(
        ["make", "--no-print-directory", "test", f"VENV={venv}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k not in ("TORCH", "MAKEFLAGS", "MFLAGS")},
    )
    assert proc.returncode == 0, proc.stderr
    return [line for line in log.read_text().splitlines() if " pip " in f" {line} "]


def test_make_test_with_torch_given_reinstalls_torch_once(tmp_path):
    venv, log = fake_venv(tmp_path)
    assert make_test(venv, log) == []  # installed: the default keeps what is there
    pip = make_test(venv, log, "TORCH=torch>=2.8")
    assert "-m pip install -q torch>=2.8" in pip and any("uninstall" in line and "torch" in line for line in pip)
    assert (venv / ".torch").read_text().strip() == "torch>=2.8"
    assert make_test(venv, log, "TORCH=torch>=2.8") == []  # the same requirement again: nothing to do
    assert make_test(venv, log) == []  # and a plain `make test` does not swap it back
    assert "-m pip install -q torch==2.13.0" in make_test(venv, log, "TORCH=torch==2.13.0")


def test_make_demo_prints_the_estimate_before_the_sweep():
    proc = subprocess.run(["make", "-n", "demo"], cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if "moe_lab.sweep" in line]
    assert len(lines) == 2 and "--dry-run" in lines[0] and "--dry-run" not in lines[1], proc.stdout
    assert "sweeps/topk.yaml" in lines[0] and "--workers 2" in lines[0]


# -- the training bar counts the run's steps, on resume too


def test_a_resumed_run_bar_counts_steps_of_the_whole_run(tmp_path, data_cache, monkeypatch):
    import moe_lab.training.run as training

    states = []

    class Recorded(training.ProgressBar):
        def on_train_batch_end(self, trainer, *args, **kwargs):
            super().on_train_batch_end(trainer, *args, **kwargs)
            if getattr(self, "progress", None) is not None:  # rich
                task = self.progress.tasks[self.train_progress_bar_id]
                states.append((int(task.completed), int(task.total)))
            else:  # tqdm
                states.append((int(self.train_progress_bar.n), int(self.train_progress_bar.total)))

    monkeypatch.setattr(training, "ProgressBar", Recorded)
    experiment = write_tiny_experiment(tmp_path / "tiny.yaml", data_cache, steps=4)
    overrides = [f"output_dir={tmp_path / 'runs'}", "trainer.progress_bar=true", "trainer.checkpoint_every_n_steps=2"]
    training.run(load_config(experiment, overrides))
    assert states == [(1, 4), (2, 4), (3, 4), (4, 4)]
    states.clear()
    resumed = training.run(load_config(experiment, [*overrides, "trainer.max_steps=10", "trainer.resume=auto"]))
    assert resumed.metrics["steps"] == 10
    assert states == [(step, 10) for step in range(5, 11)]
