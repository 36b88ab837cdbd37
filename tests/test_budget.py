"""The training budget is derived once (moe_lab.config.budget): what a run's progress file counts per
step, the sweep's plan and its ETA, and the reports' tokens per step agree, gradient accumulation
included; checked against the arithmetic written out here."""

import pytest

from moe_lab.config import load_config
from moe_lab.config.budget import tokens_per_step, training_flops, training_flops_per_step
from moe_lab.model.accounting import count_model
from moe_lab.report.ablation_data import recorded_tokens_per_step
from moe_lab.sweep import estimate
from moe_lab.sweep.command import plan_flops
from moe_lab.sweep.config import load_sweep
from moe_lab.training.run import build_callbacks
from tests.helpers import write_tiny_experiment

ACCUMULATE = 3
STEPS = 5


@pytest.fixture
def accumulating(tmp_path, data_cache):
    write_tiny_experiment(tmp_path / "tiny.yaml", data_cache, steps=STEPS)
    sweep_path = tmp_path / "sweep.yaml"
    sweep_path.write_text(
        f"base: tiny.yaml\noutput_dir: {tmp_path / 'out'}\nseeds: [0, 1]\n"
        f"overrides: [trainer.accumulate_grad_batches={ACCUMULATE}]\n"
        "sampler: grid\nspace:\n  model.moe.top_k: [1, 2]\n"
    )
    overrides = [f"trainer.accumulate_grad_batches={ACCUMULATE}"]
    return load_config(tmp_path / "tiny.yaml", overrides), load_sweep(sweep_path)


def hand_flops_per_step(cfg) -> float:
    """3 forwards per token (forward + backward) x the micro-batches of one optimizer step."""
    forward = count_model(cfg.model, cfg.data.block_size).total_flops_per_token
    return 3 * forward * cfg.data.batch_size * cfg.data.block_size * ACCUMULATE


def test_an_optimizer_step_counts_every_micro_batch(accumulating):
    cfg, _ = accumulating
    assert tokens_per_step(cfg) == 4 * 32 * ACCUMULATE  # batch 4 x block 32 (tests/helpers.py)
    assert training_flops_per_step(cfg) == pytest.approx(hand_flops_per_step(cfg))
    assert training_flops(cfg) == pytest.approx(STEPS * hand_flops_per_step(cfg))
    # The reports read the same four settings back from a run's config.yaml.
    assert recorded_tokens_per_step(4, 32, ACCUMULATE) == tokens_per_step(cfg)
    assert recorded_tokens_per_step(4, 32, None) == 4 * 32


def test_the_sweep_plans_what_its_runs_count(accumulating, tmp_path):
    """The console's ETA divides the FLOPs the runs' progress files report (steps x flops_per_step) into
    the plan: both must count the accumulated micro-batches, or the ETA is off by the factor."""
    cfg, sweep = accumulating
    progress = build_callbacks(cfg, tmp_path / "run").progress
    assert progress.flops_per_step == pytest.approx(hand_flops_per_step(cfg))
    planned = 0.0
    for top_k in (1, 2):
        arm, _ = sweep.experiment({"model.moe.top_k": top_k})
        assert arm.trainer.accumulate_grad_batches == ACCUMULATE
        planned += 2 * STEPS * hand_flops_per_step(arm)  # two seeds
    assert plan_flops(sweep) == pytest.approx(planned)


def test_the_time_estimate_counts_every_micro_batch(accumulating):
    cfg, _ = accumulating
    times = estimate.StepTimes(train_s=0.5, eval_s=0.0, threads=1)
    once = estimate.run_seconds(cfg, times) - estimate.RUN_OVERHEAD_S
    assert once == pytest.approx(STEPS * ACCUMULATE * 0.5)
