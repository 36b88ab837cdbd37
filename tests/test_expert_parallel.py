"""Expert parallelism equals the single-device layer: gloo process groups on CPU, one process per rank.

Each worker builds the same full layer (same seed), shards its experts over its EP group and compares
against the unsharded layer run in the same process, so a failure names the rank and the tensor.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moe_lab.model.moe import MoELayer
from moe_lab.model.transformer import MoETransformer
from moe_lab.parallel import ExpertParallelExperts, gather_experts, parallelize_experts
from tests.helpers import randomise, tiny_config

TOL = 1e-5
AUX_COEF, Z_COEF = 0.3, 0.2


def spawn(worker, n_ranks: int, tmp_path, *args) -> list[dict]:
    """Run worker(rank, n_ranks, tmp_path, *args) in n_ranks processes; returns each rank's JSON report."""
    mp.spawn(_init_and_run, args=(n_ranks, str(tmp_path), worker, args), nprocs=n_ranks, join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(n_ranks)]


def _init_and_run(rank, n_ranks, tmp, worker, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=n_ranks)
    try:
        report = worker(rank, n_ranks, *args)
        with open(f"{tmp}/rank{rank}.json", "w") as f:
            json.dump(report, f)
    finally:
        dist.destroy_process_group()


def tokens(seed: int, d_model: int, batch: int = 2, seq: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of token states and the fixed output weights the test loss contracts it with."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, seq, d_model, generator=g), torch.randn(batch, seq, d_model, generator=g)


def loss_of(out, c: torch.Tensor, router_loss_share: float = 1.0) -> torch.Tensor:
    return (out.y * c).sum() + router_loss_share * (AUX_COEF * out.aux_loss + Z_COEF * out.z_loss)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference, relative to the reference's largest entry when that exceeds 1: float32 sums of
    tens of terms (expert gradients over 32 tokens) differ by a few ulps of their own size."""
    return float((a - b).detach().abs().max() / b.detach().abs().max().clamp_min(1.0))


def replicated_params(layer: MoELayer) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in layer.named_parameters() if not n.startswith("experts.")}


# ---------------------------------------------------------------- (a) one step, EP = world = 2

CASES_A = {
    "topk": dict(router="topk"),
    "topk, capacity 1.0": dict(router="topk", capacity_factor=1.0),
    "sigmoid_bias": dict(router="sigmoid_bias"),
    "expert_choice": dict(router="expert_choice"),
    # Collapsed routing: every token picks experts 0 and 1, so rank 1's experts receive nothing.
    "sigmoid_bias, rank 1 starved": dict(router="sigmoid_bias", selection_bias=[9.0, 9.0, -9.0, -9.0]),
}


def one_step_worker(rank: int, n_ranks: int) -> dict:
    report = {}
    for case, options in CASES_A.items():
        options = dict(options)
        selection_bias = options.pop("selection_bias", None)
        cfg = tiny_config(n_shared_experts=1, **options)
        full = MoELayer(cfg)
        randomise(full)
        if selection_bias is not None:
            full.router.selection_bias.copy_(torch.tensor(selection_bias))
        ep = parallelize_experts(copy.deepcopy(full), dist.group.WORLD)
        assert isinstance(ep.experts, ExpertParallelExperts) and ep.experts.n_experts == 4 // n_ranks

        # Reference: the full layer on each rank's tokens in turn, expert gradients summed over ranks.
        for r in range(n_ranks):
            for param in replicated_params(full).values():
                param.grad = None  # the replicated parameters' reference: this rank's tokens alone
            x, c = tokens(10 + r, cfg.d_model)
            x.requires_grad_()
            out = full(x)
            loss_of(out, c).backward()
            if r == rank:
                ref_y, ref_gx, ref_stats = out.y.detach(), x.grad, out.stats
                ref_grads = {n: p.grad.clone() for n, p in replicated_params(full).items()}

        x, c = tokens(10 + rank, cfg.d_model)
        x.requires_grad_()
        out = ep(x)
        loss_of(out, c).backward()
        diffs = {"y": max_diff(out.y, ref_y), "x.grad": max_diff(x.grad, ref_gx)}
        diffs |= {n: max_diff(p.grad, ref_grads[n]) for n, p in replicated_params(ep).items()}
        for name in ("w_in", "w_out"):
            full_grad = gather_experts(getattr(ep.experts, name).grad, dist.group.WORLD)
            diffs[f"experts.{name}.grad"] = max_diff(full_grad, getattr(full.experts, name).grad)
        assert torch.equal(out.stats.expert_counts, ref_stats.expert_counts)
        assert out.stats.dropped_frac == ref_stats.dropped_frac
        report[case] = {"diffs": diffs, "dropped_frac": float(out.stats.dropped_frac)}
    report["transformer"] = {"diffs": transformer_diffs(rank), "dropped_frac": 0.0}
    with pytest.raises(ValueError, match="3 experts do not split over 2 ranks"):
        parallelize_experts(MoELayer(tiny_config(n_experts=3)), dist.group.WORLD)
    return report


def transformer_diffs(rank: int) -> dict[str, float]:
    """A whole transformer, every MoE layer sharded: same loss and same gradient of the embedding."""
    torch.manual_seed(0)
    full = MoETransformer(tiny_config(placement="all"))
    ep = parallelize_experts(copy.deepcopy(full), dist.group.WORLD)
    assert sum(isinstance(m, ExpertParallelExperts) for m in ep.modules()) == 2  # both layers sharded
    g = torch.Generator().manual_seed(20 + rank)
    idx, targets = (torch.randint(0, 64, (2, 16), generator=g) for _ in range(2))
    losses = {name: model(idx, targets).lm_loss for name, model in (("full", full), ("ep", ep))}
    for loss in losses.values():
        loss.backward()
    return {
        "lm_loss": max_diff(losses["ep"], losses["full"]),
        "embed.grad": max_diff(ep.embed.weight.grad, full.embed.weight.grad),
    }


def test_expert_parallel_matches_single_device(tmp_path):
    reports = spawn(one_step_worker, 2, tmp_path)
    assert reports[0].keys() == CASES_A.keys() | {"transformer"}
    assert all(report["topk, capacity 1.0"]["dropped_frac"] > 0 for report in reports), "no drop was tested"
    for rank, report in enumerate(reports):
        for case, result in report.items():
            diffs = result["diffs"]
            worst = max(diffs, key=diffs.get)
            assert diffs[worst] <= TOL, f"rank {rank}, {case}: {worst} differs by {diffs[worst]:.2e}"


# ---------------------------------------------------------------- (b) SGD steps, EP inside data parallelism

N_STEPS, LR = 5, 1e-3


def training_worker(rank: int, n_ranks: int, ep_size: int, router: str) -> dict:
    # EP groups of consecutive ranks; the ranks holding the same expert shard form a data-parallel group.
    ep_groups = [dist.new_group(list(range(s, s + ep_size))) for s in range(0, n_ranks, ep_size)]
    shard_groups = [dist.new_group(list(range(i, n_ranks, ep_size))) for i in range(ep_size)]
    ep_group, shard_group = ep_groups[rank // ep_size], shard_groups[rank % ep_size]

    # Sequence-scope aux loss and mean z-loss: on the concatenated batch each is the mean of the ranks'.
    cfg = tiny_config(router=router, n_shared_experts=1, aux_loss_scope="sequence", bias_update_speed=0.01)
    ref = MoELayer(cfg)
    randomise(ref)
    ep = parallelize_experts(copy.deepcopy(ref), ep_group)
    ref_opt, ep_opt = torch.optim.SGD(ref.parameters(), lr=LR), torch.optim.SGD(ep.parameters(), lr=LR)
    initial = copy.deepcopy(ref)
    worst = []
    for step in range(N_STEPS):
        batches = [tokens(100 * step + r, cfg.d_model) for r in range(n_ranks)]
        out = ref(torch.cat([x for x, _ in batches]))
        loss_of(out, torch.cat([c for _, c in batches])).backward()
        ref_opt.step()
        ref_opt.zero_grad()
        if ref.router.updates_bias:
            ref.router.update_bias(out.stats.expert_counts)

        x, c = batches[rank]
        out = ep(x)
        loss_of(out, c, router_loss_share=1 / n_ranks).backward()
        for p in replicated_params(ep).values():
            dist.all_reduce(p.grad)
        if shard_group.size() > 1:
            for p in ep.experts.parameters():
                dist.all_reduce(p.grad, group=shard_group)
        ep_opt.step()
        ep_opt.zero_grad()
        if ep.router.updates_bias:  # what the trainer does: counts summed over all ranks
            counts = out.stats.expert_counts.clone()
            dist.all_reduce(counts)
            ep.router.update_bias(counts)

        diffs = [max_diff(p, dict(ref.named_parameters())[n]) for n, p in replicated_params(ep).items()]
        diffs += [max_diff(b, dict(ref.named_buffers())[n]) for n, b in ep.named_buffers()]
        for name in ("w_in", "w_out"):
            diffs.append(max_diff(gather_experts(getattr(ep.experts, name), ep_group), getattr(ref.experts, name)))
        worst.append(max(diffs))
    moved = max(max_diff(p, q) for p, q in zip(ref.parameters(), initial.parameters(), strict=True))
    return {"worst_per_step": worst, "moved": moved}


@pytest.mark.slow
@pytest.mark.parametrize("router", ["topk", "sigmoid_bias"])
@pytest.mark.parametrize("ep_size", [4, 2])
def test_expert_parallel_training_matches_single_device(tmp_path, ep_size, router):
    reports = spawn(training_worker, 4, tmp_path, ep_size, router)
    for rank, report in enumerate(reports):
        assert len(report["worst_per_step"]) == N_STEPS
        assert report["moved"] > 1000 * TOL, "the steps barely moved the weights: the comparison proves nothing"
        for step, worst in enumerate(report["worst_per_step"]):
            assert worst <= TOL, f"rank {rank}, step {step}: weights differ by {worst:.2e}"
