"""Ablation reports, checked against a hand-built ablation directory: study_info.json, a sweep.yaml made
from the AblationConfig schema, and run directories with hand-chosen metrics.json values and real
TensorBoard event files. Expected numbers are computed here another way (the statistics module)."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from scipy.stats import t as scipy_t
from torch.utils.tensorboard import SummaryWriter

from moe_lab.ablate import AblationConfig, ClaimConfig
from moe_lab.formatting import si
from moe_lab.report import __main__ as report
from moe_lab.report.ablation_data import _arm_of, load_ablation_data
from moe_lab.report.ablation_plots import layer_load_cv, val_curves
from moe_lab.report.ablation_results import write_ablation_report
from moe_lab.report.common import latex_escape

ROOT = Path(__file__).resolve().parents[1]
SEEDS = [0, 1, 2]
STEPS = [10, 20, 30]
ARMS = {
    "dense": ["model.moe.placement=none"],
    "e8_top1": ["model.moe.n_experts=8", "model.moe.top_k=1"],
    "e8_top2": ["model.moe.n_experts=8", "model.moe.top_k=2"],
}
# Per arm, per seed: metrics.json values (None: the run failed). e8_top1's seed 2 failed.
RUNS = {
    "dense": [
        dict(val_loss=1.90, val_bpb=2.70, tokens_per_s=12000.0, final_load_cv=None, collapse=0),
        dict(val_loss=1.89, val_bpb=2.72, tokens_per_s=12100.0, final_load_cv=None, collapse=0),
        dict(val_loss=1.91, val_bpb=2.68, tokens_per_s=11900.0, final_load_cv=None, collapse=0),
    ],
    "e8_top1": [
        dict(val_loss=1.86, val_bpb=2.66, tokens_per_s=9000.0, final_load_cv=0.30, collapse=1),
        dict(val_loss=1.92, val_bpb=2.74, tokens_per_s=9100.0, final_load_cv=0.34, collapse=0),
        None,
    ],
    "e8_top2": [
        dict(val_loss=1.81, val_bpb=2.60, tokens_per_s=8000.0, final_load_cv=0.10, collapse=0),
        dict(val_loss=1.82, val_bpb=2.61, tokens_per_s=8100.0, final_load_cv=0.12, collapse=0),
        dict(val_loss=1.80, val_bpb=2.59, tokens_per_s=8200.0, final_load_cv=0.11, collapse=0),
    ],
}
CLAIMS = [
    ClaimConfig(metric="val_loss", arm="e8_top2", less_than="dense"),  # supported
    ClaimConfig(metric="final_load_cv", arm="e8_top1", less_than="e8_top2"),  # contradicted (2 pairs)
    ClaimConfig(metric="val_loss", arm="e8_top1", less_than="dense"),  # undecided
    ClaimConfig(metric="val_bpb", arm="dense", at_most="e8_top2", tolerance=0.2, note="bpb within 0.2"),
    ClaimConfig(metric="final_load_cv", arm="e8_top2", less_than="dense"),  # dense has no load CV
]


def write_events(run_dir: Path, scalars: dict[str, dict[int, float]]) -> None:
    with SummaryWriter(log_dir=str(run_dir)) as writer:
        for tag, curve in scalars.items():
            for step, value in curve.items():
                writer.add_scalar(tag, value, step)


def layer_cv(cv: float, layer: int) -> float:
    """The last logged load CV of a layer: layer 0 a little under the run's mean, layer 1 over it."""
    return cv - 0.01 + 0.02 * layer


def make_run(run_dir: Path, arm: str, seed: int, values: dict | None) -> None:
    moe = arm != "dense"
    metrics = {
        "status": "failed",
        "error": "non-finite loss at step 120",
        "steps": 120,
        "val_loss": None,
        "val_bpb": None,
        "active_params": 1_000_000,
        "total_params": 3_000_000 if moe else 1_000_000,
    }
    scalars = {}
    if values is not None:
        metrics.update(
            status="completed",
            error=None,
            steps=STEPS[-1],
            val_loss=values["val_loss"],
            val_bpb=values["val_bpb"],
            tokens_per_s=values["tokens_per_s"],
            final_load_cv=values["final_load_cv"],
            final_dropped_frac=0.01 * seed if moe else None,
            collapse_events=[{"step": 20}] * values["collapse"],
            collapse_events_count=values["collapse"],
            moe_layers=[0, 1] if moe else [],
        )
        scalars["val/loss"] = {s: values["val_loss"] + 0.5 * (len(STEPS) - 1 - i) for i, s in enumerate(STEPS)}
        scalars["train/lm_loss"] = {s: values["val_loss"] + 0.1 for s in STEPS}
        if moe:
            for layer in (0, 1):  # earlier steps far off: the report must take the last value
                scalars[f"moe/layer{layer}/load_cv"] = {10: 0.9, 20: 0.8, 30: layer_cv(values["final_load_cv"], layer)}
                scalars[f"moe/layer{layer}/expert0"] = {30: 0.125}
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "config.yaml").write_text(
        OmegaConf.to_yaml(
            OmegaConf.create(
                {
                    "seed": seed,
                    "model": {"n_layers": 2},
                    "data": {"batch_size": 4, "block_size": 16},
                    "trainer": {"max_steps": 30, "accumulate_grad_batches": 1},
                }
            )
        )
    )
    other_checkout = arm == "e8_top2" and seed == 2
    (run_dir / "env.json").write_text(
        json.dumps(
            {
                "python": "3.11.9",
                "platform": "Linux-test",
                "packages": {"torch": "2.5.1", "lightning": "2.4.0"},
                "git": {"commit": "def456" if other_checkout else "abc123", "dirty": other_checkout},
                "data": {"data_hash": "d41d8cd9"},
                "torch": {"cuda_device": None},
            }
        )
    )
    if scalars:
        write_events(run_dir, scalars)


def make_ablation(study_dir: Path) -> Path:
    cfg = AblationConfig(
        name="demo_ablation",
        base="../sweep_base.yaml",
        seeds=SEEDS,
        compute_matching="active",
        paper="Switch Transformer (Fedus et al. 2022), Table 1",
        claim="MoE beats dense.",
        caveat="tiny fake runs",
        arms=ARMS,
        claims=CLAIMS,
    )
    study_dir.mkdir(parents=True)
    (study_dir / "sweep.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    (study_dir / "study_info.json").write_text(
        json.dumps(
            {
                "kind": "ablation",
                "study_name": "demo_ablation",
                "storage_url": "sqlite:////nowhere/study.db",
                "objective_metric": "val_loss",
                "direction": "minimize",
                "sampler": "grid",
                "seeds": SEEDS,
                "compute_matching": "active",
                "base": "/somewhere/experiments/sweep_base.yaml",
            }
        )
    )
    for number, arm in enumerate(ARMS):
        for seed, values in enumerate(RUNS[arm]):
            make_run(study_dir / "trials" / f"t{number:03d}-arm={arm}" / f"seed{seed}", arm, seed, values)
    return study_dir


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    study_dir = make_ablation(tmp_path_factory.mktemp("ablations") / "demo_ablation")
    return study_dir, write_ablation_report(study_dir)


def completed(arm: str, key: str) -> list[float]:
    return [v[key] for v in RUNS[arm] if v is not None and v[key] is not None]


def verdict_line(text: str, claim: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith(f"- {claim} — ")]
    assert len(lines) == 1, (claim, text)
    return lines[0]


def paired(a: list[float], b: list[float], margin: float = 0.0) -> tuple[float, float, float, float]:
    """(mean difference, t against the margin, 95% CI low, high) from the definitions: Student's t on
    the per-seed differences, df = n - 1, the quantile from scipy's t distribution."""
    diffs = [x - y for x, y in zip(a, b, strict=False)]
    mean, se = statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))
    half = scipy_t.ppf(0.975, len(diffs) - 1) * se
    return mean, (mean - margin) / se, mean - half, mean + half


def test_table_means_and_stds(ablation):
    study_dir, paths = ablation
    text = paths["results_md"].read_text()
    table = {
        line.split(" | ")[0].removeprefix("| "): line.split(" | ")
        for line in text.split("## Results")[1].split("\n## ")[0].splitlines()
        if line.startswith("| ") and " | " in line
    }
    for arm in ARMS:
        cells = table[arm]
        for column, key in ((2, "val_loss"), (3, "val_bpb")):
            values = completed(arm, key)
            assert cells[column] == (
                f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"
                + ("" if len(values) == len(completed(arm, "val_loss")) else f" (n={len(values)})")
            )
        assert cells[1] == f"{len(completed(arm, 'val_loss'))}/3"
    assert table["e8_top1"][1] == "2/3"  # seed 2 failed
    rates = completed("e8_top2", "tokens_per_s")
    assert table["e8_top2"][4] == si(statistics.median(rates))  # the machine's figure: a median, no spread
    assert table["dense"][8] == "1.00M" and table["e8_top2"][9].rstrip(" |") == "3.00M"  # active, total
    cvs = completed("e8_top2", "final_load_cv")
    assert table["e8_top2"][5] == f"{statistics.fmean(cvs):.4f} ± {statistics.stdev(cvs):.4f}"
    assert table["dense"][5] == "-" and table["dense"][6] == "-"  # no MoE layer: no load CV, no drops
    assert table["e8_top1"][7] == "1"  # collapse events over the completed seeds
    assert "- e8_top1: n = 2 of 3; seed 2 failed (non-finite loss at step 120)" in text


def test_verdicts(ablation):
    text = ablation[1]["results_md"].read_text()
    top2, dense, top1 = (completed(arm, "val_loss") for arm in ("e8_top2", "dense", "e8_top1"))

    supported = verdict_line(text, "val_loss: e8_top2 < dense")
    delta, t, low, high = paired(top2, dense)
    # by hand: differences -0.09, -0.07, -0.11; se = 0.02 / √3 = 0.011547; t(2) = -7.794; t_0.975(2) = 4.3027
    assert (delta, t, low, high) == pytest.approx((-0.09, -7.794, -0.1397, -0.0403), abs=1e-3)
    assert supported.startswith("- val_loss: e8_top2 < dense — **supported**: 1.8100 vs 1.9000 (n = 3 vs 3)")
    assert f"Δ = {delta:+.4f}; paired t(2) = {t:+.2f}, p = 0.016, 95% CI of Δ [{low:+.4f}, {high:+.4f}]" in supported

    cv = verdict_line(text, "final_load_cv: e8_top1 < e8_top2")
    delta, t, low, high = paired([0.30, 0.34], [0.10, 0.12])  # the seeds both arms completed: 0 and 1
    assert low > 0 and "— **contradicted** (indicative: n ≤ 2): 0.3200 vs 0.1100 (n = 2 vs 3)" in cv
    assert f"paired t(1) = {t:+.2f}" in cv and f"[{low:+.4f}, {high:+.4f}]" in cv

    undecided = verdict_line(text, "val_loss: e8_top1 < dense")
    delta, t, low, high = paired(top1, dense[:2])
    assert low < 0 < high and "— **undecided** (indicative: n ≤ 2): 1.8900 vs 1.9000 (n = 2 vs 3)" in undecided
    assert f"the data still allow e8_top1 lower by up to {-low:.4f} or higher by up to {high:.4f}" in undecided

    at_most = verdict_line(text, "val_bpb: dense ≤ e8_top2 + 0.2")
    delta, t, low, high = paired(completed("dense", "val_bpb"), completed("e8_top2", "val_bpb"), margin=0.2)
    assert high < 0.2 and "— **supported**: 2.7000 vs 2.6000" in at_most and f"t(2) = {t:+.2f}" in at_most
    assert f"[{low:+.4f}, {high:+.4f}]" in at_most and at_most.endswith("Note: bpb within 0.2")

    untested = verdict_line(text, "final_load_cv: e8_top2 < dense")
    assert "not tested: no completed seed of dense recorded final_load_cv" in untested
    assert (
        "**2 supported, 1 contradicted, 1 undecided of 5 claims** (1 decided on n ≤ 2 seeds: indicative only). "
        "Contradicted at this scale: final_load_cv: e8_top1 < e8_top2. Not tested: final_load_cv: e8_top2 < dense."
    ) in text


def test_a_tolerance_claim_needs_the_upper_bound_inside_the_tolerance(ablation):
    from moe_lab.report.ablation_claims import judge
    from moe_lab.report.ablation_data import Claim

    arms = {arm.name: arm for arm in load_ablation_data(ablation[0]).arms}
    _, _, low, high = paired(completed("dense", "val_bpb"), completed("e8_top2", "val_bpb"))
    # Δ = +0.10 with CI [0.075, 0.125]: inside a tolerance of 0.13, straddling 0.11, wholly above 0.05
    for tolerance, outcome in ((0.13, "supported"), (0.11, "undecided"), (0.05, "contradicted")):
        claim = Claim("val_bpb", "dense", "e8_top2", at_most=True, tolerance=tolerance)
        assert judge(claim, arms).outcome == outcome, (tolerance, low, high)


def test_markdown_settings_and_provenance(ablation):
    text = ablation[1]["results_md"].read_text()
    assert text.startswith("# Ablation: demo_ablation\n")
    for expected in (
        "- paper: Switch Transformer (Fedus et al. 2022), Table 1",
        "- claim: MoE beats dense.",
        "- **caveat:** tiny fake runs",
        "- seeds: [0, 1, 2]",
        "compute matching: **active**",
        "30 steps × 4 sequences × 16 tokens = 1,920 training tokens per run (all arms)",
        "- git commit: `abc123` clean (8 runs), `def456` dirty (1 run)",
        "- torch: 2.5.1 (all 9 runs)",
        "- lightning: 2.4.0 (all 9 runs)",
        "- data hash: `d41d8cd9` (all 9 runs)",
        "- device: cpu (all 9 runs)",
        "- `e8_top2`: `model.moe.n_experts=8`, `model.moe.top_k=2`",
        "- val curves: [png](plots/val_curves.png)",
        "- load balance: [png](plots/load_balance.png)",
    ):
        assert expected in text, expected
    assert "/somewhere" not in text and "/nowhere" not in text  # no absolute paths


def test_csv_reads_back(ablation):
    with ablation[1]["results_csv"].open(newline="") as f:
        rows = {r["arm"]: r for r in csv.DictReader(f)}
    assert list(rows) == list(ARMS)  # sweep.yaml's order
    for arm, row in rows.items():
        for key in ("val_loss", "val_bpb", "tokens_per_s"):
            values = completed(arm, key)
            assert float(row[f"{key}_mean"]) == pytest.approx(statistics.fmean(values), rel=1e-12)
            assert float(row[f"{key}_std"]) == pytest.approx(statistics.stdev(values), rel=1e-12)
            assert int(row[f"{key}_n"]) == len(values)
        assert json.loads(row["overrides"]) == ARMS[arm] and json.loads(row["seeds"]) == SEEDS
    assert json.loads(rows["e8_top1"]["seeds_completed"]) == [0, 1] and rows["e8_top1"]["n"] == "2"
    assert rows["dense"]["final_load_cv_mean"] == "" and rows["dense"]["final_load_cv_n"] == "0"
    assert int(rows["e8_top2"]["total_params"]) == 3_000_000 and rows["e8_top1"]["collapse_events_total"] == "1"


def test_tex_escapes_names_and_holds_the_numbers(ablation):
    tex = ablation[1]["results_tex"].read_text()
    assert latex_escape("e8_top2 & 50%") == r"e8\_top2 \& 50\%"
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    top2 = next(line for line in tex.splitlines() if line.startswith(r"e8\_top2 & "))
    assert r"$1.8100 \pm 0.0100$" in top2 and r"$2.6000 \pm 0.0100$" in top2 and "3/3" in top2
    assert "e8_top" not in tex.replace(r"e8\_top", "")  # every underscore escaped
    dense = next(line for line in tex.splitlines() if line.startswith("dense & "))
    assert dense.count("--") == 2 and " & -- & -- & 0 & " in dense  # no load CV, no drops; 0 collapses


def test_trial_directory_names_map_to_arms():
    long = "x" * 90  # the sweep runner truncates a trial label to 80 characters
    assert _arm_of(f"arm={long}"[:80], ["dense", long]) == long
    assert _arm_of("arm=e8_top2", list(ARMS)) == "e8_top2"
    assert _arm_of("arm=unlisted", list(ARMS)) == "unlisted"


def test_plots_and_layer_load(ablation):
    study_dir, paths = ablation
    for key in ("val_curves", "load_balance"):
        assert paths[key] == study_dir / "plots" / f"{key}.png"
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = load_ablation_data(study_dir)
    loads = layer_load_cv(data)
    assert loads["dense"] == {}  # a dense arm logs no moe/ tags
    for arm in ("e8_top1", "e8_top2"):
        cvs = completed(arm, "final_load_cv")
        assert loads[arm] == {layer: pytest.approx([layer_cv(cv, layer) for cv in cvs]) for layer in (0, 1)}
    curves = val_curves(data)
    assert list(curves) == list(ARMS) and len(curves["e8_top1"]) == 2  # the failed seed logged nothing
    assert curves["dense"][0][STEPS[-1]] == pytest.approx(1.90)


def test_regenerating_is_byte_identical_also_elsewhere(ablation, tmp_path):
    study_dir, paths = ablation
    names = ("results.md", "results.csv", "results.tex")
    first = {name: (study_dir / name).read_bytes() for name in names}
    write_ablation_report(study_dir)
    assert {name: (study_dir / name).read_bytes() for name in names} == first
    moved = tmp_path / "copied" / study_dir.name
    shutil.copytree(study_dir, moved)
    for name in names:
        (moved / name).unlink()
    write_ablation_report(moved)
    assert {name: (moved / name).read_bytes() for name in names} == first


def test_missing_and_running_seeds_are_reported(tmp_path, capsys):
    study_dir = make_ablation(tmp_path / "partial")
    (study_dir / "trials" / "t002-arm=e8_top2" / "seed2" / "metrics.json").unlink()  # still running
    shutil.rmtree(study_dir / "trials" / "t001-arm=e8_top1")  # not started at all
    paths = write_ablation_report(study_dir, echo=True)
    out = capsys.readouterr().out
    text = paths["results_md"].read_text()
    assert "- e8_top2: n = 2 of 3; seed 2 has no metrics.json yet (running, or died before finishing)" in text
    assert "- e8_top1: n = 0 of 3; seed 0 not started; seed 1 not started; seed 2 not started" in text
    assert "| e8_top2 | 2/3 | 1.8150 ± 0.0071 |" in text  # mean, stdev of 1.81 and 1.82
    assert "| e8_top1 | 0/3 | - | - |" in text
    assert "val_loss: e8_top1 < dense — not tested: no completed seed of e8_top1 recorded val_loss" in text
    # echo: the table and the verdicts (2 pairs: t(1) = -8.0, p = 0.08, undecided)
    assert "val_loss: e8_top2 < dense — undecided (indicative: n ≤ 2)" in out and "e8_top2  2/3" in out
    with paths["results_csv"].open(newline="") as f:
        rows = {r["arm"]: r for r in csv.DictReader(f)}
    assert rows["e8_top2"]["val_loss_n"] == "2" and rows["e8_top1"]["val_loss_mean"] == ""


def test_a_retried_seed_counts_its_retry(tmp_path):
    """A worker killed mid-run (a session ending) leaves seedS without metrics; its retry trains in
    seedS.retry1. The retry's metrics count for seed S, so the table equals the uninterrupted one."""
    study_dir = make_ablation(tmp_path / "retried")
    top2 = study_dir / "trials" / "t002-arm=e8_top2"
    (top2 / "seed1").rename(top2 / "seed1.retry1")
    (top2 / "seed1").mkdir()
    shutil.copy(top2 / "seed1.retry1" / "config.yaml", top2 / "seed1")  # the interrupted attempt
    text = write_ablation_report(study_dir)["results_md"].read_text()
    mean, std = statistics.fmean(completed("e8_top2", "val_loss")), statistics.stdev(completed("e8_top2", "val_loss"))
    assert f"| e8_top2 | 3/3 | {mean:.4f} ± {std:.4f} |" in text
    assert "seed 1 has no metrics.json" not in text
    runs = {run.seed: run for arm in load_ablation_data(study_dir).arms if arm.name == "e8_top2" for run in arm.runs}
    assert runs[1].run_dir == top2 / "seed1.retry1" and runs[1].metrics["val_loss"] == RUNS["e8_top2"][1]["val_loss"]

    # A retry still training after a failed attempt: the seed is running, not failed.
    top1 = study_dir / "trials" / "t001-arm=e8_top1"
    (top1 / "seed2.retry1").mkdir()
    runs = {run.seed: run for arm in load_ablation_data(study_dir).arms if arm.name == "e8_top1" for run in arm.runs}
    assert runs[2].status == "running" and runs[2].run_dir == top1 / "seed2.retry1"


def test_single_seed_arms_say_so_instead_of_dividing(tmp_path):
    study_dir = make_ablation(tmp_path / "one_seed")
    for arm_dir in (study_dir / "trials").iterdir():
        for seed in (1, 2):
            shutil.rmtree(arm_dir / f"seed{seed}")
    text = write_ablation_report(study_dir)["results_md"].read_text()
    line = verdict_line(text, "val_loss: e8_top2 < dense")
    assert "**undecided** (indicative: n ≤ 1): 1.8100 vs 1.9000 (n = 1 vs 1), Δ = -0.0900" in line
    assert "fewer than 2 seeds in e8_top2 (n = 1) and dense (n = 1): no seed spread, not tested" in line
    assert "| dense | 1/3 | 1.9000 |" in text


def test_dispatch_by_kind(ablation, tmp_path, monkeypatch, capsys):
    study_dir, _ = ablation
    assert report.detect_kind(study_dir) == "ablation"
    for info in ({"study_name": "s"}, {"kind": "sweep", "study_name": "s"}):  # sweeps: old and new
        sweep_dir = tmp_path / f"sweep{len(info)}"
        sweep_dir.mkdir()
        (sweep_dir / "study_info.json").write_text(json.dumps(info))
        assert report.detect_kind(sweep_dir) == "study"
        called = []
        monkeypatch.setitem(report.REPORTS, "study", lambda path, called=called: called.append(path) or {})
        assert report.main([str(sweep_dir)]) == 0 and called == [sweep_dir]
    assert report.main([str(study_dir)]) == 0
    assert "val_loss: e8_top2 < dense — supported" in capsys.readouterr().out


def test_cli(ablation):
    study_dir, _ = ablation
    proc = subprocess.run(
        [sys.executable, "-m", "moe_lab.report", str(study_dir)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 supported, 1 contradicted, 1 undecided of 5 claims" in proc.stdout
    assert str(study_dir / "results.md") in proc.stdout


def test_busy_seconds_is_the_union_of_the_run_intervals():
    from moe_lab.report.ablation_suite import busy_seconds

    # Overlapping runs count once, the gap between sessions (12..20) not at all: 12 + 5 + 1.
    assert busy_seconds([(20.0, 25.0), (0.0, 10.0), (30.0, 31.0), (5.0, 12.0), (21.0, 22.0)]) == 18.0
    assert busy_seconds([]) == 0.0


def test_wall_time_counts_an_attempt_cut_off_and_only_the_part_its_retry_trained(tmp_path):
    from moe_lab.report.ablation_suite import attempt_intervals, busy_seconds

    def attempt(name: str, started: float, *, updated=None, metrics=None, ended=None):
        run_dir = tmp_path / "trials" / "t000-arm=a" / name
        run_dir.mkdir(parents=True)
        (run_dir / "env.json").write_text("{}")
        os.utime(run_dir / "env.json", (started, started))
        if updated is not None:
            (run_dir / "progress.json").write_text(json.dumps({"status": "running", "updated": updated}))
        if metrics is not None:
            (run_dir / "metrics.json").write_text(json.dumps(metrics))
            os.utime(run_dir / "metrics.json", (ended, ended))

    # Seed 0 trained from t=1000 until its session ended at t=1200 (progress last written then); its retry
    # resumed a checkpoint taken at 150 s and trained 300 s more, ending at t=5000: 200 + 300 s of training.
    # Its metrics' wall time (150 + 300 s, the whole run) must not stretch the retry back over the gap.
    attempt("seed0", 1000.0, updated=1200.0)
    retry = {"status": "completed", "wall_time_s": 450.0, "resumed_from_step": 600, "this_part": {"wall_time_s": 300.0}}
    attempt("seed0.retry1", 4700.0, metrics=retry, ended=5000.0)
    # Seed 1 ran whole in one attempt alongside the retry: [4600, 5000], so 100 s more.
    attempt("seed1", 4600.0, metrics={"status": "completed", "wall_time_s": 400.0}, ended=5000.0)
    attempt("seed2", 4600.0)  # started, no progress yet: nothing to count
    assert sorted(attempt_intervals(tmp_path)) == [(1000.0, 1200.0), (4600.0, 5000.0), (4700.0, 5000.0)]
    assert busy_seconds(attempt_intervals(tmp_path)) == 600.0


def test_suite_collects_each_ablation_and_assembles_results_md(ablation, tmp_path):
    from moe_lab.report.ablation_suite import SUITE_JSON, assemble, collect

    study_dir = tmp_path / "out" / "demo_ablation"
    shutil.copytree(ablation[0], study_dir)
    # Completed runs of 100 s each, ending 60 s apart with two workers: 8 runs from t=1000 on.
    ends = {}
    for path in sorted(study_dir.glob("trials/*/seed*/metrics.json")):
        metrics = json.loads(path.read_text())
        if metrics["status"] == "completed":
            metrics["wall_time_s"] = 100.0
            path.write_text(json.dumps(metrics))
            ends[path] = 1100.0 + 60.0 * len(ends)
            os.utime(path, (ends[path], ends[path]))
    assert len(ends) == 8
    dest = collect(study_dir, tmp_path / "results")
    suite = json.loads((dest / SUITE_JSON).read_text())
    # Runs [1000, 1100], [1060, 1160], ..., [1420, 1520]: busy from 1000 to 1520 without a gap.
    assert suite["wall_time_s"] == pytest.approx(520.0)
    assert (suite["runs_completed"], suite["runs_expected"]) == (8, 9)
    assert suite["commits"] == ["abc123", "def456 (dirty)"]
    md = (study_dir / "results.md").read_text()
    assert suite["claim_outcomes"] == {"supported": 2, "contradicted": 1, "undecided": 1, "not tested": 1}
    assert "**2 supported, 1 contradicted, 1 undecided of 5 claims**" in md and suite["claims"] == len(CLAIMS)
    assert (dest / "results.md").read_text() == md and (dest / "plots" / "val_curves.png").is_file()

    text = assemble(tmp_path / "results", tmp_path / "RESULTS.md")
    assert (tmp_path / "RESULTS.md").read_text() == text
    assert "**code: runs from 2 revisions, not one clean commit**: abc123, def456 (dirty)" in text
    row = next(line for line in text.splitlines() if line.startswith("| [demo_ablation]"))
    assert "(#ablation-demo_ablation) | 8 of 9 | 8m40s |" in row
    assert "\n## Ablation: demo_ablation\n" in text and "\n### Claims\n" in text and "\n# Ablation" not in text
    assert "](results/demo_ablation/plots/val_curves.png)" in text
    # One clean commit is said as such.
    suite["commits"] = ["abc123"]
    (dest / SUITE_JSON).write_text(json.dumps(suite))
    assert "- code: every run at commit `abc123`, clean tree" in assemble(tmp_path / "results", tmp_path / "R.md")


def test_suite_cli_errors_are_one_line(tmp_path, capsys):
    from moe_lab.report.ablation_suite import main

    assert main(["collect", str(tmp_path)]) == 2
    assert main(["assemble", "--results", str(tmp_path), "--out", str(tmp_path / "R.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"error: {tmp_path}: no study_info.json") and "no collected ablation" in err[1]
    assert not (tmp_path / "R.md").exists()


def test_per_seed_table_has_every_seed_and_re_derives_the_verdicts(ablation):
    """per_seed.csv: one row per arm and seed with its status, metrics, run and code; the claims'
    t tests recomputed from it alone (scipy's paired t) give the p-values results.md prints."""
    from scipy.stats import ttest_rel

    study_dir, paths = ablation
    with paths["per_seed_csv"].open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["arm"], int(r["seed"])) for r in rows] == [(arm, s) for arm in ARMS for s in SEEDS]
    for r in rows:
        values = RUNS[r["arm"]][int(r["seed"])]
        if values is None:
            assert r["status"] == "failed" and r["val_loss"] == ""
            continue
        assert r["status"] == "completed" and float(r["val_loss"]) == values["val_loss"]
        assert (study_dir / r["run_dir"] / "metrics.json").is_file() and r["code"]

    def column(arm: str, metric: str) -> dict[int, float]:
        return {int(r["seed"]): float(r[metric]) for r in rows if r["arm"] == arm and r["status"] == "completed"}

    top2, dense = column("e8_top2", "val_loss"), column("dense", "val_loss")
    p = ttest_rel([top2[s] for s in SEEDS], [dense[s] for s in SEEDS]).pvalue
    line = verdict_line(paths["results_md"].read_text(), "val_loss: e8_top2 < dense")
    assert "paired t(2) = " in line and f"p = {p:.2g}," in line
    text = paths["results_md"].read_text()
    assert "| e8_top1 | 1.8600 | 1.9200 | - |" in text.split("## Per seed")[1]  # seed 2 failed


def test_a_claim_on_collapses_keeps_one_collapse_column(tmp_path):
    """The per-seed table always carries the collapse count; a claim on it must not add it twice
    (a CSV reader keeps only one of two equal headers)."""
    study_dir = make_ablation(tmp_path / "demo_ablation")
    sweep = OmegaConf.load(study_dir / "sweep.yaml")
    sweep.claims.append({"metric": "collapse_events_count", "arm": "e8_top2", "less_than": "e8_top1"})
    (study_dir / "sweep.yaml").write_text(OmegaConf.to_yaml(sweep))
    paths = write_ablation_report(study_dir)
    with paths["per_seed_csv"].open(newline="") as f:
        header = next(csv.reader(f))
        rows = list(csv.DictReader(f, fieldnames=header))
    assert header.count("collapse_events_count") == 1 and len(header) == len(set(header))
    counts = {(r["arm"], int(r["seed"])): r["collapse_events_count"] for r in rows}
    for arm in ARMS:
        for seed, values in enumerate(RUNS[arm]):
            assert counts[arm, seed] == ("" if values is None else str(values["collapse"]))


def test_loss_against_tokens_says_where_the_arms_separate(ablation):
    """Every fixture curve sits a constant above its run's final value, so at each evaluation the paired
    differences are the final ones (-0.09, -0.07, -0.11): separated from the first evaluation, after 11
    updates of 4 x 16 tokens. e8_top1 pairs with dense on 2 seeds only and never separates."""
    text = ablation[1]["results_md"].read_text()
    section = text.split("## Loss against training tokens")[1].split("\n## ")[0]
    assert "`val_loss: e8_top2 < dense`: e8_top2 separates below dense from 704 training tokens on (step 11)" in section
    _, _, low, high = paired(completed("e8_top2", "val_loss"), completed("dense", "val_loss"))
    assert f"| 704 | -0.0900 | paired t | [{low:+.4f}, {high:+.4f}] |" in section
    assert f"| {31 * 64:,} | -0.0900 |" in section
    assert "`val_loss: e8_top1 < dense`: the arms do not separate" in section
    assert (ablation[0] / "plots" / "val_loss_difference.png").is_file()


def test_separation_is_where_the_interval_leaves_zero_for_good():
    from moe_lab.report.ablation_curves import Point, separation
    from moe_lab.report.stats import compare

    def point(step: int, shift: float) -> Point:
        # differences shift + (-0.01, 0, +0.01): the 95% interval is shift ± 4.303 * 0.00577 = shift ± 0.0248
        return Point(step, step * 10, compare({0: shift - 0.01, 1: shift, 2: shift + 0.01}, {0: 0.0, 1: 0.0, 2: 0.0}))

    below, straddle, above = -0.05, 0.0, 0.05
    assert separation([point(1, below), point(2, straddle), point(3, below), point(4, below)]).step == 3
    assert separation([point(1, below), point(2, below)]).step == 1
    assert separation([point(1, below), point(2, straddle)]) is None  # not separated at the end
    assert separation([point(1, above), point(2, below), point(3, below)]).step == 2  # a side change restarts
    assert separation([]) is None


def test_recorded_tokens_per_step_counts_accumulated_micro_batches():
    from moe_lab.report.ablation_data import recorded_tokens_per_step

    assert recorded_tokens_per_step(4, 16, None) == 64 and recorded_tokens_per_step(4, 16, 1) == 64
    assert recorded_tokens_per_step(4, 16, 3) == 4 * 16 * 3
    assert recorded_tokens_per_step(4, None, 1) is None
