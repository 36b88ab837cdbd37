"""A one-minute look at the MoE model on the embedded Shakespeare corpus: `python -m moe_lab.demo`.

Builds a small MoE transformer, prints its parameter/FLOP accounting, trains it for a few hundred
steps with a plain loop and shows the loss, the expert load of each layer and a generated sample.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from moe_lab.data import DataConfig, TextDataModule
from moe_lab.errors import MoELabError
from moe_lab.model import ModelConfig, MoEConfig, MoETransformer
from moe_lab.runtime import tune_cpu_allocator
from moe_lab.model.summary import model_summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moe_lab.demo", description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tune_cpu_allocator()
    torch.manual_seed(args.seed)
    data_cfg = DataConfig(block_size=128, batch_size=16)
    model_cfg = ModelConfig(d_model=128, n_layers=4, n_heads=4, d_ff=256, max_seq_len=128,
                            moe=MoEConfig(n_experts=8, top_k=2, expert_hidden=128))
    try:
        data = TextDataModule(data_cfg, seed=args.seed)
        data.prepare_data()
        data.setup("fit")
    except MoELabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model = MoETransformer(model_cfg)
    print(model_summary(model_cfg, data_cfg.block_size))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    start, batches = time.perf_counter(), iter(data.train_dataloader())
    for step in range(1, args.steps + 1):
        x, y = next(batches)
        out = model(x, y)
        loss = out.lm_loss + model.router_loss(out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == 1:
            tok_s = step * x.numel() / (time.perf_counter() - start)
            loads = " ".join(
                f"L{i}:{(s.expert_counts.max() / s.expert_counts.mean()).item():.2f}"
                for i, s in out.routing.items())
            print(f"step {step:4d}  lm loss {out.lm_loss.item():.3f}  aux {out.aux_loss.item():.3f}  "
                  f"max/mean load {loads}  {tok_s:,.0f} tok/s")
    prompt = torch.tensor([list("ROMEO:\n".encode())])
    text = model.generate(prompt, 200, temperature=0.8, top_k=40)[0].tolist()
    print("\n--- sample ---\n" + bytes(text).decode("utf-8", errors="replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
