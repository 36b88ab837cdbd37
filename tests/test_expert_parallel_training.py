"""Training with trainer.expert_parallel = N equals single-process training on the same global batches.

The EP runs are the real entry point under Lightning's DDP on CPU (gloo): this module, run as
`python -m tests.test_expert_parallel_training OUT OVERRIDES...`, trains through moe_lab.training.run with a
callback recording each rank's losses and batches, and Lightning starts the other ranks the same way. The
reference is one process seeing every rank's samples of each step: either the global batch at once
(W x batch_size), or, where the loss is not a mean over samples (capacity per rank, expert choice, batch-scope
aux loss), the ranks' micro-batches one after the other with gradient accumulation, which is the computation
data parallelism defines. Checkpoints hold the single-device layout: the EP run's last.ckpt is compared
with the reference's as it is, and loads at other EP sizes.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moe_lab.config import ExperimentConfig, config_from_dict, load_config, to_dict, validate_experiment
from moe_lab.errors import ConfigError
from moe_lab.interop.checkpoint import load_lightning_checkpoint
from moe_lab.model import MoETransformer
from moe_lab.parallel import ExpertParallelExperts, gather_experts
from moe_lab.parallel.ep_training import ExpertParallelTraining, new_groups
from moe_lab.training.lit import MoELitModule
from moe_lab.training.run import run
from tests.helpers import randomise, tiny_config

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments/shakespeare_moe.yaml"
TOL = 1e-5
CLIP = 0.5
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


# A model of seconds. The aux loss is a mean over sequences, so a global batch's loss is the mean of its parts'
# (batch scope is not); one validation, at the end, where last.ckpt is written; a clip that acts; Adam's eps
# above the fp32 noise of near-zero gradients (at 1e-8 such a gradient, summed in another order, moves its
# weight by another fraction of lr: 8e-6 after 3 steps here, against 6e-7 at 1e-6).
TINY = f"""
name=ep model.d_model=32 model.n_layers=2 model.n_heads=2 model.d_ff=64 model.max_seq_len=32
model.moe.n_experts=4 model.moe.top_k=2 model.moe.expert_hidden=32 model.moe.aux_loss_scope=sequence
data.block_size=32 trainer.max_steps=3 trainer.val_every_n_steps=100 trainer.val_batches=1
trainer.progress_bar=false trainer.accelerator=cpu trainer.loggers=[] monitor.heatmap_every_n_steps=0
optim.lr=0.01 optim.eps=1e-6 optim.warmup_steps=1 optim.grad_clip={CLIP} monitor.sample_tokens=0
""".split()


def tiny(out: Path, cache: Path, *extra: str) -> list[str]:
    return [f"output_dir={out}", f"data.cache_dir={cache}", *TINY, *extra]


class Recorder(pl.Callback):
    """Per rank: every micro-batch's loss and samples, the gradient norm seen before each optimizer step
    (the whole model's only without EP: the shards' gradients are reduced after the callbacks run), and
    the weights at the start."""

    def __init__(self, out: Path):
        self.out = out
        self.record = {"losses": [], "samples": [], "grad_norms": []}
        self.initial: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module):
        self.initial = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # Lightning hands on the loss divided by the accumulation count: the micro-batch's own loss is x that.
        self.record["losses"].append(float(outputs["loss"]) * trainer.accumulate_grad_batches)
        self.record["samples"].append(batch[0].tolist())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.record["grad_norms"].append(float(torch.nn.utils.get_total_norm(grads)))

    def on_train_end(self, trainer, pl_module):
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"record_rank{trainer.global_rank}.json").write_text(json.dumps(self.record))


def train(overrides: list[str], out: Path) -> tuple[Path, Recorder]:
    recorder = Recorder(out)
    result = run(load_config(CONFIG, overrides), extra_callbacks=(recorder,), quiet=True)
    return result.run_dir, recorder


def train_ddp(overrides: list[str], out: Path, n_ranks: int) -> tuple[Path, list[dict]]:
    """The DDP run, launched as Lightning launches it on CPU: this module as `python -m`, every rank."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.test_expert_parallel_training", str(out), *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads((out / f"record_rank{r}.json").read_text()) for r in range(n_ranks)]
    # One run directory, rank 0's: the ranks Lightning starts train in it and claim none of their own.
    (run_dir,) = Path(overrides[0].removeprefix("output_dir=")).glob("ep/*")
    assert (run_dir / "metrics.json").exists()
    return run_dir, records


def per_step(values: list, micro_batches: int) -> list[list]:
    return [values[i : i + micro_batches] for i in range(0, len(values), micro_batches)]


def state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference relative to the reference's largest entry where that exceeds 1."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1.0))


def compare(case: dict, tmp_path: Path, data_cache: Path) -> dict:
    """Train `case` with EP on its ranks and once in one process; assert the same samples per step, and
    return the worst per-step loss and final-weight differences (with the reference's run for more checks)."""
    n_ranks, accumulate = case["ranks"], case.get("accumulate", 1)
    common = [f"trainer.max_steps={case.get('steps', 3)}", *case.get("overrides", [])]
    ep = tiny(
        tmp_path / "ep",
        data_cache,
        *common,
        f"data.batch_size={2}",
        f"trainer.devices={n_ranks}",
        "trainer.strategy=ddp",
        f"trainer.expert_parallel={case['ep']}",
        f"trainer.accumulate_grad_batches={accumulate}",
        "trainer.threads=1",
    )
    if case["reference"] == "global batch":  # one batch of all ranks' samples
        ref_batch, ref_accumulate = 2 * n_ranks, accumulate
    else:  # every rank's micro-batch in turn, accumulated
        ref_batch, ref_accumulate = 2, accumulate * n_ranks
    ref = tiny(
        tmp_path / "ref",
        data_cache,
        *common,
        f"data.batch_size={ref_batch}",
        "trainer.devices=1",
        f"trainer.accumulate_grad_batches={ref_accumulate}",
    )
    ep_dir, records = train_ddp(ep, tmp_path / "ep_records", n_ranks)
    ref_dir, recorder = train(ref, tmp_path / "ref_records")

    ref_samples = [sorted(sum(step, [])) for step in per_step(recorder.record["samples"], ref_accumulate)]
    ep_samples = [
        sorted(sum((sum(per_step(r["samples"], accumulate)[k], []) for r in records), []))
        for k in range(len(ref_samples))
    ]
    assert ref_samples == ep_samples, "the ranks together did not see the reference's samples"
    ref_losses = [sum(step) / len(step) for step in per_step(recorder.record["losses"], ref_accumulate)]
    ep_losses = [
        sum(sum(per_step(r["losses"], accumulate)[k]) for r in records) / (n_ranks * accumulate)
        for k in range(len(ref_losses))
    ]
    final_ep, final_ref = state(ep_dir), state(ref_dir)
    assert final_ep.keys() == final_ref.keys()
    return {
        "steps": len(ref_losses),
        "loss": max(abs(a - b) for a, b in zip(ep_losses, ref_losses, strict=True)),
        "loss_by_step": [abs(a - b) for a, b in zip(ep_losses, ref_losses, strict=True)],
        "weights": max(max_diff(final_ep[k], final_ref[k]) for k in final_ref),
        "moved": max(max_diff(final_ref[k], recorder.initial[k]) for k in final_ref),
        "clipped_steps": sum(norm > CLIP for norm in recorder.record["grad_norms"]),
        "ep_dir": ep_dir,
        "ref_dir": ref_dir,
    }


def assert_equal_training(result: dict, steps: int) -> None:
    assert result["steps"] == steps
    print({k: v for k, v in result.items() if not k.endswith("_dir") and k != "loss_by_step"})  # with -s
    assert result["clipped_steps"], "the gradient norm never exceeded optim.grad_clip: clipping went untested"
    assert result["moved"] > 1000 * TOL, "the weights barely moved: the comparison proves nothing"
    first = next((k + 1 for k, d in enumerate(result["loss_by_step"]) if d > TOL), None)
    assert result["loss"] <= TOL, f"per-step train loss differs by {result['loss']:.2e}, first at step {first}"
    assert result["weights"] <= TOL, f"final weights differ by {result['weights']:.2e}"


# ---------------------------------------------------------------- the default test: EP = 2 on 2 ranks


@pytest.fixture(scope="module")
def ep2_run(tmp_path_factory, data_cache):
    tmp = tmp_path_factory.mktemp("ep2")
    return compare({"ranks": 2, "ep": 2, "reference": "global batch"}, tmp, data_cache)


def test_ep2_on_two_cpu_ranks_trains_as_one_process_on_the_global_batch(ep2_run):
    assert_equal_training(ep2_run, steps=3)
    assert torch.load(ep2_run["ep_dir"] / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 3


def test_a_checkpoint_saved_at_ep2_loads_at_ep1_and_ep4(ep2_run, tmp_path):
    """The EP=2 run's last.ckpt, written from two ranks' shards, holds the full stacks: the export path
    reads it as it is (EP = 1), and 4 ranks shard weights and Adam state from it; same logits to 1e-6."""
    ckpt_path = ep2_run["ep_dir"] / "checkpoints/last.ckpt"
    model_cfg, weights = load_lightning_checkpoint(ckpt_path)
    full = MoETransformer(model_cfg).eval()
    full.load_state_dict(weights)
    idx = torch.randint(0, model_cfg.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    torch.save({"idx": idx, "logits": full(idx).logits.detach()}, tmp_path / "ep1.pt")
    reports = forked(load_at_ep4_worker, 4, tmp_path, str(ckpt_path), str(tmp_path / "ep1.pt"))
    for rank, report in enumerate(reports):
        assert report["n_local_experts"] == 1
        assert report["logits"] <= 1e-6, f"rank {rank}: logits differ by {report['logits']:.2e}"
        assert report["optimizer_state"] == 0.0, f"rank {rank}: Adam state is not its rows of the saved one"


def forked(worker, n_ranks: int, tmp_path: Path, *args) -> list[dict]:
    """worker(rank, n_ranks, *args) in n_ranks forked processes of one gloo group; each rank's JSON report.
    Forked, not spawned: a spawned process would import Lightning again, seconds per rank on 2 cores."""
    mp.start_processes(_init_and_run, (n_ranks, str(tmp_path), worker, args), nprocs=n_ranks, start_method="fork")
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(n_ranks)]


def _init_and_run(rank: int, n_ranks: int, tmp: str, worker, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=n_ranks)
    try:
        report = worker(rank, n_ranks, *args)
        Path(tmp, f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


def load_at_ep4_worker(rank: int, n_ranks: int, ckpt_path: str, reference_path: str) -> dict:
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    saved_state = ckpt["optimizer_states"][0]["state"]
    config = ckpt["hyper_parameters"]["config"]
    config["trainer"]["expert_parallel"] = n_ranks
    lit = MoELitModule(config)
    lit.configure_model()  # what Lightning calls: shards the experts over 4 ranks
    optimizer = lit.configure_optimizers()["optimizer"]
    saved = {"state": dict(saved_state), "param_groups": ckpt["optimizer_states"][0]["param_groups"]}
    lit.on_load_checkpoint(ckpt)
    lit.load_state_dict(ckpt["state_dict"])
    lit.expert_parallel.shard_optimizer_state(optimizer, saved)  # what on_fit_start does once Lightning made it
    optimizer.load_state_dict(saved)

    reference = torch.load(reference_path)
    logits = lit.model.eval()(reference["idx"]).logits.detach()
    worst_state = 0.0
    numbered = [p for group in optimizer.param_groups for p in group["params"]]  # a state dict's numbering
    for shard in lit.expert_parallel.shards.values():
        index = next(i for i, p in enumerate(numbered) if p is shard)
        for key in ("exp_avg", "exp_avg_sq"):
            mine, full = optimizer.state[shard][key], saved_state[index][key]
            worst_state = max(worst_state, float((mine - full[rank : rank + 1]).abs().max()))
    return {
        "n_local_experts": next(m for m in lit.modules() if isinstance(m, ExpertParallelExperts)).n_experts,
        "logits": float((logits - reference["logits"]).abs().max()),
        "optimizer_state": worst_state,
    }


# ---------------------------------------------------------------- gradients and the clipping norm, step by step


@pytest.mark.parametrize(("n_ranks", "ep_size"), [(2, 2), (4, 2), (4, 4)])
def test_shard_gradients_and_clipping_norm_are_the_global_batchs(tmp_path, n_ranks, ep_size):
    """After DDP's mean of the replicated gradients and `reduce_gradients`, every gradient and the clipping
    norm equal one process's on the global batch; clipped to a tenth of that norm, so the clip is active.
    (Adam's updates hardly change when a whole step's gradient is rescaled: the training tests alone would
    let a wrong norm pass.)"""
    for rank, report in enumerate(forked(clipping_worker, n_ranks, tmp_path, ep_size)):
        # The experts' share of the norm is small here: a norm without the other shards is off by ~4e-5.
        norm = report.pop("norm")
        assert norm <= 1e-6, f"rank {rank}: the clipping norm differs by {norm:.2e} (relative)"
        worst = max(report, key=report.get)
        assert report[worst] <= TOL, f"rank {rank}: {worst} differs by {report[worst]:.2e}"


def clipping_worker(rank: int, n_ranks: int, ep_size: int) -> dict[str, float]:
    torch.manual_seed(0)
    full = MoETransformer(tiny_config(placement="all", n_shared_experts=1))
    randomise(full, std=0.1)
    model = copy.deepcopy(full)
    ep = ExpertParallelTraining(model, new_groups(ep_size))
    g = torch.Generator().manual_seed(20)
    batches = [
        (torch.randint(0, 64, (2, 16), generator=g), torch.randint(0, 64, (2, 16), generator=g)) for _ in range(n_ranks)
    ]

    full(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])).lm_loss.backward()
    reference_norm = torch.nn.utils.clip_grad_norm_(full.parameters(), 1.0)  # measures only: grads are below 1e3
    torch.nn.utils.clip_grad_norm_(full.parameters(), 0.1 * reference_norm)

    model(*batches[rank]).lm_loss.backward()
    for name, param in model.named_parameters():
        if name not in ep.shards:  # what DDP does to the replicated parameters
            dist.all_reduce(param.grad)
            param.grad /= n_ranks
    ep.reduce_gradients()
    norm = ep.clip_grad_norm_(list(model.parameters()), 0.1 * reference_norm)

    reference = dict(full.named_parameters())
    report = {"norm": float((norm - reference_norm).abs() / reference_norm)}
    for name, param in model.named_parameters():
        grad = gather_experts(param.grad, ep.groups.ep) if name in ep.shards else param.grad
        report[name] = max_diff(grad, reference[name].grad)
    return report


# ---------------------------------------------------------------- config rules (no process started)


@pytest.mark.parametrize(
    ("trainer", "model", "message"),
    [
        ({"expert_parallel": 0}, {}, "must be >= 1"),
        ({"expert_parallel": 2, "devices": "2", "strategy": "fsdp"}, {}, "needs trainer.strategy auto or ddp"),
        ({"expert_parallel": 2, "devices": "auto"}, {}, "trainer.devices to be a count or a list"),
        ({"expert_parallel": 2, "devices": "2", "precision": "16-mixed"}, {}, "16-mixed"),
        ({"expert_parallel": 2, "devices": "2", "activation_checkpointing": True}, {}, "activation_checkpointing"),
        ({"expert_parallel": 2, "devices": "3"}, {}, "does not divide the world size 3"),
        ({"expert_parallel": 4, "devices": "4"}, {"n_experts": 6, "top_k": 2}, "does not divide the 6 routed experts"),
        ({"expert_parallel": 2, "devices": "2"}, {"placement": "none"}, "needs an MoE layer"),
    ],
)
def test_expert_parallel_config_rules_name_the_key(trainer, model, message):
    cfg = to_dict(ExperimentConfig())
    cfg["trainer"] |= trainer
    cfg["model"]["moe"] |= model
    with pytest.raises(ConfigError, match=message) as err:
        validate_experiment(config_from_dict(cfg))
    assert err.value.key == "trainer.expert_parallel"


def test_expert_parallel_2_of_4_devices_on_2_nodes_is_accepted():
    cfg = to_dict(ExperimentConfig())
    cfg["trainer"] |= {"expert_parallel": 4, "devices": "2", "num_nodes": 2, "strategy": "auto"}
    validate_experiment(config_from_dict(cfg))


# ---------------------------------------------------------------- slow variants

# Each for 20 optimizer steps, the horizon: equality must survive the updates compounding.
SLOW_STEPS = 20
SLOW_CASES = {
    "topk": {"ranks": 2, "ep": 2, "reference": "global batch"},
    "topk, capacity 1.0, batch-scope aux": {
        "ranks": 2,
        "ep": 2,
        "reference": "accumulated",
        "overrides": ["model.moe.capacity_factor=1.0", "model.moe.aux_loss_scope=batch"],
    },
    # Megatron's global scope: the load fractions are the global batch's, so the ranks' mean loss (and DDP's
    # mean gradient) is the one-process loss on the global batch, the reference a per-rank scope cannot meet
    "topk, global-scope aux": {
        "ranks": 2,
        "ep": 2,
        "reference": "global batch",
        "overrides": ["model.moe.aux_loss_scope=global", "model.moe.aux_loss_coef=0.5"],
    },
    "sigmoid_bias": {
        "ranks": 2,
        "ep": 2,
        "reference": "accumulated",
        "overrides": ["model.moe.router=sigmoid_bias", "model.moe.bias_update_speed=0.01"],
    },
    "expert_choice": {"ranks": 2, "ep": 2, "reference": "accumulated", "overrides": ["model.moe.router=expert_choice"]},
    "topk, gradient accumulation 2": {"ranks": 2, "ep": 2, "reference": "global batch", "accumulate": 2},
    "4 ranks, EP 2": {"ranks": 4, "ep": 2, "reference": "global batch"},
    # 10 steps: measured at 20, the runs agree within 1.2e-7 for 10 steps, then one discrete routing or drop
    # decision flips under float reassociation (4 ranks' gradient all-reduce against one process's
    # accumulation) and the trajectories part: loss 6.8e-5 apart at step 11, 4.5e-3 at step 19. Dropping at
    # capacity is discontinuous; no sum order makes it equal for ever.
    "4 ranks, EP 4, capacity 1.0": {
        "ranks": 4,
        "ep": 4,
        "reference": "accumulated",
        "overrides": ["model.moe.capacity_factor=1.0"],
        "steps": 10,
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES, ids=list(SLOW_CASES))
def test_expert_parallel_training_variants_match_one_process(case, tmp_path, data_cache):
    result = compare({"steps": SLOW_STEPS, **SLOW_CASES[case]}, tmp_path, data_cache)
    assert_equal_training(result, steps=SLOW_CASES[case].get("steps", SLOW_STEPS))


@pytest.mark.slow
def test_resuming_at_ep2_from_a_plain_ddp_checkpoint_continues_that_run(tmp_path, data_cache):
    """Weights and Adam state are sharded on load (Lightning's own resume): a plain DDP run's step-2
    checkpoint, resumed at EP 2 for 2 more steps, ends where the DDP run ends after 4."""
    ddp = ["data.batch_size=2", "trainer.devices=2", "trainer.strategy=ddp", "trainer.threads=1", "trainer.max_steps=4"]
    whole_dir, _ = train_ddp(
        tiny(tmp_path / "whole", data_cache, *ddp, "trainer.checkpoint_every_n_steps=2"), tmp_path / "r1", 2
    )
    step2 = whole_dir / "checkpoints/previous.ckpt"
    assert torch.load(step2, weights_only=False)["global_step"] == 2
    resumed = tiny(tmp_path / "resumed", data_cache, *ddp, "trainer.expert_parallel=2", f"trainer.resume={step2}")
    resumed_dir, _ = train_ddp(resumed, tmp_path / "r2", 2)
    a, b = state(whole_dir), state(resumed_dir)
    assert max(max_diff(b[k], a[k]) for k in a) <= TOL


if __name__ == "__main__":  # one rank of a DDP run (see train_ddp); Lightning starts the others alike
    torch.set_num_threads(1)
    assert not dist.is_initialized()
    run_dir, _ = train(sys.argv[2:], Path(sys.argv[1]))
