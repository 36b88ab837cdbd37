"""End to end: the real training entry point on tiny settings (outputs, resume, determinism, DDP)."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from moe_lab.artifacts.metrics import TOKENS_PER_S
from moe_lab.callbacks.progress import ProgressBar
from moe_lab.callbacks.throughput import Throughput
from moe_lab.config import config_from_dict, load_config
from moe_lab.interop.checkpoint import load_lightning_checkpoint
from moe_lab.model import MoETransformer, RoutingStats
from moe_lab.report.tb_scalars import read_scalars
from moe_lab.training.lit import reduce_routing
from moe_lab.training.results import finish_checkpoints
from moe_lab.training.run import build_callbacks, build_trainer, run

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def tiny(out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        f"output_dir={out}",
        f"data.cache_dir={cache}",
        "name=tiny",
        "model.d_model=32",
        "model.n_layers=2",
        "model.n_heads=2",
        "model.d_ff=64",
        "model.max_seq_len=32",
        "model.moe.n_experts=4",
        "model.moe.top_k=2",
        "model.moe.expert_hidden=32",
        "data.block_size=32",
        "data.batch_size=4",
        "trainer.max_steps=12",
        "trainer.val_every_n_steps=6",
        "trainer.val_batches=2",
        "trainer.log_every_n_steps=1",
        "trainer.progress_bar=false",
        "optim.warmup_steps=2",
        "monitor.log_every_n_steps=2",
        "monitor.heatmap_every_n_steps=6",
        "monitor.sample_tokens=8",
        *extra,
    ]


def scalars(run_dir: Path, tag: str) -> dict[int, float]:
    values: dict[int, float] = {}
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values.update({e.step: e.value for e in acc.Scalars(tag)})
    return values


def test_short_run_writes_every_output(tmp_path, data_cache):
    cfg = load_config(
        REPO / "experiments/shakespeare_moe.yaml", tiny(tmp_path, data_cache, "monitor.log_expert_scalars=true")
    )
    result = run(cfg, quiet=True)
    d = result.run_dir
    assert d == tmp_path / "tiny" / "version_0"
    for name in (
        "config.yaml",
        "env.json",
        "metrics.json",
        "model_summary.txt",
        "hparams.yaml",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "tokenizer/tokenizer_info.json",
    ):
        assert (d / name).is_file(), name
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 12
    # Each tensor once: the model's own state dict, under `model.` (no second copy under another name).
    ckpt = torch.load(d / "checkpoints/last.ckpt", weights_only=True)
    model = MoETransformer(config_from_dict(ckpt["hyper_parameters"]["config"]).model)
    assert {k for k in ckpt["state_dict"] if not k.startswith("val_loss.")} == {
        "model." + k for k in model.state_dict()
    }
    assert metrics["val_loss"] == pytest.approx(scalars(d, "val/loss")[11], rel=1e-6)
    # bits per byte from the loss: byte tokenizer -> loss / ln 2
    assert metrics["val_bpb"] == pytest.approx(metrics["val_loss"] / 0.6931471805599453, rel=1e-6)
    assert metrics["active_params"] < metrics["total_params"]  # 2 of 4 experts per token
    env = json.loads((d / "env.json").read_text())
    assert env["packages"]["torch"] and env["data"]["data_hash"] and "commit" in env["git"]
    assert "vocab_size: 256" in (d / "config.yaml").read_text()  # resolved from the tokenizer
    # TensorBoard: per-expert scalars, layer summaries, histograms, heatmap, text sample and hparams.
    tags = set()
    for events in d.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        for names in acc.Tags().values():
            if isinstance(names, list):
                tags |= set(names)
        tags |= set(acc.summary_metadata)  # hparams and text summaries live here
    for tag in (
        "train/lm_loss",
        "train/aux_loss",
        "train/z_loss",
        "val/loss",
        "val/bpb",
        "val/ppl",
        "moe/layer0/expert3",
        "moe/layer1/load_cv",
        "moe/load_cv_mean",
        "moe/layer0/load",
        "moe/load_heatmap",
        "_hparams_/session_start_info",
        "final/val_loss",
    ):
        assert tag in tags, tag
    assert any(t.startswith("samples") for t in tags)


def test_top1_router_health_is_logged_and_alive(tmp_path, data_cache):
    """Switch top-1 with the default (auto) gate: the LM-loss gradient on each router is measured every
    3 steps, logged per layer, and is far from the dead-router threshold, so no collapse event fires."""
    cfg = load_config(
        REPO / "experiments/shakespeare_moe.yaml",
        tiny(
            tmp_path,
            data_cache,
            "model.moe.top_k=1",
            "monitor.router_grad_every_n_steps=3",
            "monitor.collapse_patience_steps=1",
            "monitor.sample_tokens=0",
        ),
    )
    result = run(cfg, quiet=True)
    for layer in (0, 1):
        norms = scalars(result.run_dir, f"moe/layer{layer}/router_lm_grad_norm")
        assert sorted(norms) == [0, 3, 6, 9]
        assert min(norms.values()) > 1e3 * cfg.monitor.dead_router_max_grad_norm
    assert not [e for e in result.metrics["collapse_events"] if e["kind"] == "dead_router"]


def test_same_seed_twice_gives_identical_losses(tmp_path, data_cache):
    losses = []
    for i in range(2):
        cfg = load_config(
            REPO / "experiments/shakespeare_moe.yaml",
            tiny(tmp_path / str(i), data_cache, "trainer.max_steps=6", "trainer.deterministic=true"),
        )
        losses.append(scalars(run(cfg, quiet=True).run_dir, "train/lm_loss"))
    assert len(losses[0]) == 6 and losses[0] == losses[1]


DIE_AT_STEP = textwrap.dedent("""
    import os, sys
    import lightning.pytorch as pl
    from moe_lab.config import load_config
    from moe_lab.training.run import run

    class Die(pl.Callback):  # a hard kill: no cleanup, no final checkpoint
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 10:
                os._exit(9)

    run(load_config(sys.argv[1], sys.argv[2:]), extra_callbacks=(Die(),), quiet=True)
""")


def test_resume_after_a_kill_continues_at_the_right_step_with_identical_losses(tmp_path, data_cache):
    config = str(REPO / "experiments/shakespeare_moe.yaml")
    base = tiny(tmp_path / "a", data_cache, "trainer.checkpoint_every_n_steps=4", "trainer.deterministic=true")
    reference = scalars(run(load_config(config, base), quiet=True).run_dir, "train/lm_loss")

    killed = tiny(tmp_path / "b", data_cache, "trainer.checkpoint_every_n_steps=4", "trainer.deterministic=true")
    proc = subprocess.run([sys.executable, "-c", DIE_AT_STEP, config, *killed], cwd=REPO, timeout=300)
    assert proc.returncode == 9
    run_dir = tmp_path / "b" / "tiny" / "version_0"
    assert torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 8

    resumed = run(load_config(config, killed + ["trainer.resume=auto"]), quiet=True)
    assert resumed.run_dir == run_dir  # same run directory, TensorBoard curves continue
    assert resumed.metrics["steps"] == 12
    losses = scalars(run_dir, "train/lm_loss")
    assert sorted(losses) == list(range(12))
    assert losses == reference  # steps 9..12 replayed on the same data with the same LR schedule
    lr = scalars(run_dir, "train/lr")
    assert lr == scalars(tmp_path / "a" / "tiny" / "version_0", "train/lr")


def test_nan_loss_fails_the_run_with_its_reason(tmp_path, data_cache):
    cfg = load_config(
        REPO / "experiments/shakespeare_moe.yaml",
        tiny(tmp_path, data_cache, "optim.lr=1e30", "optim.grad_clip=0", "trainer.max_steps=6"),
    )
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        run(cfg, quiet=True)
    metrics = json.loads((tmp_path / "tiny" / "version_0" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "non-finite" in metrics["error"]


def test_data_error_exits_2_and_writes_nothing(tmp_path, data_cache):
    out = tmp_path / "runs"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "moe_lab.train",
            str(REPO / "experiments/shakespeare_moe.yaml"),
            *tiny(out, data_cache),
            "data.source=files",
            f"data.train_files=[{tmp_path}/none.txt]",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error:") and "none.txt" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_ddp_two_cpu_processes_log_the_single_process_expert_loads(tmp_path, data_cache):
    """2 gloo ranks x batch 2 see the same global batches as 1 process x batch 4 (the sampler shards
    each global batch), and the logged loads are all-reduced: the first window must match exactly."""
    config = str(REPO / "experiments/shakespeare_moe.yaml")
    common = [
        "trainer.max_steps=4",
        "monitor.log_every_n_steps=1",
        "trainer.val_every_n_steps=4",
        "model.moe.aux_loss_coef=0",
        "trainer.accelerator=cpu",
        "monitor.log_expert_scalars=true",
    ]
    single = tiny(tmp_path / "single", data_cache, *common, "data.batch_size=4", "trainer.devices=1")
    ddp = tiny(tmp_path / "ddp", data_cache, *common, "data.batch_size=2", "trainer.devices=2", "trainer.strategy=ddp")
    for args in (single, ddp):
        proc = subprocess.run(
            [sys.executable, "-m", "moe_lab.train", config, *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    tag = "moe/layer0/expert{}"
    for expert in range(4):
        a = scalars(tmp_path / "single" / "tiny" / "version_0", tag.format(expert))
        b = scalars(tmp_path / "ddp" / "tiny" / "version_0", tag.format(expert))
        assert a[0] == pytest.approx(b[0], abs=1e-6)  # step 1: same weights, same global batch
        for step in a:  # later steps: DDP averages gradients, equal up to float rounding
            assert a[step] == pytest.approx(b[step], abs=0.02)


class _KeepBarMetrics(pl.Callback):
    """What the progress bar would show at the end of training (it reads trainer.progress_bar_metrics)."""

    def on_train_end(self, trainer, pl_module):
        self.metrics = {k: float(v) for k, v in trainer.progress_bar_metrics.items()}
        self.bar = ProgressBar().get_metrics(trainer, pl_module)


def test_one_tokens_per_s_in_the_bar_metrics_json_and_tensorboard(tmp_path, data_cache):
    cfg = load_config(REPO / "experiments/shakespeare_moe.yaml", tiny(tmp_path, data_cache))
    keep = _KeepBarMetrics()
    result = run(cfg, extra_callbacks=(keep,), quiet=True)
    metrics = result.metrics
    assert json.loads((result.run_dir / "metrics.json").read_text())["tokens_per_s"] == metrics["tokens_per_s"]
    logged = read_scalars(result.run_dir, TOKENS_PER_S)
    assert sorted(logged) == list(range(12))  # every step (log_every_n_steps=1)
    assert logged[11] == pytest.approx(metrics["tokens_per_s"], rel=1e-6)
    assert keep.metrics[TOKENS_PER_S] == pytest.approx(metrics["tokens_per_s"], rel=1e-6)
    assert keep.bar["tok/s"] == f"{metrics['tokens_per_s']:.0f}" and "v_num" not in keep.bar
    # Another way: the run's tokens over its wall time. Training time excludes the two validations and
    # the set-up, so the rate is higher, but not by more than the whole run's time is longer.
    tokens = 12 * 4 * 32
    assert metrics["train_tokens"] == tokens
    assert tokens / metrics["wall_time_s"] < metrics["tokens_per_s"]
    # The first logged value is one step's rate; the last is the run's, not the last step's alone.
    assert logged[0] != logged[11]


def test_throughput_is_the_last_callback_after_checkpoints_extras_and_bar(tmp_path):
    """Its step interval must end after every other callback's hook, checkpoint saving included."""
    cfg = load_config(REPO / "experiments/shakespeare_moe.yaml", tiny(tmp_path, tmp_path, "trainer.progress_bar=true"))
    callbacks = build_callbacks(cfg, tmp_path / "run")
    extra = _KeepBarMetrics()
    trainer = build_trainer(cfg, False, [*callbacks.as_list(), extra], tmp_path / "run", quiet=False)
    assert trainer.callbacks[-1] is callbacks.throughput
    # The stop-signal checkpoint after last.ckpt's: it saves what a periodic last.ckpt of its step holds.
    stops = [callbacks.best_checkpoint, callbacks.last_checkpoint, callbacks.stop_on_signal]
    assert trainer.callbacks[-4:-1] == stops
    assert extra in trainer.callbacks and any(isinstance(c, ProgressBar) for c in trainer.callbacks)
    assert sum(isinstance(c, Throughput) for c in trainer.callbacks) == 1


def test_routing_reduce_sums_counts_and_averages_each_scalar_by_name():
    """A stub strategy whose sum doubles and whose mean halves: each output field must be its own input
    transformed, so swapping two fields (or misplacing a new one) fails."""

    def reduce(tensor, reduce_op):
        return tensor * 2 if reduce_op == "sum" else tensor / 2

    def layer(base: float) -> RoutingStats:  # every field a different value
        return RoutingStats(
            expert_counts=torch.tensor([base, base + 1.0]),
            dropped_frac=torch.tensor(base + 0.1),
            entropy=torch.tensor(base + 0.2),
            mean_topk_weight=torch.tensor(base + 0.3),
            aux_loss=torch.tensor(base + 0.4),
            z_loss=torch.tensor(base + 0.5),
        )

    reduced = reduce_routing({3: layer(30.0), 1: layer(10.0)}, reduce)
    assert sorted(reduced) == [1, 3]
    for i, stats in reduced.items():
        base = 10.0 * i
        torch.testing.assert_close(stats.expert_counts, torch.tensor([2 * base, 2 * base + 2.0]))
        expected = {
            "dropped_frac": base + 0.1,
            "entropy": base + 0.2,
            "mean_topk_weight": base + 0.3,
            "aux_loss": base + 0.4,
            "z_loss": base + 0.5,
        }
        assert set(RoutingStats.scalar_fields()) == set(expected)  # a new field needs its expectation here
        for name, value in expected.items():
            assert float(getattr(stats, name)) == pytest.approx(value / 2), name


def test_finished_runs_keep_what_keep_checkpoints_says(tmp_path, data_cache):
    cfg = load_config(REPO / "experiments/shakespeare_moe.yaml", tiny(tmp_path / "runs", data_cache))
    full = run(cfg, quiet=True).run_dir / "checkpoints"
    best = torch.load(full / "best.ckpt", weights_only=True)
    # Bytes of the weights, each storage once (a tensor may be held under two names).
    n_weights = sum(
        {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in best["state_dict"].values()}.values()
    )

    def copy() -> Path:
        target = tmp_path / f"copy{len(list(tmp_path.glob('copy*')))}"
        shutil.copytree(full, target)
        return target

    for status in ("failed", "stopped"):  # may be resumed: untouched
        kept = copy()
        finish_checkpoints(kept, "best_weights", status)
        assert sorted(p.name for p in kept.iterdir()) == ["best.ckpt", "last.ckpt", "previous.ckpt"]
    lean = copy()
    finish_checkpoints(lean, "best_weights", "completed")
    assert sorted(p.name for p in lean.iterdir()) == ["best.ckpt"]
    slim = torch.load(lean / "best.ckpt", weights_only=True)
    assert "optimizer_states" in best and "optimizer_states" not in slim
    assert slim["state_dict"].keys() == best["state_dict"].keys()
    assert all(torch.equal(slim["state_dict"][k], best["state_dict"][k]) for k in best["state_dict"])
    # AdamW's two moments were twice the weights; what is left is the weights plus a little metadata.
    assert (lean / "best.ckpt").stat().st_size < 1.1 * n_weights < 0.4 * (full / "best.ckpt").stat().st_size
    model_cfg, state = load_lightning_checkpoint(lean / "best.ckpt")
    assert model_cfg.moe.n_experts == 4 and state.keys() == {
        k[len("model.") :] for k in best["state_dict"] if k.startswith("model.")
    }
    gone = copy()
    finish_checkpoints(gone, "none", "pruned")
    assert not gone.exists()
    assert load_config(REPO / "experiments/shakespeare_moe.yaml", []).trainer.keep_checkpoints == "all"
