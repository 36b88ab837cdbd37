"""Benchmark of the MoE layer: `python -m moe_lab.bench moe [--json]`.

moe: forward+backward of one MoE layer against (a) a dense SwiGLU FFN with the same active parameters
and (b) the same layer with the naive per-expert loop, in one process, contenders interleaved, medians.
A fourth contender, `experts_only`, is the floor under any dispatch built on these kernels: the same
experts on tokens already grouped by expert (no router, gather or combine).
ep: the same layer with its experts sharded over N ranks, for each N of --ep-sizes (default 1,2,4): step time,
all-to-all bytes per rank and the share of the step spent in the exchange (moe_lab.parallel.ep_bench). On CPU
the ranks are gloo processes sharing the machine's cores (--threads each); on GPUs, one per GPU over NCCL:
  python -m moe_lab.bench ep --device cuda --dtype bfloat16 --ep-sizes 1,2,4,8 --tokens 8192
The training step's tokens/s is what every `python -m moe_lab.train` run reports (progress bar,
TensorBoard `train/tokens_per_s`, the final metrics), measured on the real run with its callbacks and loggers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from moe_lab.cli import run_main, tune_cpu_allocator
from moe_lab.model.config import ModelConfig, MoEConfig, expert_dims
from moe_lab.model.ffn import DenseFFN
from moe_lab.model.moe import MoELayer
from moe_lab.model.naive import NaiveMoELayer
from moe_lab.parallel.ep_bench import bench_ep, print_ep_table


@dataclass(frozen=True)
class MoESize:
    name: str
    d_model: int
    n_experts: int
    top_k: int
    expert_hidden: int
    tokens: int = 4096


MOE_SIZES = (
    MoESize("base", d_model=256, n_experts=8, top_k=2, expert_hidden=512),
    MoESize("fine", d_model=512, n_experts=16, top_k=2, expert_hidden=256),
)


def layer_config(size: MoESize) -> ModelConfig:
    return ModelConfig(
        d_model=size.d_model,
        n_heads=4,
        d_ff=size.expert_hidden,
        moe=MoEConfig(n_experts=size.n_experts, top_k=size.top_k),
    )


class ExpertsOnly(torch.nn.Module):
    """The MoE layer's experts alone, on the k copies of every token split evenly across experts as if
    already sorted: the grouped GEMMs and activation with nothing around them. Its time over the
    dense twin is the price of running E smaller GEMMs over E-times larger weights; the MoE layer's
    time over it is what routing, dispatch and combine cost."""

    def __init__(self, moe: MoELayer):
        super().__init__()
        self.experts, self.top_k = moe.experts, moe.routed_top_k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        grouped = flat.repeat(self.top_k, 1)  # [k*T, D]
        n_experts = self.experts.n_experts
        counts = torch.full((n_experts,), grouped.shape[0] // n_experts, device=x.device)
        counts[: grouped.shape[0] % n_experts] += 1
        gate = torch.full((grouped.shape[0],), 1.0 / self.top_k, device=x.device, dtype=x.dtype)
        y = self.experts.compute(grouped, counts, gate)
        return y.view(self.top_k, *x.shape).sum(0)


def time_contenders(contenders: dict, x: torch.Tensor, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds of forward+backward per contender; contenders alternate every repeat so that
    drift in machine load hits them all alike."""
    grad = torch.randn_like(x)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for rep in range(warmup + repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            module = contenders[name]
            xi = x.detach().requires_grad_()
            start = time.perf_counter()
            out = module(xi)
            if isinstance(out, torch.Tensor):
                loss = (out * grad).sum()
            else:  # MoE: the router losses are part of the work
                loss = (out.y * grad).sum() + 0.01 * out.aux_loss + 0.001 * out.z_loss
            loss.backward()
            elapsed = time.perf_counter() - start
            if rep >= warmup:
                times[name].append(elapsed)
            module.zero_grad(set_to_none=True)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_moe(size: MoESize, dtype: torch.dtype, device: str, repeats: int) -> dict:
    torch.manual_seed(0)
    cfg = layer_config(size)
    dims = expert_dims(cfg)
    moe = MoELayer(cfg)
    for p in moe.parameters():  # non-degenerate routing: random weights at the model's init scale
        torch.nn.init.normal_(p, 0.0, 0.02)
    naive = NaiveMoELayer(cfg)
    naive.load_state_dict(moe.state_dict())
    dense = DenseFFN(size.d_model, dims.routed_top_k * dims.routed_hidden, cfg.activation)  # same active params
    contenders = {"moe": moe, "dense_iso": dense, "naive_loop": naive, "experts_only": ExpertsOnly(moe)}
    hf_block = transformers_mixtral_block(size)
    if hf_block is not None:  # the reference the field knows, when transformers is installed
        contenders["hf_mixtral"] = hf_block
    for m in contenders.values():
        m.to(device=device, dtype=dtype)
    x = torch.randn(1, size.tokens, size.d_model, device=device, dtype=dtype)
    if device == "cuda":
        torch.cuda.synchronize()
    med = time_contenders(contenders, x, repeats)
    extra = {"hf_mixtral_over_dense_iso": round(med["hf_mixtral"] / med["dense_iso"], 3)} if hf_block else {}
    return {
        **extra,
        "size": size.name,
        "dtype": str(dtype).removeprefix("torch."),
        "device": device,
        "ms": {k: round(v * 1e3, 3) for k, v in med.items()},
        "moe_over_dense_iso": round(med["moe"] / med["dense_iso"], 3),
        "naive_over_moe": round(med["naive_loop"] / med["moe"], 3),
        "experts_only_over_dense_iso": round(med["experts_only"] / med["dense_iso"], 3),
        "naive_over_experts_only": round(med["naive_loop"] / med["experts_only"], 3),
    }


def transformers_mixtral_block(size: MoESize):
    """transformers' MixtralSparseMoeBlock of the same size (its own router and expert loop), or None."""
    try:
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
        from transformers.utils import logging as hf_logging
    except ImportError:
        return None
    hf_logging.set_verbosity_error()  # it warns that a standalone block has no experts_implementation
    config = MixtralConfig(
        hidden_size=size.d_model,
        intermediate_size=size.expert_hidden,
        num_local_experts=size.n_experts,
        num_experts_per_tok=size.top_k,
    )
    block = MixtralSparseMoeBlock(config)
    for p in block.parameters():
        torch.nn.init.normal_(p, 0.0, 0.02)
    return block


def print_moe_table(rows: list[dict]) -> None:
    hf = all("hf_mixtral" in r["ms"] for r in rows)
    times = ["moe", "dense_iso", "naive_loop", "experts_only"] + (["hf_mixtral"] if hf else [])
    ratios = ["moe_over_dense_iso", "naive_over_moe", "experts_only_over_dense_iso", "naive_over_experts_only"] + (
        ["hf_mixtral_over_dense_iso"] if hf else []
    )
    short = {
        "moe_over_dense_iso": "moe/dense",
        "naive_over_moe": "naive/moe",
        "hf_mixtral_over_dense_iso": "hf/dense",
        "experts_only_over_dense_iso": "floor/dense",
        "naive_over_experts_only": "naive/floor",
    }
    names = {"dense_iso": "dense", "naive_loop": "naive", "experts_only": "floor", "hf_mixtral": "hf"}
    print(
        f"{'size':<6} {'dtype':<9}"
        + "".join(f"{names.get(t, t) + ' ms':>10}" for t in times)
        + "".join(f"{short[k]:>12}" for k in ratios)
    )
    for r in rows:
        print(
            f"{r['size']:<6} {r['dtype']:<9}"
            + "".join(f"{r['ms'][t]:>10.2f}" for t in times)
            + "".join(f"{r[k]:>12.3f}" for k in ratios)
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moe_lab.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["moe", "ep"], help="which benchmark to run")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2; per rank with ep)")
    parser.add_argument("--ep-sizes", default="1,2,4", help="ep: the EP sizes, one process per rank (default 1,2,4)")
    parser.add_argument("--tokens", type=int, default=4096, help="ep: tokens per rank (default 4096)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--json", action="store_true", help="end with one line of JSON")
    parser.add_argument(
        "--default-allocator",
        action="store_true",
        help="keep glibc's default malloc settings (see moe_lab.cli.tune_cpu_allocator)",
    )
    args = parser.parse_args(argv)
    tune = args.device == "cpu" and not args.default_allocator
    return run_main(lambda: bench(args, allocator=tune and tune_cpu_allocator()), tune_allocator=tune)


def bench(args: argparse.Namespace, allocator: bool) -> None:
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(
        f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
        f"{args.repeats} repeats, forward+backward, heap-retaining allocator: {allocator}"
    )
    if args.what == "ep":
        return run_ep(args, dtype)
    rows = [bench_moe(size, dtype, args.device, args.repeats) for size in MOE_SIZES]
    print_moe_table(rows)
    if args.json:
        keys = (
            "moe_over_dense_iso",
            "naive_over_moe",
            "experts_only_over_dense_iso",
            "naive_over_experts_only",
            "hf_mixtral_over_dense_iso",
            "ms",
        )
        print(json.dumps({r["size"]: {k: r[k] for k in keys if k in r} for r in rows}))


def run_ep(args: argparse.Namespace, dtype: torch.dtype) -> None:
    size = MOE_SIZES[0]
    print(
        f"layer {size.name}: d_model {size.d_model}, {size.n_experts} experts, top-{size.top_k}, "
        f"expert width {size.expert_hidden}; {args.tokens} tokens per rank"
    )
    ep_sizes = [int(n) for n in args.ep_sizes.split(",")]
    rows = bench_ep(layer_config(size), args.tokens, ep_sizes, args.device, dtype, args.repeats, args.threads)
    print_ep_table(rows)
    if args.json:
        print(json.dumps({f"ep{r['ep']}": r for r in rows}))


if __name__ == "__main__":
    sys.exit(main())
