"""Every shipped YAML runs, not only parses: found by glob, so a new file is covered untouched.

- each experiment in experiments/ trains for 2 steps;
- each sweep in sweeps/ plans (--dry-run) and its first configuration trains for 2 steps, with the
  sweep's own compute matching; every configuration of its space validates;
- every arm of each ablation validates and one arm (the last) trains for 2 steps, after the prerequisite
  runs the arms start from (their first seed's, 2 steps each).
The runs keep each file's model and data settings; only the budget, outputs and logging shrink.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from moe_lab.ablate import load_ablation
from moe_lab.config import load_config
from moe_lab.sweep.config import load_sweep

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def shipped(folder: Path) -> list[Path]:
    """The YAML files in `folder`. Finding none fails the collection of this module: a parametrised
    test over an empty list would be skipped, and the suite would pass without running a file."""
    paths = sorted(folder.glob("*.yaml"))
    if not paths:
        raise FileNotFoundError(f"no *.yaml in {folder}: nothing shipped to run")
    return paths


EXPERIMENTS = shipped(REPO / "experiments")
SWEEPS = shipped(REPO / "sweeps")
ABLATIONS = shipped(REPO / "experiments" / "ablations")


def two_steps(out: Path, cache: Path) -> list[str]:
    return [
        f"output_dir={out}",
        f"data.cache_dir={cache}",
        "trainer.max_steps=2",
        "trainer.val_every_n_steps=2",
        "trainer.val_batches=1",
        "trainer.progress_bar=false",
        "optim.warmup_steps=1",
        "monitor.sample_tokens=0",
        "monitor.heatmap_every_n_steps=0",
        "data.batch_size=2",
    ]


def train_two_steps(base: Path, overrides: list[str], out: Path, cache: Path) -> dict:
    from moe_lab.training.run import run

    result = run(load_config(base, overrides + two_steps(out, cache)), quiet=True)
    assert result.metrics["status"] == "completed" and result.metrics["steps"] == 2, result.metrics
    return result.metrics


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_trains(path, tmp_path, data_cache):
    train_two_steps(path, [], tmp_path, data_cache)


def space_points(sweep) -> list[dict]:
    """Every grid point; for sampled sweeps, each value of each key with the others at their first value."""
    if sweep.cfg.sampler == "grid":
        return sweep.grid()
    values = {p.key: (list(p.choices) if p.kind == "categorical" else [p.low, p.high]) for p in sweep.params}
    first = {k: v[0] for k, v in values.items()}
    return [first | {k: v} for k, vs in values.items() for v in vs] or [{}]


def matched_overrides(sweep, params: dict, placement: dict | None = None) -> list[str]:
    """The configuration as command-line overrides of the base: what a user would type to rerun it (an arm's
    `@name` values bound to the prerequisite runs of the placement's seed, or to their planned stand-ins)."""
    chosen = (
        sweep.arm_overrides(params["arm"], placement)
        if sweep.arms is not None
        else [f"{k}={v}" for k, v in params.items()]
    )
    _, matched = sweep.experiment(params)  # validates the configuration, matched width included
    extra = [f"model.moe.expert_hidden={matched.expert_hidden}"] if matched else []
    return list(sweep.cfg.overrides) + chosen + extra


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_plans_validates_and_its_first_configuration_trains(path, tmp_path, data_cache, capsys):
    from moe_lab.sweep.__main__ import main as sweep_main

    # The plan from FLOPs at an assumed rate: timing every shape here is test_sweep_eta's (and costs minutes).
    assert sweep_main([str(path), f"output_dir={tmp_path}", "--dry-run", "--assume-gflops", "5"]) == 0
    assert "estimated" in capsys.readouterr().out.lower()
    sweep = load_sweep(path, [f"output_dir={tmp_path}"])
    points = space_points(sweep)
    for params in points:  # every configuration's experiment must validate, matched widths included
        load_config(sweep.base_path, matched_overrides(sweep, params))
    train_two_steps(sweep.base_path, matched_overrides(sweep, points[0]), tmp_path / "run", data_cache)


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.name)
def test_ablation_arms_validate_and_one_trains(path, tmp_path, data_cache):
    sweep = load_ablation(path, [f"output_dir={tmp_path}"])
    points = sweep.grid()
    assert len(points) == len(sweep.arms)
    for params in points:
        load_config(sweep.base_path, matched_overrides(sweep, params))
    placement = {"seed": sweep.cfg.seeds[0]}
    for name, overrides in (sweep.prerequisites.runs if sweep.prerequisites else {}).items():
        run_dir = sweep.prerequisites.run_dir(name, placement["seed"])
        where = [f"name={name}", f"version={run_dir.name}"]
        train_two_steps(sweep.base_path, [*sweep.cfg.overrides, *overrides, *where], run_dir.parents[1], data_cache)
    train_two_steps(sweep.base_path, matched_overrides(sweep, points[-1], placement), tmp_path / "run", data_cache)


def test_space_points_cover_every_value_of_a_sampled_space():
    class P:  # the two fields space_points reads
        def __init__(self, key, choices):
            self.key, self.kind, self.choices = key, "categorical", choices

    class S:
        class cfg:  # noqa: N801 - mimics Sweep.cfg
            sampler = "tpe"

        params = [P("a", (1, 2)), P("b", ("x", "y", "z"))]

    got = space_points(S())
    assert {(p["a"], p["b"]) for p in got} == {(1, "x"), (2, "x"), (1, "y"), (1, "z")}
    assert set(itertools.chain.from_iterable(p.values() for p in got)) == {1, 2, "x", "y", "z"}
