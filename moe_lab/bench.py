"""Benchmarks: `python -m moe_lab.bench moe [--json]`.

moe: forward+backward of one MoE layer against (a) a dense SwiGLU FFN with the same active parameters
and (b) the same layer with the naive per-expert loop, in one process, contenders interleaved, medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from moe_lab.model.config import ModelConfig, MoEConfig, expert_dims
from moe_lab.model.ffn import DenseFFN
from moe_lab.model.moe import MoELayer
from moe_lab.model.naive import NaiveMoELayer
from moe_lab.runtime import tune_cpu_allocator


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
    return ModelConfig(d_model=size.d_model, n_heads=4, d_ff=size.expert_hidden,
                       moe=MoEConfig(n_experts=size.n_experts, top_k=size.top_k))


def time_contenders(contenders: dict, x: torch.Tensor, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds of forward+backward per contender; contenders alternate every repeat so that
    drift in machine load hits them all alike."""
    grad = torch.randn_like(x)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for rep in range(warmup + repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]
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
    dense = DenseFFN(size.d_model, dims.top_k * dims.hidden, cfg.activation)  # same active params
    contenders = {"moe": moe, "dense_iso": dense, "naive_loop": naive}
    for m in contenders.values():
        m.to(device=device, dtype=dtype)
    x = torch.randn(1, size.tokens, size.d_model, device=device, dtype=dtype)
    if device == "cuda":
        torch.cuda.synchronize()
    med = time_contenders(contenders, x, repeats)
    return {
        "size": size.name, "dtype": str(dtype).removeprefix("torch."), "device": device,
        "ms": {k: round(v * 1e3, 3) for k, v in med.items()},
        "moe_over_dense_iso": round(med["moe"] / med["dense_iso"], 3),
        "naive_over_moe": round(med["naive_loop"] / med["moe"], 3),
    }


def print_moe_table(rows: list[dict]) -> None:
    print(f"{'size':<6} {'dtype':<9} {'moe ms':>9} {'dense ms':>9} {'naive ms':>9} "
          f"{'moe/dense':>10} {'naive/moe':>10}")
    for r in rows:
        ms = r["ms"]
        print(f"{r['size']:<6} {r['dtype']:<9} {ms['moe']:>9.2f} {ms['dense_iso']:>9.2f} "
              f"{ms['naive_loop']:>9.2f} {r['moe_over_dense_iso']:>10.3f} {r['naive_over_moe']:>10.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moe_lab.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["moe"], help="which benchmark to run")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--json", action="store_true", help="end with one line of JSON")
    parser.add_argument("--default-allocator", action="store_true",
                        help="keep glibc's default malloc settings (see moe_lab.runtime)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    allocator = tune_cpu_allocator() if args.device == "cpu" and not args.default_allocator else False
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
          f"{args.repeats} repeats, forward+backward, heap-retaining allocator: {allocator}")
    rows = [bench_moe(size, dtype, args.device, args.repeats) for size in MOE_SIZES]
    print_moe_table(rows)
    if args.json:
        print(json.dumps({r["size"]: {k: r[k] for k in ("moe_over_dense_iso", "naive_over_moe", "ms")}
                          for r in rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
