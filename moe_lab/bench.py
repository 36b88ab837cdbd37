"""Benchmarks: `python -m moe_lab.bench moe|train [--json]`.

moe: forward+backward of one MoE layer against (a) a dense SwiGLU FFN with the same active parameters
and (b) the same layer with the naive per-expert loop, in one process, contenders interleaved, medians.
A fourth contender, `experts_only`, is the floor under any dispatch built on these kernels: the same
experts on tokens already grouped by expert (no router, gather or combine).
train: tokens/s of the Lightning training step (with moe_lab's callbacks and TensorBoard logging)
against a plain PyTorch loop over the same model and data, in one process, blocks interleaved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from moe_lab.config import load_config, to_dict
from moe_lab.data import TextDataModule
from moe_lab.lit import MoELitModule
from moe_lab.model.config import ModelConfig, MoEConfig, expert_dims
from moe_lab.model.ffn import DenseFFN
from moe_lab.model.moe import MoELayer
from moe_lab.model.naive import NaiveMoELayer
from moe_lab.runtime import tune_cpu_allocator
from moe_lab.train import build_callbacks


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
    return {**extra,
        "size": size.name, "dtype": str(dtype).removeprefix("torch."), "device": device,
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
    config = MixtralConfig(hidden_size=size.d_model, intermediate_size=size.expert_hidden,
                           num_local_experts=size.n_experts, num_experts_per_tok=size.top_k)
    block = MixtralSparseMoeBlock(config)
    for p in block.parameters():
        torch.nn.init.normal_(p, 0.0, 0.02)
    return block


def print_moe_table(rows: list[dict]) -> None:
    hf = all("hf_mixtral" in r["ms"] for r in rows)
    times = ["moe", "dense_iso", "naive_loop", "experts_only"] + (["hf_mixtral"] if hf else [])
    ratios = ["moe_over_dense_iso", "naive_over_moe", "experts_only_over_dense_iso", "naive_over_experts_only"] \
        + (["hf_mixtral_over_dense_iso"] if hf else [])
    short = {"moe_over_dense_iso": "moe/dense", "naive_over_moe": "naive/moe", "hf_mixtral_over_dense_iso": "hf/dense",
             "experts_only_over_dense_iso": "floor/dense", "naive_over_experts_only": "naive/floor"}
    names = {"dense_iso": "dense", "naive_loop": "naive", "experts_only": "floor", "hf_mixtral": "hf"}
    print(f"{'size':<6} {'dtype':<9}" + "".join(f"{names.get(t, t) + ' ms':>10}" for t in times)
          + "".join(f"{short[k]:>12}" for k in ratios))
    for r in rows:
        print(f"{r['size']:<6} {r['dtype']:<9}" + "".join(f"{r['ms'][t]:>10.2f}" for t in times)
              + "".join(f"{r[k]:>12.3f}" for k in ratios))


class _StepClock(pl.Callback):
    """Times the interval between consecutive training batch starts: everything Lightning does per
    step (data fetch, hooks, logging, callbacks) is inside an interval."""

    def __init__(self):
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.starts.append(time.perf_counter())


def _plain_loop(cfg, data, steps: int) -> list[float]:
    """The same training step without Lightning: forward, router losses, backward, clip, AdamW,
    schedule, loss-free bias update."""
    torch.manual_seed(cfg.seed)
    lit = MoELitModule(to_dict(cfg))
    model = lit.model
    opt_cfg = lit.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    starts, batches = [], iter(data.train_dataloader())
    for _ in range(steps):
        starts.append(time.perf_counter())
        x, y = next(batches)
        out = model(x, y)
        loss = out.lm_loss + model.router_loss(out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        sched.step()
        model.update_router_biases({i: s.expert_counts for i, s in out.routing.items()})
        loss.item()  # Lightning reads the loss every step too (progress bar / NaN guard)
    starts.append(time.perf_counter())
    return starts


def _lightning_loop(cfg, data, steps: int, log_dir: str) -> list[float]:
    torch.manual_seed(cfg.seed)
    lit = MoELitModule(to_dict(cfg))
    clock = _StepClock()
    callbacks = [cb for name, cb in build_callbacks(cfg, Path(log_dir)).items() if "checkpoint" not in name]
    trainer = pl.Trainer(max_steps=steps, max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0,
                         logger=TensorBoardLogger(log_dir, name="bench"), callbacks=[*callbacks, clock],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         gradient_clip_val=cfg.optim.grad_clip, log_every_n_steps=cfg.trainer.log_every_n_steps,
                         use_distributed_sampler=False, accelerator="cpu", devices=1)
    trainer.fit(lit, datamodule=data)
    return clock.starts + [time.perf_counter()]


def bench_train(config: str, steps: int, blocks: int, warmup: int) -> dict:
    cfg = load_config(config, ["trainer.progress_bar=false"])
    data = TextDataModule(cfg.data, seed=cfg.seed)
    data.prepare_data()
    data.setup("fit")
    cfg.model.vocab_size = data.vocab_size
    tokens_per_step = cfg.data.batch_size * cfg.data.block_size
    intervals: dict[str, list[float]] = {"plain": [], "lightning": []}
    with tempfile.TemporaryDirectory() as tmp:
        for block in range(blocks):
            order = ["plain", "lightning"] if block % 2 == 0 else ["lightning", "plain"]
            for name in order:
                starts = _plain_loop(cfg, data, steps) if name == "plain" else _lightning_loop(cfg, data, steps, tmp)
                gaps = [b - a for a, b in zip(starts, starts[1:])]
                intervals[name] += gaps[warmup:]
    med = {k: statistics.median(v) for k, v in intervals.items()}
    return {
        "config": config, "tokens_per_step": tokens_per_step, "steps_timed": len(intervals["plain"]),
        "tokens_per_s": {k: round(tokens_per_step / v, 1) for k, v in med.items()},
        "lightning_overhead": round(med["lightning"] / med["plain"] - 1.0, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moe_lab.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["moe", "train"], help="which benchmark to run")
    parser.add_argument("--config", default="experiments/shakespeare_moe.yaml", help="train: experiment")
    parser.add_argument("--steps", type=int, default=40, help="train: steps per block")
    parser.add_argument("--blocks", type=int, default=4, help="train: alternating blocks")
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
    if args.what == "train":
        result = bench_train(args.config, args.steps, args.blocks, warmup=5)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {result['config']}, "
              f"{result['tokens_per_step']} tokens/step, {result['steps_timed']} steps timed per contender")
        for name, tps in result["tokens_per_s"].items():
            print(f"{name:<10}{tps:>12,.0f} tokens/s")
        print(f"Lightning overhead: {100 * result['lightning_overhead']:+.1f}%")
        if args.json:
            print(json.dumps(result))
        return 0
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
          f"{args.repeats} repeats, forward+backward, heap-retaining allocator: {allocator}")
    rows = [bench_moe(size, dtype, args.device, args.repeats) for size in MOE_SIZES]
    print_moe_table(rows)
    if args.json:
        keys = ("moe_over_dense_iso", "naive_over_moe", "experts_only_over_dense_iso", "naive_over_experts_only",
                "hf_mixtral_over_dense_iso", "ms")
        print(json.dumps({r["size"]: {k: r[k] for k in keys if k in r} for r in rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
