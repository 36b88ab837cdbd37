"""What a researcher sees first in TensorBoard: a tiny run's event files hold the curves that tell runs
apart and not the noise (no flat `epoch`, one learning-rate curve, per-expert scalars only when asked
for), its final metrics named once and plotted at the step of its last validation, the HPARAMS columns
in the order a MoE comparison is read, and its config as one text entry, however many parts the run had.

Every value is read back from the event files and checked against a computation of its own: the
learning rate against the schedule's formula, MaxVio against the logged per-expert loads."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from moe_lab.config import load_config
from moe_lab.report.tb_scalars import event_files, read_scalars
from moe_lab.training.lit import warmup_cosine
from moe_lab.training.run import run
from tests.helpers import write_tiny_experiment

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
STEPS = 4  # the tiny experiment validates every 2 steps: inside fit, after steps 2 and 4


def train(out: Path, cache: Path, *overrides: str, steps: int = STEPS):
    """One tiny deterministic run; the process-wide torch settings it changes are put back."""
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    try:
        experiment = write_tiny_experiment(out / "tiny.yaml", cache, steps=steps, deterministic=True)
        return run(load_config(experiment, [f"output_dir={out / 'runs'}", *overrides]), quiet=True)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def summaries(run_dir: Path) -> list[tuple[str, int, object]]:
    """(tag, step, value) of every summary value in the run's event files, in the order written."""
    return [
        (value.tag, int(event.step), value)
        for path in event_files(run_dir)
        for event in EventFileLoader(str(path)).Load()
        for value in event.summary.value
    ]


def scalar_tags(run_dir: Path) -> set[str]:
    return {tag for tag, _, value in summaries(run_dir) if value.metadata.plugin_data.plugin_name == "scalars"}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, data_cache):
    return train(tmp_path_factory.mktemp("default"), data_cache)


@pytest.fixture(scope="module")
def expert_run(tmp_path_factory, data_cache):
    return train(tmp_path_factory.mktemp("experts"), data_cache, "monitor.log_expert_scalars=true")


def test_no_epoch_one_learning_rate_curve_and_no_per_expert_scalars_by_default(default_run):
    tags = scalar_tags(default_run.run_dir)
    assert "epoch" not in tags  # Lightning's flat line: a run counts steps
    assert not [t for t in tags if t.startswith("lr-")]  # LearningRateMonitor's one curve per parameter group
    assert not [t for t in tags if re.fullmatch(r"moe/layer\d+/expert\d+", t)]
    assert {"moe/layer0/load_cv", "moe/load_cv_mean"} <= tags  # the summaries stay
    # The learning rate of each step, as the warmup + cosine formula gives it.
    o = load_config(default_run.run_dir / "config.yaml").optim
    expected = {s: o.lr * warmup_cosine(s, o.warmup_steps, STEPS, o.min_lr_ratio) for s in range(STEPS)}
    assert read_scalars(default_run.run_dir, "train/lr") == pytest.approx(expected, rel=1e-6)


def test_per_expert_scalars_when_asked_for_and_max_vio_from_them(default_run, expert_run):
    curves = {
        tuple(map(int, m.groups())): read_scalars(expert_run.run_dir, tag)
        for tag in scalar_tags(expert_run.run_dir)
        if (m := re.fullmatch(r"moe/layer(\d+)/expert(\d+)", tag))
    }
    assert (0, 0) in curves
    # MaxVio = max load / mean load - 1 of the last window, mean over the MoE layers, by hand.
    last = max(curves[0, 0])
    layers = sorted({layer for layer, _ in curves})
    loads = [np.array([curves[layer, j][last] for j in range(4)]) for layer in layers]
    by_hand = np.mean([load.max() / load.mean() - 1 for load in loads])
    metrics = json.loads((expert_run.run_dir / "metrics.json").read_text())
    assert metrics["final_max_vio"] == pytest.approx(by_hand, rel=1e-5) and metrics["final_max_vio"] > 0
    assert read_scalars(expert_run.run_dir, "final/max_vio") == {last: pytest.approx(by_hand, rel=1e-5)}
    # Only what is logged differs: the same training.
    lm_loss = read_scalars(expert_run.run_dir, "train/lm_loss")
    assert len(lm_loss) == STEPS and lm_loss == read_scalars(default_run.run_dir, "train/lm_loss")


def test_final_metrics_named_once_at_the_last_validation_step(default_run):
    run_dir = default_run.run_dir
    final = {t for t in scalar_tags(run_dir) if t.startswith("final/")}
    assert {"final/val_loss", "final/load_cv", "final/load_cv_max", "final/collapse_events_count"} <= final
    assert not [t for t in final if t.startswith("final/final_")]
    last_val = max(read_scalars(run_dir, "val/loss"))
    assert last_val == STEPS - 1  # Lightning plots it at the step of the training batch it follows
    assert {tag: sorted(read_scalars(run_dir, tag)) for tag in final} == {tag: [last_val] for tag in final}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert read_scalars(run_dir, "final/load_cv")[last_val] == pytest.approx(metrics["final_load_cv"], rel=1e-6)


def test_hparams_columns_lead_with_the_objective_then_the_balance_metrics(default_run):
    from tensorboard.plugins.hparams import metadata

    declared = [
        metadata.parse_experiment_plugin_data(value.metadata.plugin_data.content)
        for tag, _, value in summaries(default_run.run_dir)
        if tag == metadata.EXPERIMENT_TAG
    ]
    assert len(declared) == 1
    columns = [m.name.tag for m in declared[0].metric_infos]
    assert columns[:5] == [
        "final/val_loss",  # a single run's objective
        "final/load_cv",
        "final/load_cv_max",
        "final/max_vio",
        "final/collapse_events_count",
    ]
    assert {"final/val_bpb", "final/dropped_frac"} <= set(columns[5:])
    assert "final/tokens_per_s" not in columns  # the machine's figure, not the configuration's


def test_config_is_one_text_entry_across_a_resumed_run(tmp_path, data_cache):
    first = train(tmp_path, data_cache, steps=2)
    resumed = train(tmp_path, data_cache, "trainer.resume=auto", steps=4)
    assert resumed.run_dir == first.run_dir and resumed.metrics["resumed_from_step"] == 2
    texts = [(tag, step) for tag, step, value in summaries(resumed.run_dir) if tag.startswith("config/")]
    assert texts == [("config/text_summary", 0)]
