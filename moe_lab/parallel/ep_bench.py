"""The EP mode of `python -m moe_lab.bench ep`: one MoE layer's forward+backward with its experts sharded
over N ranks (one process each, every rank its own tokens: weak scaling), for each N asked.

Per N: the step time (median over repeats, the slowest rank's), the all-to-all bytes one rank sends per
step, counted from the benchmarked batch's routing (the forward sends token states and gate weights out
and outputs back; the backward sends the gradients of the same rows the other way; rows a rank keeps for
its own experts never leave it), and the dispatch share: the time the profiler sees inside the all-to-alls
and their waits over the step time, from one profiled step.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moe_lab.model.config import ModelConfig
from moe_lab.model.experts import sort_by_expert
from moe_lab.model.moe import MoELayer
from moe_lab.parallel.expert_parallel import parallelize_experts

# Profiler events of the exchange: gloo's and NCCL's all-to-all, and the waits of the functional collectives.
EXCHANGE_EVENTS = ("all_to_all", "alltoall", "wait_tensor")


def bench_ep(
    cfg: ModelConfig, tokens: int, ep_sizes: list[int], device: str, dtype: torch.dtype, repeats: int, threads: int
) -> list[dict]:
    """One row per EP size: N processes (gloo on CPU, NCCL on cuda:0..N-1), each with `tokens` tokens."""
    rows = []
    for n in ep_sizes:
        with tempfile.TemporaryDirectory() as tmp:
            args = (n, tmp, cfg, tokens, device, dtype, repeats, threads)
            mp.spawn(_worker, args=args, nprocs=n, join=True)
            reports = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(n)]
        step_ms = max(r["step_ms"] for r in reports)
        exchange_ms = statistics.mean(r["exchange_ms"] for r in reports)
        share = statistics.mean(r["exchange_share"] for r in reports)
        rows.append(
            {
                "ep": n,
                "tokens_per_rank": tokens,
                "step_ms": round(step_ms, 3),
                "exchange_ms": round(exchange_ms, 3),
                "dispatch_share": round(share, 3),
                "a2a_bytes_per_rank": round(statistics.mean(r["sent_bytes"] for r in reports)),
            }
        )
    return rows


def _worker(rank, n, tmp, cfg, tokens, device, dtype, repeats, threads) -> None:
    torch.set_num_threads(threads)
    dev = torch.device(f"cuda:{rank}" if device == "cuda" else "cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(
        "nccl" if dev.type == "cuda" else "gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=n
    )
    try:
        report = _measure(rank, n, cfg, tokens, dev, dtype, repeats)
        Path(tmp, f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


def _measure(rank, n, cfg, tokens, dev, dtype, repeats) -> dict:
    torch.manual_seed(0)  # the same full layer on every rank, then each keeps its shard
    layer = MoELayer(cfg)
    for p in layer.parameters():
        torch.nn.init.normal_(p, 0.0, 0.02)
    if n > 1:
        parallelize_experts(layer, dist.group.WORLD)
    layer.to(device=dev, dtype=dtype)
    g = torch.Generator().manual_seed(100 + rank)  # every rank its own tokens
    x = torch.randn(1, tokens, cfg.d_model, generator=g).to(dev, dtype)
    grad = torch.randn(x.shape, generator=g).to(dev, dtype)

    def step() -> None:
        out = layer(x.detach().requires_grad_())
        ((out.y * grad).sum() + 0.01 * out.aux_loss + 0.001 * out.z_loss).backward()
        layer.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    times = []
    for rep in range(3 + repeats):
        dist.barrier()
        start = time.perf_counter()
        step()
        if rep >= 3:
            times.append(time.perf_counter() - start)
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof:
        dist.barrier()
        start = time.perf_counter()
        step()
        profiled_step_s = time.perf_counter() - start
    exchange_us = sum(
        event.self_cpu_time_total for event in prof.key_averages() if any(k in event.key for k in EXCHANGE_EVENTS)
    )
    return {
        "step_ms": statistics.median(times) * 1e3,
        "exchange_ms": exchange_us / 1e3,
        # the share divides by the profiled step's own time: the profiler slows a step down, so the unprofiled
        # median would put the exchange over the wrong denominator (shares over 1 on small layers)
        "exchange_share": exchange_us / 1e6 / profiled_step_s,
        "sent_bytes": _sent_bytes(layer, x.view(-1, cfg.d_model), rank, n) if n > 1 else 0,
    }


@torch.no_grad()
def _sent_bytes(layer: MoELayer, x_TD: torch.Tensor, rank: int, n: int) -> int:
    """Bytes this rank sends per forward+backward: the rows it sends to other ranks' experts (states and gate
    weights out, then the gradients of their outputs) and the rows it receives from them (outputs back,
    then the gradients of their states and weights), plus the count exchange."""
    routing = layer.router(x_TD, layer.capacity_for(x_TD.shape[0]))
    cap = None if layer.router.bounded else layer.capacity_for(x_TD.shape[0])
    order = sort_by_expert(routing.expert_idx, layer.n_routed_experts, cap)
    send_N = order.kept_counts.view(n, -1).sum(1)  # [N] rows to each rank
    recv_N = torch.empty_like(send_N)
    dist.all_to_all_single(recv_N, send_N)
    rows_out = int(send_N.sum() - send_N[rank])
    rows_in = int(recv_N.sum() - recv_N[rank])
    state_bytes, weight_bytes = x_TD.element_size() * x_TD.shape[1], routing.weight.element_size()
    return (2 * state_bytes + weight_bytes) * (rows_out + rows_in) + order.kept_counts.numel() * 8


def print_ep_table(rows: list[dict]) -> None:
    print(f"{'ep':>3} {'tokens/rank':>12} {'step ms':>9} {'a2a ms':>8} {'dispatch':>9} {'a2a KiB/rank':>13}")
    for r in rows:
        print(
            f"{r['ep']:>3} {r['tokens_per_rank']:>12} {r['step_ms']:>9.2f} {r['exchange_ms']:>8.2f} "
            f"{r['dispatch_share']:>9.1%} {r['a2a_bytes_per_rank'] / 1024:>13.1f}"
        )
