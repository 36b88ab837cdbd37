"""Routing metrics against hand-worked numbers; the callbacks driven by a real tiny Lightning Trainer
on synthetic RoutingStats, their TensorBoard output read back from the event file."""

from __future__ import annotations

import math

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from moe_lab.callbacks import ExpertCollapseDetector, ExpertLoadMonitor
from moe_lab.callbacks import routing_metrics as rm
from moe_lab.callbacks.collapse import DeadRouter, LowEntropy, StarvedExpert
from moe_lab.config import load_config
from moe_lab.errors import ConfigError
from moe_lab.model.moe import RoutingStats

pytestmark = pytest.mark.filterwarnings("ignore:expert collapse:UserWarning")  # asserted once, below

BALANCED = [25.0, 25.0, 25.0, 25.0]
STARVED_2 = [33.0, 33.0, 1.0, 33.0]  # expert 2 gets 1% of tokens, below 10% of uniform (2.5%)


# ---------------------------------------------------------------- routing metrics, by hand


def test_metrics_on_hand_worked_counts():
    c = [6, 2, 0, 0]  # mean 2, deviations 4, 0, -2, -2: population variance 24 / 4 = 6
    np.testing.assert_allclose(rm.load_fractions(c), [0.75, 0.25, 0.0, 0.0])
    assert rm.load_cv(c) == pytest.approx(math.sqrt(6) / 2)
    assert rm.max_over_uniform(c) == pytest.approx(3.0)
    assert rm.dead_experts(c) == 2
    assert rm.token_spread(c) == pytest.approx((0.0, 6.0, math.sqrt(6)))
    # Uniform load is 1/4; 10% of it is 0.025: only the two dead experts are below.
    assert rm.starved_experts(c, 0.1).tolist() == [False, False, True, True]
    assert rm.normalised_entropy(math.log(2), 4) == pytest.approx(0.5)  # two equal gates out of four
    assert math.isnan(rm.normalised_entropy(0.0, 1))


def test_metrics_reduce_over_experts_per_layer():
    c = [[6, 2, 0, 0], [5, 5, 5, 5]]  # [L, E]
    np.testing.assert_allclose(rm.load_cv(c), [math.sqrt(6) / 2, 0.0])
    np.testing.assert_allclose(rm.max_over_uniform(c), [3.0, 1.0])
    np.testing.assert_array_equal(rm.dead_experts(c), [2, 0])
    np.testing.assert_allclose(rm.load_fractions(c).sum(-1), [1.0, 1.0])


def stats(counts, entropy_norm: float = 0.9, dropped: float = 0.0) -> RoutingStats:
    n = len(counts)
    return RoutingStats(
        expert_counts=torch.tensor(counts, dtype=torch.float32),
        dropped_frac=torch.tensor(dropped),
        entropy=torch.tensor(entropy_norm * math.log(n)),
        mean_topk_weight=torch.tensor(0.5),
        aux_loss=torch.tensor(0.01),
        z_loss=torch.tensor(1e-3),
    )


def test_accumulator_sums_counts_and_averages_scalars():
    acc = rm.RoutingAccumulator()
    acc.add({1: stats([6, 2, 0, 0], entropy_norm=0.5, dropped=0.1)})
    acc.add({1: stats([0, 2, 4, 2], entropy_norm=0.7, dropped=0.3)})
    restored = rm.RoutingAccumulator()
    restored.load_state_dict(acc.state_dict())
    for a in (acc, restored):
        t = a.pop()[1]
        np.testing.assert_allclose(t.counts, [6, 4, 4, 2])
        assert (t.dropped_frac, t.entropy / math.log(4), t.n_micro) == pytest.approx((0.2, 0.6, 2))
        assert not a and a.pop() == {}


# ---------------------------------------------------------------- a real Trainer on synthetic routing


class SyntheticRouting(L.LightningModule):
    """training_step returns `schedule(step, micro)` as its routing: step is the 1-based optimizer step
    the batch contributes to, micro its index within gradient accumulation."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        step = self.trainer.global_step + 1
        micro = batch_idx % self.trainer.accumulate_grad_batches
        return {"loss": (self.w * batch).sum(), "routing": self.schedule(step, micro)}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(256, 1), batch_size=1)


def fit(schedule, callbacks, tmp_path, max_steps: int, ckpt_path=None, **trainer_kw) -> L.Trainer:
    trainer_kw = {"log_every_n_steps": 1, **trainer_kw}
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        callbacks=callbacks,
        logger=TensorBoardLogger(tmp_path, name="tb"),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **trainer_kw,
    )
    trainer.fit(SyntheticRouting(schedule), ckpt_path=ckpt_path)
    return trainer


def read_events(trainer) -> EventAccumulator:
    ea = EventAccumulator(
        trainer.logger.log_dir, size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0}
    )
    ea.Reload()
    return ea


def layer2_starved_on(starved_steps):
    """Layer 0 balanced; layer 2's expert 2 starved on the given optimizer steps."""
    return lambda step, micro: {0: stats(BALANCED), 2: stats(STARVED_2 if step in starved_steps else BALANCED)}


def test_collapse_fires_when_patience_is_exactly_reached(tmp_path):
    # Starved on steps 3-4, balanced on 5 (the streak restarts), starved from 6: 6..10 is 5 steps.
    starved = {3, 4} | set(range(6, 100))
    detector = ExpertCollapseDetector(min_load_fraction=0.1, patience_steps=5)
    with pytest.warns(UserWarning, match="expert 2 of layer 2 below 10% of uniform load for 5 steps"):
        trainer = fit(layer2_starved_on(starved), [detector], tmp_path, max_steps=16)
    assert trainer.global_step == 16  # action "warn" does not stop
    # Once, though it stays starved.
    assert detector.events == [StarvedExpert(step=10, layer=2, expert=2, load=pytest.approx(0.01))]
    assert detector.prune_reason is None
    ea = read_events(trainer)
    counts = {e.step + 1: e.value for e in ea.Scalars("moe/collapse_events")}  # TB step = global_step - 1
    assert counts == {s: float(s >= 10) for s in range(1, 17)}
    [text] = ea.Tensors("moe/collapse/text_summary")
    assert text.step == 9 and b"(step 10)" in text.tensor_proto.string_val[0]


def test_balanced_router_never_fires(tmp_path):
    rng = np.random.default_rng(0)

    def noisy(step, micro):
        return {0: stats((25 + rng.integers(-5, 6, 4)).tolist()), 1: stats(BALANCED)}

    detector = ExpertCollapseDetector(patience_steps=2, min_entropy_norm=0.5, action="stop")
    trainer = fit(noisy, [detector], tmp_path, max_steps=30)
    assert trainer.global_step == 30 and detector.events == [] and detector.prune_reason is None


def test_collapse_is_checked_per_optimizer_step_under_accumulation(tmp_path):
    def schedule(step, micro):
        if step < 4:  # expert 2 empty in one micro-batch, but the optimizer step as a whole is balanced
            return {0: stats([34, 33, 0, 33] if micro == 0 else [16, 17, 50, 17])}
        return {0: stats(STARVED_2)}

    detector = ExpertCollapseDetector(patience_steps=3, action="stop")
    trainer = fit(schedule, [detector], tmp_path, max_steps=20, accumulate_grad_batches=2)
    assert [(e.step, e.expert) for e in detector.events] == [(6, 2)]  # optimizer steps 4, 5, 6
    assert trainer.global_step == 6


def test_low_entropy_fires_and_stop_ends_training(tmp_path):
    def schedule(step, micro):  # layer 1's router turns one-hot from step 5; its load stays balanced
        return {0: stats(BALANCED), 1: stats(BALANCED, entropy_norm=0.05 if step >= 5 else 0.9)}

    detector = ExpertCollapseDetector(min_entropy_norm=0.2, patience_steps=4, action="stop")
    trainer = fit(schedule, [detector], tmp_path, max_steps=30)
    assert detector.events == [LowEntropy(step=8, layer=1, entropy_norm=pytest.approx(0.05))]
    assert trainer.global_step == 8 and trainer.should_stop and detector.prune_reason is None


def test_prune_sets_reason_and_stops(tmp_path):
    detector = ExpertCollapseDetector(patience_steps=5, action="prune", check_from_step=4)
    trainer = fit(layer2_starved_on(set(range(1, 100))), [detector], tmp_path, max_steps=30)
    assert trainer.global_step == 8  # steps 1-3 are not checked: 4..8
    assert detector.prune_reason == "expert 2 of layer 2 below 10% of uniform load for 5 steps (step 8)"


def test_collapse_events_are_kept_in_checkpoints_as_the_dicts_of_metrics_json():
    events = [
        StarvedExpert(step=10, layer=2, expert=3, load=0.01),
        LowEntropy(step=8, layer=1, entropy_norm=0.05),
        DeadRouter(step=16, layer=0, grad_norm=5e-10),
    ]
    detector = ExpertCollapseDetector()
    detector.events = list(events)
    state = detector.state_dict()
    as_before = [  # the dicts the detector kept before its events were records, keys in the same order
        {"step": 10, "layer": 2, "expert": 3, "kind": "starved_expert", "load": 0.01},
        {"step": 8, "layer": 1, "expert": None, "kind": "low_entropy", "entropy_norm": 0.05},
        {"step": 16, "layer": 0, "expert": None, "kind": "dead_router", "grad_norm": 5e-10},
    ]
    assert state["events"] == as_before
    assert [list(e) for e in state["events"]] == [list(e) for e in as_before]
    restored = ExpertCollapseDetector()
    restored.load_state_dict(state)
    assert restored.events == events


def test_resumed_callbacks_continue_streak_and_window(tmp_path):
    starved = layer2_starved_on(set(range(3, 100)))  # uninterrupted: steps 3..8 reach patience 6 at 8

    def callbacks():  # the monitor's first window, steps 1-7, straddles the interruption
        return ExpertCollapseDetector(patience_steps=6), ExpertLoadMonitor(log_every_n_steps=7, log_expert_scalars=True)

    whole, whole_monitor = callbacks()
    whole_trainer = fit(starved, [whole, whole_monitor], tmp_path / "whole", max_steps=12)

    first, first_monitor = callbacks()
    trainer = fit(starved, [first, first_monitor], tmp_path / "a", max_steps=5)  # 3 steps into the streak
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    assert first.events == []
    resumed, resumed_monitor = callbacks()
    resumed_trainer = fit(
        starved, [resumed, resumed_monitor], tmp_path / "b", max_steps=12, ckpt_path=tmp_path / "mid.ckpt"
    )
    assert [e.step for e in whole.events] == [e.step for e in resumed.events] == [8]
    assert resumed.events == whole.events

    def first_window(t):  # load of the starved expert over steps 1-7 (TB step 6)
        [value] = [e.value for e in read_events(t).Scalars("moe/layer2/expert2") if e.step == 6]
        return value

    assert first_window(resumed_trainer) == first_window(whole_trainer) == pytest.approx((2 * 25 + 5 * 1) / 700)
    assert resumed_monitor.summary() == whole_monitor.summary()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"min_load_fraction": -0.1}, "min_load_fraction"),
        ({"patience_steps": 0}, "patience_steps"),
        ({"min_entropy_norm": 1.5}, "min_entropy_norm"),
        ({"action": "explode"}, "action"),
        ({"check_from_step": -1}, "check_from_step"),
    ],
)
def test_detector_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ExpertCollapseDetector(**kwargs)


def accepted(check) -> bool:
    try:
        check()
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("value", [-0.1, 0.0, 0.5, 0.999, 1.0, 1.5])
@pytest.mark.parametrize("option", ["min_load_fraction", "min_entropy_norm"])
def test_collapse_bounds_agree_between_config_and_detector(option, value):
    """A collapse setting the experiment config accepts is one the detector accepts, and back."""
    in_config = accepted(lambda: load_config(None, [f"monitor.collapse_{option}={value}"]))
    in_detector = accepted(lambda: ExpertCollapseDetector(**{option: value}))
    assert in_config == in_detector


@pytest.mark.parametrize("action", ["warn", "stop", "prune", "explode", "WARN"])
def test_collapse_actions_agree_between_config_and_detector(action):
    in_config = accepted(lambda: load_config(None, [f"monitor.collapse_action={action}"]))
    in_detector = accepted(lambda: ExpertCollapseDetector(action=action))
    assert in_config == in_detector


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"log_every_n_steps": 0}, "log_every_n_steps"),
        ({"heatmap_every_n_steps": -1}, "heatmap_every_n_steps"),
        ({"max_experts_logged": 2.5}, "max_experts_logged"),
    ],
)
def test_monitor_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ExpertLoadMonitor(**kwargs)


# ---------------------------------------------------------------- load monitor


def fed_counts(step, micro, layer):
    """Counts that change with step, micro-batch and layer, so window sums differ from any one batch."""
    base = [10.0 + step, 20.0 + 3 * micro, 30.0, 40.0 - step]
    return base if layer == 0 else base[::-1]


def monitor_schedule(step, micro):
    return {layer: stats(fed_counts(step, micro, layer), entropy_norm=0.5, dropped=0.01 * step) for layer in (0, 2)}


def expected_window(steps, layer):
    counts = np.sum([fed_counts(s, m, layer) for s in steps for m in (0, 1)], axis=0)
    frac = counts / counts.sum()
    std = np.sqrt(np.mean((counts - counts.mean()) ** 2))  # population std, written out
    return {
        "frac": frac,
        "load_cv": std / counts.mean(),
        "max_over_uniform": counts.max() / counts.mean(),
        "dropped_frac": np.mean([0.01 * s for s in steps]),
        "tokens_min": counts.min() / len(steps),
        "tokens_max": counts.max() / len(steps),
        "tokens_std": std / len(steps),
    }


def test_load_monitor_writes_scalars_histograms_and_heatmap(tmp_path):
    monitor = ExpertLoadMonitor(log_every_n_steps=3, heatmap_every_n_steps=6, log_expert_scalars=True)
    # Trainer logging every 50 steps must not hide or delay the monitor's windows.
    trainer = fit(monitor_schedule, [monitor], tmp_path, max_steps=7, accumulate_grad_batches=2, log_every_n_steps=50)
    ea = read_events(trainer)
    windows = {2: [1, 2, 3], 5: [4, 5, 6], 6: [7]}  # TB step (global_step - 1) -> optimizer steps summed
    for layer in (0, 2):
        expected = {tb: expected_window(steps, layer) for tb, steps in windows.items()}
        for j in range(4):
            got = {e.step: e.value for e in ea.Scalars(f"moe/layer{layer}/expert{j}")}
            assert got == pytest.approx({tb: w["frac"][j] for tb, w in expected.items()})
        for key in ("load_cv", "max_over_uniform", "dropped_frac", "tokens_min", "tokens_max", "tokens_std"):
            got = {e.step: e.value for e in ea.Scalars(f"moe/layer{layer}/{key}")}
            assert got == pytest.approx({tb: w[key] for tb, w in expected.items()}, rel=1e-5), key
        assert [e.value for e in ea.Scalars(f"moe/layer{layer}/entropy_norm")] == pytest.approx([0.5] * 3)
        assert [e.value for e in ea.Scalars(f"moe/layer{layer}/dead_experts")] == [0.0] * 3
        hists = ea.Histograms(f"moe/layer{layer}/load")
        assert [h.step for h in hists] == [2, 5, 6]
        assert list(hists[0].histogram_value.bucket) == pytest.approx(expected[2]["frac"].tolist())
        assert list(hists[0].histogram_value.bucket_limit) == [0.5, 1.5, 2.5, 3.5]
    cv = {tb: [expected_window(s, layer)["load_cv"] for layer in (0, 2)] for tb, s in windows.items()}
    assert [e.value for e in ea.Scalars("moe/load_cv_max")] == pytest.approx([max(v) for v in cv.values()])
    assert [e.value for e in ea.Scalars("moe/load_cv_mean")] == pytest.approx([np.mean(v) for v in cv.values()])
    assert [e.value for e in ea.Scalars("moe/dropped_frac_mean")] == pytest.approx([0.02, 0.05, 0.07])
    assert [im.step for im in ea.Images("moe/load_heatmap")] == [5]  # the window holding step 6

    last = {layer: expected_window([7], layer) for layer in (0, 2)}
    summary = monitor.summary()
    assert summary["final_step"] == 7
    assert summary["final_load_cv"] == pytest.approx(np.mean([w["load_cv"] for w in last.values()]))
    mou = np.mean([w["max_over_uniform"] for w in last.values()])
    assert summary["final_max_over_uniform"] == pytest.approx(mou)
    assert summary["final_dropped_frac"] == pytest.approx(0.07)
    for layer in (0, 2):
        assert summary["final_load_fractions"][f"layer{layer}"] == pytest.approx(last[layer]["frac"].tolist())
    assert trainer.callback_metrics["moe/load_cv_mean"] == pytest.approx(np.mean(cv[5]))


def test_load_monitor_caps_per_expert_scalars(tmp_path):
    monitor = ExpertLoadMonitor(
        log_every_n_steps=2, heatmap_every_n_steps=0, max_experts_logged=3, log_expert_scalars=True
    )
    trainer = fit(monitor_schedule, [monitor], tmp_path, max_steps=4)
    tags = read_events(trainer).Tags()
    assert "moe/layer0/load_cv" in tags["scalars"] and "moe/layer0/load" in tags["histograms"]
    assert not [t for t in tags["scalars"] if "/expert" in t]  # 4 experts > cap of 3
    assert tags["images"] == []  # heatmap disabled


def test_load_monitor_without_a_logger_still_summarises(tmp_path):
    monitor = ExpertLoadMonitor(log_every_n_steps=2)
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=False,
        callbacks=[monitor],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(SyntheticRouting(lambda step, micro: {0: stats([6, 2, 0, 0])}))
    assert monitor.summary()["final_max_over_uniform"] == pytest.approx(3.0)
    assert monitor.summary()["final_dead_experts"] == 2


# ---------------------------------------------------------------- dead router (no LM-loss gradient)


class SyntheticRouterGrad(SyntheticRouting):
    """Also returns `router_lm_grad` (layer -> norm) on the steps where grad_schedule gives one."""

    def __init__(self, schedule, grad_schedule):
        super().__init__(schedule)
        self.grad_schedule = grad_schedule

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        grads = self.grad_schedule(self.trainer.global_step + 1, batch_idx % self.trainer.accumulate_grad_batches)
        return out | ({"router_lm_grad": grads} if grads else {})


def fit_grads(grad_schedule, detector, tmp_path, max_steps, **trainer_kw):
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        callbacks=[detector],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **trainer_kw,
    )
    trainer.fit(SyntheticRouterGrad(lambda s, m: {0: stats(BALANCED), 1: stats(BALANCED)}, grad_schedule))
    return trainer


def test_dead_router_fires_after_patience_of_measured_steps(tmp_path):
    # Measured on steps 1, 4, 7, ...; layer 1 reads 0 from step 4 (a blip of life at 7 restarts the
    # streak), so its streak is 10, 13, 16: 16 - 10 + 1 = 7 steps = patience. Layer 0 stays healthy.
    def grads(step, micro):
        if step % 3 != 1:
            return None
        return {0: 2e-3, 1: 1e-3 if step in (1, 7) else 5e-10}

    detector = ExpertCollapseDetector(patience_steps=7, dead_router_max_grad_norm=1e-8, action="stop")
    with pytest.warns(UserWarning, match="router of layer 1 gets no gradient from the LM loss"):
        trainer = fit_grads(grads, detector, tmp_path, max_steps=40)
    assert detector.events == [DeadRouter(step=16, layer=1, grad_norm=5e-10)]
    assert trainer.global_step == 16


def test_dead_router_measurement_in_first_micro_batch_counts_for_its_step(tmp_path):
    grads = lambda step, micro: {0: 0.0} if micro == 0 else None  # noqa: E731 - measured once per step
    detector = ExpertCollapseDetector(patience_steps=3, dead_router_max_grad_norm=1e-8, action="stop")
    trainer = fit_grads(grads, detector, tmp_path, max_steps=20, accumulate_grad_batches=2)
    assert [(e.step, e.kind) for e in detector.events] == [(3, "dead_router")]
    assert trainer.global_step == 3


def test_dead_router_check_is_off_without_a_threshold(tmp_path):
    detector = ExpertCollapseDetector(patience_steps=1)
    fit_grads(lambda step, micro: {0: 0.0}, detector, tmp_path, max_steps=5)
    assert detector.events == []


def test_heatmap_colour_scale_is_the_same_for_every_run():
    """One heatmap scale per sweep: the image of a balanced run and of a collapsed one share their colour
    scale (1/8 .. 8 x uniform, log), and a starved expert's 0 is drawn at the low end, not off the scale."""
    import matplotlib.pyplot as plt
    import numpy as np

    from moe_lab.callbacks.heatmap import expert_load_heatmap

    balanced = expert_load_heatmap(np.full((2, 4), 0.25), [0, 1])
    collapsed = expert_load_heatmap(np.array([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]]), [0, 1])
    (a,), (b,) = balanced.axes[0].images, collapsed.axes[0].images
    assert (a.norm.vmin, a.norm.vmax) == (b.norm.vmin, b.norm.vmax) == (1 / 8, 8)
    assert b.get_array()[0].tolist() == [4.0, 1 / 8, 1 / 8, 1 / 8]  # 1.0 of 4 experts: 4 x uniform
    assert a.norm(a.get_array()[0, 0]) == 0.5  # uniform load sits mid-scale (white)
    plt.close("all")
