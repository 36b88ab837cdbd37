"""Sweep reports, checked against a hand-built study: a real Optuna SQLite study whose trials carry the
user attributes the sweep runner records, and run directories with real TensorBoard event files."""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from torch.utils.tensorboard import SummaryWriter

from moe_lab.report.__main__ import main
from moe_lab.report.figures import curve_band, ema
from moe_lab.report.sweep_plots import study_curves
from moe_lab.report.sweep_study import config_rows, load_study_data, sort_rows
from moe_lab.report.sweep_summary import write_study_report
from moe_lab.report.sweep_tables import format_table
from moe_lab.report.tb_scalars import read_scalars

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTIONS = {
    "model.moe.top_k": CategoricalDistribution([1, 2, 4]),
    "optim.lr": FloatDistribution(1e-4, 1e-2, log=True),
}
STEPS = [10, 20, 30]
# Per trial: state, params, user attrs (besides run_dirs, label, config_id), val/loss per seed (float32-exact).
LONG_ERROR = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB; " + "x" * 80
TRIALS = [
    (TrialState.COMPLETE, 0, {"model.moe.top_k": 1, "optim.lr": 1e-3}, [2.5, 2.8], None, None),
    (TrialState.FAIL, 1, {"model.moe.top_k": 2, "optim.lr": 3e-3}, [], None, "worker died"),  # retried: #4
    (
        TrialState.PRUNED,
        2,
        {"model.moe.top_k": 4, "optim.lr": 1e-4},
        [3.25],
        "pruned by the median pruner at step 20",
        None,
    ),
    (TrialState.FAIL, 3, {"model.moe.top_k": 2, "optim.lr": 1e-2}, [], None, LONG_ERROR),
    (TrialState.COMPLETE, 1, {"model.moe.top_k": 2, "optim.lr": 3e-3}, [2.0, 2.25], None, None),
    (TrialState.COMPLETE, 4, {"model.moe.top_k": 1, "optim.lr": 1e-2}, [2.375, None], None, None),
]
EXPECTED_ORDER = [4, 5, 0, 2, 3]  # best first: 2.125, 2.375, 2.65, then PRUNED, then FAIL


def label(params) -> str:
    return f"top_k={params['model.moe.top_k']},lr={params['optim.lr']:.3g}"


def seed_curve(objective: float, seed: int, steps=STEPS) -> dict[int, float]:
    """A val/loss curve ending at the seed's objective value; seed 1 sits a little higher."""
    return {s: objective + 0.25 * (len(steps) - 1 - i) + 0.125 * seed for i, s in enumerate(steps)}


def write_events(run_dir: Path, tag: str, curve: dict[int, float]) -> None:
    with SummaryWriter(log_dir=str(run_dir)) as writer:
        for step, value in curve.items():
            writer.add_scalar(tag, value, step)


def trial_attrs(number: int, config_id: int, params: dict, values: list, prune_reason, error) -> dict:
    finite = [v for v in values if v is not None]
    seeds = list(range(len(values)))
    attrs = {
        "config_id": config_id,
        "label": label(params),
        "seeds": seeds,
        "run_dirs": [f"trials/t{config_id:03d}-{label(params)}/seed{s}" for s in seeds],
        "objective_values": values,
        "prune_reason": prune_reason,
        "error": error,
        "duration_s": 30.0 + 45.0 * number,
    }
    if finite:
        attrs.update(
            objective_mean=statistics.fmean(finite),
            objective_std=statistics.stdev(finite) if len(finite) > 1 else 0.0,
            active_params=1_200_000 + 1000 * number,
            total_params=3_400_000 * params["model.moe.top_k"],
            expert_hidden=64 * params["model.moe.top_k"],
            tokens_per_s=10_000.0 + number,
            final_load_cv=0.1 * (number + 1),
            collapse_events=number % 2,
        )
    return attrs


def make_study(study_dir: Path, trials, storage_url: str | None = None) -> list[dict]:
    study_dir.mkdir(parents=True)
    db = f"sqlite:///{study_dir / 'study.db'}"
    study = optuna.create_study(study_name="demo", storage=db, direction="minimize")
    all_attrs = []
    for number, (state, config_id, params, values, prune_reason, error) in enumerate(trials):
        attrs = trial_attrs(number, config_id, params, values, prune_reason, error)
        value = attrs["objective_mean"] if state == TrialState.COMPLETE else None
        study.add_trial(
            create_trial(state=state, value=value, params=params, distributions=DISTRIBUTIONS, user_attrs=attrs)
        )
        for seed, (run_dir, v) in enumerate(zip(attrs["run_dirs"], values, strict=True)):
            if v is not None:
                write_events(study_dir / run_dir, "val/loss", seed_curve(v, seed))
                write_events(study_dir / run_dir, "train/lm_loss", seed_curve(v + 0.5, seed))
        all_attrs.append(attrs)
    info = {
        "study_name": "demo",
        "storage_url": storage_url or db,
        "objective_metric": "val_loss",
        "direction": "minimize",
        "sampler": "grid",
        "seeds": [0, 1],
        "compute_matching": "active",
        "base": "experiments/tiny.yaml",
    }
    (study_dir / "study_info.json").write_text(json.dumps(info))
    return all_attrs


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_dir = tmp_path_factory.mktemp("sweeps") / "demo"
    attrs = make_study(study_dir, TRIALS)
    paths = write_study_report(study_dir, html=True)
    return study_dir, attrs, paths


def test_table_one_row_per_config_best_first(study):
    study_dir, attrs, _ = study
    rows = load_study_data(study_dir).rows
    assert [r.trial for r in rows] == EXPECTED_ORDER
    assert [r.retries for r in rows] == [1, 0, 0, 0, 0]  # trial 1 is retried by trial 4: one row

    lines = format_table(rows, "val_loss").splitlines()
    assert lines[0].split()[:3] == ["trial", "config", "objective"]
    body = lines[2:-1]  # the last line is the load caveat
    assert [int(line.split()[0]) for line in body] == EXPECTED_ORDER
    best = attrs[4]
    assert f"{best['objective_mean']:.4f} ± {best['objective_std']:.4f} (n=2)" in body[0]
    assert "2.1250 ± 0.1768 (n=2)" in body[0]  # (2.0 + 2.25) / 2, stdev sqrt(2) * 0.125
    assert "2.3750 (n=1/2)" in body[1] and "±" not in body[1].split("(n=1/2)")[0]  # one value: no spread
    assert body[0].split()[1] == "top_k=2,lr=0.003" and "COMPLETE" in body[0]
    cells = body[0].split()
    # state, total, active, val bpb, load CV, dropped, collapses (the objective, val loss, has its own column)
    assert cells[6:13] == ["COMPLETE", "6.80M", "1.20M", "-", "0.500", "-", "0"]
    assert "10.00k" in body[0]  # the recorded tokens/s: these runs have no metrics.json to take medians from
    retries = lines[0].index("retries") + len("retries")  # right-aligned: the column ends there
    assert [line[retries - 1] for line in body] == ["1", "0", "0", "0", "0"]  # 0 written, as in trials.csv
    assert lines[-1].startswith("time/run and tok/s/run are medians") and "not results" in lines[-1]
    assert "PRUNED" in body[3] and "pruned by the median pruner at step 20" in body[3]
    assert "FAIL" in body[4] and LONG_ERROR[:40] in body[4] and LONG_ERROR not in body[4]  # truncated
    assert {line.index(r.state) for line, r in zip(body, rows, strict=True)} == {lines[0].index("state")}  # aligned


def unit_trial(number: int, state: TrialState, config_id: int, seed: int | None, values: list, **attrs):
    """A trial as the runner records it: one (configuration, seed) unit, or (seed None) all seeds."""
    seeds = [seed] if seed is not None else list(range(len(values)))
    trial = create_trial(
        state=state,
        value=statistics.fmean(values) if state == TrialState.COMPLETE else None,
        params={"model.moe.top_k": (1, 2, 4)[config_id % 3], "optim.lr": 1e-3},
        distributions=DISTRIBUTIONS,
        user_attrs={
            "config_id": config_id,
            "label": f"c{config_id}",
            **({"unit_seed": seed} if seed is not None else {}),
            "seeds": seeds[: len(values)],
            "run_dirs": [f"trials/t{config_id:03d}-c{config_id}/seed{s}" for s in seeds],
            "objective_values": values,
            "objective_mean": statistics.fmean(values) if values else None,
            **attrs,
        },
    )
    trial.number = number
    return trial


def test_a_configurations_seed_trials_merge_into_one_row_with_their_retries():
    """A grid trains each (configuration, seed) as its own trial: the report's row of a configuration is
    the latest trial of each seed, merged (values in seed order, their mean and std, the state of the
    least finished seed, retries summed), checked against values worked out by hand."""
    trials = [
        unit_trial(0, TrialState.COMPLETE, 0, 0, [2.0], duration_s=10.0),
        unit_trial(1, TrialState.COMPLETE, 1, 0, [1.5]),
        unit_trial(2, TrialState.FAIL, 0, 1, [], error="no heartbeat"),  # retried as trial 5
        unit_trial(3, TrialState.RUNNING, 1, 1, []),
        unit_trial(4, TrialState.PRUNED, 2, 0, [3.0], prune_reason="pruned by the median pruner at step 20"),
        unit_trial(5, TrialState.COMPLETE, 0, 1, [2.5], duration_s=12.0),
        unit_trial(6, TrialState.PRUNED, 2, 1, [], prune_reason="not trained: seed 0 was pruned"),
        unit_trial(7, TrialState.COMPLETE, 3, 0, [1.0]),
        unit_trial(8, TrialState.FAIL, 3, 1, [], error="RuntimeError: boom"),
        unit_trial(9, TrialState.COMPLETE, 4, None, [1.75, 1.25]),  # one trial of both seeds (TPE, older studies)
    ]
    rows = {r.config_id: r for r in config_rows(trials, "minimize")}
    assert [r.config_id for r in config_rows(trials, "minimize")] == [4, 0, 2, 1, 3]
    c0 = rows[0]
    assert (c0.state, c0.seeds, c0.objective_values, c0.retries, c0.trial) == ("COMPLETE", [0, 1], [2.0, 2.5], 1, 0)
    assert c0.objective_mean == 2.25 and c0.objective_std == pytest.approx(0.5 / 2**0.5)
    assert c0.run_dirs == ["trials/t000-c0/seed0", "trials/t000-c0/seed1"] and c0.duration_s == 22.0
    assert c0.finished_seeds == [0, 1] and c0.n_seeds == 2 and c0.error is None
    assert (rows[1].state, rows[1].objective_mean, rows[1].finished_seeds) == ("RUNNING", 1.5, [0])
    assert (rows[2].state, rows[2].objective_values) == ("PRUNED", [3.0])
    assert rows[2].prune_reason == "pruned by the median pruner at step 20" and rows[2].finished_seeds == [0, 1]
    assert (rows[3].state, rows[3].error, rows[3].objective_values) == ("FAIL", "RuntimeError: boom", [1.0])
    assert (rows[4].objective_mean, rows[4].seeds, rows[4].finished_seeds) == (1.5, [0, 1], [0, 1])


def test_maximize_puts_the_highest_objective_first(study):
    rows = sort_rows(load_study_data(study[0]).rows, "maximize")
    assert [r.trial for r in rows] == [0, 5, 4, 2, 3]  # non-complete stay at the bottom


def test_trials_csv_reads_back_the_attrs(study):
    study_dir, attrs, paths = study
    with paths["trials_csv"].open(newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    assert header[:5] == ["trial", "config_id", "state", "model.moe.top_k", "optim.lr"]
    assert header[5:] == [
        "objective_mean",
        "objective_std",
        "n_seeds",
        "objective_values",
        "duration_s",
        "active_params",
        "total_params",
        "val_loss",
        "val_bpb",
        "tokens_per_s",
        "final_load_cv",
        "final_dropped_frac",
        "collapse_events_count",
        "prune_reason",
        "error",
        "retries",
        "run_time_s",
    ]
    assert [int(r["trial"]) for r in rows] == EXPECTED_ORDER
    for row in rows:
        number = int(row["trial"])
        a, (state, _, params, *_) = attrs[number], TRIALS[number]
        assert row["state"] == state.name and int(row["config_id"]) == a["config_id"]
        assert int(row["model.moe.top_k"]) == params["model.moe.top_k"]
        assert float(row["optim.lr"]) == params["optim.lr"]
        assert json.loads(row["objective_values"]) == a["objective_values"]
        assert float(row["duration_s"]) == a["duration_s"]
        assert row["error"] == (a["error"] or "") and row["prune_reason"] == (a["prune_reason"] or "")
        for key in ("objective_mean", "objective_std", "tokens_per_s", "final_load_cv"):
            assert (float(row[key]) if row[key] else None) == a.get(key)
        for key in ("active_params", "total_params"):
            assert (int(row[key]) if row[key] else None) == a.get(key)
        # The fixture's attrs are a study written before the vocabulary named the count collapse_events_count.
        assert (int(row["collapse_events_count"]) if row["collapse_events_count"] else None) == a.get("collapse_events")
    assert [int(r["retries"]) for r in rows] == [1, 0, 0, 0, 0]
    assert [int(r["n_seeds"]) for r in rows] == [2, 1, 2, 1, 0]


def test_summary_names_the_best_configuration(study):
    study_dir, _, paths = study
    text = paths["summary"].read_text()
    assert text.startswith("# Sweep report: demo")
    best = text.split("## Best configuration")[1].split("##")[0]
    assert "**top_k=2,lr=0.003**" in best and "trial 4" in best and "2.1250 ± 0.1768 (n=2)" in best
    assert "compute matching: **active**" in text and "active parameters per token are held constant" in text
    assert "COMPLETE 3, PRUNED 1, FAIL 2" in text and "1 retried" in text
    results = text.split("## Results")[1].split("##")[0]
    assert results.count("\n| ") == 2 + len(EXPECTED_ORDER)  # header, rule, one line per configuration
    assert "| trial | config | objective (mean ± std, n seeds) | state | total | active |" in text
    assert "time/run and tok/s/run are medians" in text
    assert "[png](plots/val_loss_curves.png)" in text


def test_plots_written(study):
    study_dir, _, paths = study
    plots = study_dir / "plots"
    for name in ("optimization_history", "param_importances", "parallel_coordinate", "slice"):
        assert (plots / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        html = (plots / f"{name}.html").read_text()
        assert "<html>" in html and 'src="plotly.min.js"' in html
        assert paths[f"{name}_html"] == plots / f"{name}.html"
    assert (plots / "plotly.min.js").stat().st_size > 1_000_000  # written once, so the pages open offline
    for name in ("val_loss_curves", "train_loss_curves"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_are_the_mean_over_seeds(study):
    study_dir, attrs, _ = study
    curves = study_curves(load_study_data(study_dir), "val/loss")
    assert list(curves) == [
        "top_k=2,lr=0.003",
        "top_k=1,lr=0.01",
        "top_k=1,lr=0.001",
        "top_k=4,lr=0.0001",
    ]  # best first without an order; the failed configurations logged nothing
    steps, mean, low, high = curve_band(curves["top_k=2,lr=0.003"])
    seed0, seed1 = seed_curve(2.0, 0), seed_curve(2.25, 1)
    assert steps.tolist() == STEPS
    assert mean.tolist() == [(seed0[s] + seed1[s]) / 2 for s in STEPS]
    assert low.tolist() == [seed0[s] for s in STEPS] and high.tolist() == [seed1[s] for s in STEPS]


def test_curve_band_uneven_seeds_and_smoothing():
    # A seed that stopped at step 2 leaves step 3 to the other. EMA 0.5 of [4, 2, 0] by hand: the running
    # average is 2, 2, 1; debiased by 1 - 0.5^n = 0.5, 0.75, 0.875 it gives 4, 8/3, 8/7.
    a, b = {1: 2.0, 2: 4.0}, {1: 4.0, 2: 2.0, 3: 0.0}
    steps, mean, low, high = curve_band([a, b])
    assert steps.tolist() == [1, 2, 3] and mean.tolist() == [3.0, 3.0, 0.0] and high.tolist() == [4.0, 4.0, 0.0]
    assert ema([4.0, 2.0, 0.0], 0.5) == pytest.approx([4.0, 8 / 3, 8 / 7])
    assert ema([4.0, 2.0, 0.0], 0.0) == [4.0, 2.0, 0.0]


def test_read_scalars_merges_files_later_winning(tmp_path):
    write_events(tmp_path, "val/loss", {0: 5.0, 1: 4.0, 2: 3.0})
    write_events(tmp_path, "val/loss", {2: 9.0, 3: 8.0})  # a resumed run logs step 2 again
    write_events(tmp_path, "train/lm_loss", {0: 1.0})
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 3
    assert read_scalars(tmp_path, "val/loss") == {0: 5.0, 1: 4.0, 2: 9.0, 3: 8.0}
    assert read_scalars(tmp_path, "moe/load_cv_mean") == {}
    assert read_scalars(tmp_path / "missing", "val/loss") == {}


def test_too_few_trials_skips_plots_and_finds_a_moved_db(tmp_path, caplog):
    # One complete trial: no importances. The storage URL points where the study used to live.
    study_dir = tmp_path / "small"
    make_study(study_dir, TRIALS[:1], storage_url=f"sqlite:///{tmp_path / 'gone' / 'study.db'}")
    with caplog.at_level(logging.WARNING):
        paths = write_study_report(study_dir)
    assert "param_importances_png" not in paths and "optimization_history_png" in paths
    assert any("param importances" in r.getMessage() and "2 complete trials" in r.getMessage() for r in caplog.records)
    assert "param importances: skipped" in paths["summary"].read_text()


def test_cli_prints_table_and_paths(study, capsys):
    study_dir, _, _ = study
    assert main([str(study_dir)]) == 0
    out = capsys.readouterr().out
    assert "top_k=2,lr=0.003" in out and str(study_dir / "trials.csv") in out


@pytest.mark.parametrize("make", ["missing", "no_info"])
def test_cli_bad_directory_exits_2(tmp_path, make):
    target = tmp_path / "nothing"
    if make == "no_info":
        target.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "moe_lab.report", str(target)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {target}: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unknown_study_name_is_one_line_error(tmp_path, capsys):
    make_study(tmp_path / "s", TRIALS[:1])
    info = json.loads((tmp_path / "s" / "study_info.json").read_text())
    (tmp_path / "s" / "study_info.json").write_text(json.dumps({**info, "study_name": "other"}))
    assert main([str(tmp_path / "s")]) == 2
    assert "no study named 'other'" in capsys.readouterr().err


def test_readable_colormap_keeps_the_worst_configuration_visible(study):
    import matplotlib.colors as mcolors
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    from moe_lab.report.sweep_plots import _readable_colormaps

    ax = plot_parallel_coordinate(load_study_data(study[0]).study)
    lines = next(c for c in ax.collections if c.get_array() is not None and len(c.get_array()))
    worst = max(lines.get_array())  # minimize: the highest objective

    def lightness(collection) -> float:
        r, g, b, _ = collection.to_rgba(worst)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b  # relative luminance (sRGB weights)

    assert lightness(lines) > 0.9  # Optuna's "Blues": white on white
    _readable_colormaps(ax.figure)
    assert lightness(lines) < 0.8 and not lines.get_cmap().name.startswith("Blues")
    best = min(lines.get_array())
    assert mcolors.rgb_to_hsv(lines.to_rgba(best)[:3])[2] < mcolors.rgb_to_hsv(lines.to_rgba(worst)[:3])[2]
    import matplotlib.pyplot as plt

    plt.close(ax.figure)


def make_one_key_grid(study_dir: Path, runs: dict[int, list[tuple[float, float, float]]]) -> None:
    """A grid over model.moe.top_k: per value, per seed (objective, tokens/s, wall seconds), with each
    run's metrics.json and val/loss + train/lm_loss events, as the sweep runner leaves them."""
    study_dir.mkdir(parents=True)
    db = f"sqlite:///{study_dir / 'study.db'}"
    study = optuna.create_study(study_name="grid1", storage=db, direction="minimize")
    for config_id, (top_k, per_seed) in enumerate(runs.items()):
        name = f"t{config_id:03d}-top_k={top_k}"
        run_dirs = [f"trials/{name}/seed{s}" for s in range(len(per_seed))]
        values = [v for v, _, _ in per_seed]
        for seed, (run_dir, (value, rate, wall)) in enumerate(zip(run_dirs, per_seed, strict=True)):
            write_events(study_dir / run_dir, "val/loss", seed_curve(value, seed))
            write_events(study_dir / run_dir, "train/lm_loss", seed_curve(value + 0.5, seed))
            (study_dir / run_dir / "metrics.json").write_text(
                json.dumps({"status": "completed", "val_loss": value, "tokens_per_s": rate, "wall_time_s": wall})
            )
        attrs = {
            "config_id": config_id,
            "label": f"top_k={top_k}",
            "seeds": list(range(len(per_seed))),
            "run_dirs": run_dirs,
            "objective_values": values,
            "objective_mean": statistics.fmean(values),
            "objective_std": statistics.stdev(values),
            "active_params": 1_000_000,
            "total_params": 2_000_000 * top_k,
            "tokens_per_s": statistics.fmean(r for _, r, _ in per_seed),
            "duration_s": 999.0,
        }
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                value=statistics.fmean(values),
                params={"model.moe.top_k": top_k},
                distributions={"model.moe.top_k": DISTRIBUTIONS["model.moe.top_k"]},
                user_attrs=attrs,
            )
        )
    info = {
        "study_name": "grid1",
        "storage_url": db,
        "objective_metric": "val_loss",
        "direction": "minimize",
        "sampler": "grid",
        "seeds": [0, 1, 2],
        "compute_matching": "active",
        "base": "x.yaml",
    }
    (study_dir / "study_info.json").write_text(json.dumps(info))


def test_a_grid_over_one_key_gets_its_own_plot_mean_runs_and_per_run_medians(tmp_path):
    # Three seeds, one of them on a loaded machine: the median ignores it, a mean would not.
    runs = {
        4: [(2.5, 1000.0, 90.0), (2.625, 3000.0, 60.0), (2.75, 50000.0, 30.0)],
        1: [(2.25, 2000.0, 50.0), (2.5, 2500.0, 40.0), (2.375, 100.0, 700.0)],
    }
    study_dir = tmp_path / "grid1"
    make_one_key_grid(study_dir, runs)
    paths = write_study_report(study_dir)
    plots = study_dir / "plots"
    assert paths["objective_vs_top_k"] == plots / "objective_vs_top_k.png"
    assert paths["objective_vs_top_k"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Optuna's history / importance / parallel / slice plots say nothing about one key: not drawn,
    # and without --html no plotly.min.js.
    assert sorted(p.name for p in plots.iterdir()) == [
        "objective_vs_top_k.png",
        "train_loss_curves.png",
        "val_loss_curves.png",
    ]
    rows = load_study_data(study_dir).rows
    assert [r.label for r in rows] == ["top_k=1", "top_k=4"]
    assert [r.metrics["tokens_per_s"] for r in rows] == [2000.0, 3000.0]
    assert [r.run_time_s for r in rows] == [50.0, 60.0]
    table = format_table(rows, "val_loss")
    assert "2.00M" in table.splitlines()[2] and "2.00k" in table.splitlines()[2] and "50.0s" in table
    # The mean run: the mean of the three seeds' curves, step by step.
    for config, (top_k, per_seed) in enumerate(runs.items()):
        mean_dir = study_dir / "trials" / f"t{config:03d}-top_k={top_k}" / "mean"
        curves = [seed_curve(v, s) for s, (v, _, _) in enumerate(per_seed)]
        expected = {step: sum(c[step] for c in curves) / 3 for step in STEPS}
        assert read_scalars(mean_dir, "val/loss") == pytest.approx(expected, rel=1e-6)
    # Reporting again rewrites the mean runs instead of adding a second copy.
    write_study_report(study_dir)
    assert len(list((study_dir / "trials" / "t000-top_k=4" / "mean").glob("events.out.tfevents.*"))) == 1


def test_a_pruned_value_is_drawn_hollow_with_its_state_and_no_mean():
    """A pruned configuration's objective is from before the end of training: its seeds are shown,
    hollow, its tick says so, and the mean line does not run through it."""
    import matplotlib.pyplot as plt

    from moe_lab.report.figures import objective_by_value

    seeds = {"4": {0: 1.66, 1: 1.67}, "8": {0: 1.68, 1: 1.66}, "32": {0: 1.70}}
    fig = objective_by_value(seeds, "n_experts", "val_loss", unfinished={"32": "pruned"})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["4", "8", "32\n(pruned)"]
    mean_line = next(line for line in ax.get_lines() if len(line.get_ydata()) == 3)
    assert list(mean_line.get_ydata()[:2]) == pytest.approx([1.665, 1.67]) and math.isnan(mean_line.get_ydata()[2])
    seed0 = ax.collections[0]  # seed 0's markers: filled at 4 and 8, hollow at 32
    assert [tuple(c) for c in seed0.get_facecolors()][2] == (0.0, 0.0, 0.0, 0.0)
    assert all(c[3] == 1.0 for c in seed0.get_facecolors()[:2])
    assert [t.get_text() for t in ax.texts] == ["1.6650", "1.6700"]  # no mean written for the pruned value
    plt.close(fig)


def test_summary_says_which_differences_are_beyond_seed_noise(study):
    """Best (trial 4: 2.0, 2.25) against trial 0 (2.5, 2.8), paired by seed: differences -0.5 and -0.55,
    mean -0.525, SE = 0.025, t(1) = -21.0, 95% CI -0.525 ± 12.706 · 0.025 = [-0.8427, -0.2073]: better,
    but on 2 seeds only indicative. Trial 5 has one finite seed: no test."""
    text = study[2]["summary"].read_text()
    section = text.split("## Best mean against the others: a difference or seed noise?")[1].split("\n## ")[0]
    assert (
        "| top_k=1,lr=0.001 | -0.5250 | paired t(1) | 0.03 | [-0.8427, -0.2073] | **top_k=2,lr=0.003 better** "
        "(indicative: n ≤ 2) |"
    ) in section
    assert "| top_k=1,lr=0.01 | -0.2500 | - | - | - | fewer than 2 seeds in top_k=1,lr=0.01 (n = 1)" in section
    assert section.count("\n| ") == 2 + 2  # header, rule, the two other complete configurations


def test_summary_shows_the_base_experiment_relative_to_itself(tmp_path):
    study_dir = tmp_path / "runs" / "demo"
    make_study(study_dir, TRIALS[:1])
    info = json.loads((study_dir / "study_info.json").read_text())
    info["base"] = str(tmp_path / "experiments" / "tiny.yaml")  # what the runner records: absolute
    (study_dir / "study_info.json").write_text(json.dumps(info))
    text = write_study_report(study_dir)["summary"].read_text()
    assert "base experiment: `../../experiments/tiny.yaml`" in text and str(tmp_path) not in text
