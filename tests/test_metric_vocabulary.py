"""The metric vocabulary is the only place a metric is named: one line added to it reaches every run's
metrics.json, TensorBoard's HPARAMS table, the ablation table and the sweep table, with no other edit.

The test edits a copy of the package (exactly one line, in moe_lab/artifacts/metrics.py) and runs a
tiny ablation with it in a fresh process; the new metric is the last logged value of the training LM
loss, so its expected value is read back from each run's own event file, another way than the code
under test computes it."""

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from moe_lab.report.tb_scalars import read_scalars
from tests.helpers import write_tiny_experiment

REPO = Path(__file__).resolve().parents[1]
NEW_METRIC = (
    '    Metric("final_lm_loss", "train LM loss", "nats/token", tag=TRAIN_LM_LOSS, hparams=True, table=True),\n'
)
ABLATION = """
paper: "vocabulary test"
claim: "a metric added in one line reaches every table"
base: tiny.yaml
output_dir: {out}
seeds: [0, 1]
arms:
  top1: [model.moe.top_k=1]
  top2: [model.moe.top_k=2]
claims:
  - {{metric: final_lm_loss, arm: top2, less_than: top1}}
"""
SWEEP_TABLE = """
import sys
from moe_lab.report.sweep_study import load_study_data
from moe_lab.report.sweep_tables import format_table
print(format_table(load_study_data(sys.argv[1]).rows, "val_loss"))
"""


def package_with_one_more_metric(root: Path) -> Path:
    copy = root / "moe_lab"
    shutil.copytree(REPO / "moe_lab", copy, ignore=shutil.ignore_patterns("__pycache__"))
    vocabulary = copy / "artifacts" / "metrics.py"
    text = vocabulary.read_text()
    start = text.index("VOCABULARY = (\n")
    end = text.index("\n)\n", start) + 1  # the closing parenthesis of the tuple
    vocabulary.write_text(text[:end] + NEW_METRIC + text[end:])
    return root


def experiment_metrics(study_dir: Path) -> list[str]:
    """The metric columns the study's HPARAMS declaration (at the study root) names."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import metadata

    for path in study_dir.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == metadata.EXPERIMENT_TAG:
                    experiment = metadata.parse_experiment_plugin_data(value.metadata.plugin_data.content)
                    return [m.name.tag for m in experiment.metric_infos]
    return []


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_one_line_in_the_vocabulary_reaches_every_table(tmp_path, data_cache):
    root = package_with_one_more_metric(tmp_path / "pkg")
    write_tiny_experiment(tmp_path / "tiny.yaml", data_cache)
    (tmp_path / "abl.yaml").write_text(ABLATION.format(out=tmp_path / "out"))
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run(
        [sys.executable, "-m", "moe_lab.ablate", str(tmp_path / "abl.yaml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    study = tmp_path / "out" / "abl"

    # metrics.json: the last logged train/lm_loss of each run, read from its event file.
    expected = {}
    for run in sorted(study.glob("trials/*/seed*")):
        metrics = json.loads((run / "metrics.json").read_text())
        curve = read_scalars(run, "train/lm_loss")
        assert metrics["final_lm_loss"] == pytest.approx(curve[max(curve)], rel=1e-6), run
        expected.setdefault(run.parent.name.split("=")[-1], []).append(metrics["final_lm_loss"])
        # HPARAMS: each run's final/<name> scalar (at its last validation's step), and the study's declared columns.
        last_val = max(read_scalars(run, "val/loss"))
        assert read_scalars(run, "final/lm_loss") == {last_val: pytest.approx(metrics["final_lm_loss"])}
    assert set(expected) == {"top1", "top2"} and all(len(v) == 2 for v in expected.values())
    assert "final/lm_loss" in experiment_metrics(study)

    # The ablation table: a column with the arm's mean ± std over its seeds, and the claim is tested.
    results = (study / "results.md").read_text()
    assert "| train LM loss (mean ± std) |" in next(line for line in results.splitlines() if line.startswith("| arm |"))
    for arm, values in expected.items():
        cell = f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"
        assert re.search(rf"\| {arm} \| 2/2 \|.*\| {re.escape(cell)} \|", results), (arm, cell)
    assert "- final_lm_loss: top2 < top1" in results

    # The sweep table of the same study: a column with the seeds' mean.
    table = subprocess.run(
        [sys.executable, "-c", SWEEP_TABLE, str(study)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert table.returncode == 0, table.stderr[-3000:]
    header, _, *rows = table.stdout.splitlines()
    assert "train LM loss" in header
    for arm, values in expected.items():
        line = next(r for r in rows if f"arm={arm}" in r)
        assert f"{statistics.fmean(values):.4f}" in line, (line, values)
