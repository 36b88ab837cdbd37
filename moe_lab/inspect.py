"""Look inside a trained or converted MoE model: `python -m moe_lab.inspect PATH --text FILE`.

PATH is a moe_lab model directory (moe_lab_model.yaml + model.safetensors), a trainer checkpoint
(*.ckpt), or a local Hugging Face checkpoint directory (config.json + model.safetensors) of a
supported architecture. Prints the parameter / FLOP accounting and where the MoE layers are, runs the
model over the text and prints each MoE layer's expert load and routing entropy; with --logdir it
also writes the load heatmap to TensorBoard.

The text is tokenized with the checkpoint's own tokenizer: tokenizer.json of an HF directory
(required there); for moe_lab models the tokenizer saved with them (a converted model's
tokenizer.json, or the trainer's RUN/tokenizer/ for RUN/checkpoints/*.ckpt), else UTF-8 bytes.

Routing traces (moe_lab.traces.command): --trace OUT.parquet writes the experts every token went to in
every MoE layer, --compare OTHER (checkpoint or trace) prints the routing consistency per layer,
--numerics the consistency of float32 vs bfloat16 autocast and of compiled vs eager.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from moe_lab.cli import run_main
from moe_lab.errors import DataError, first_line
from moe_lab.interop.checkpoint import (
    CONFIG_FILE,
    CheckpointError,
    build_model,
    load_lightning_checkpoint,
    load_pretrained,
)
from moe_lab.model import ModelConfig, MoETransformer, count_model, expert_dims, moe_layer_indices
from moe_lab.model.summary import moe_layers_line
from moe_lab.traces.command import TraceRequest, trace_command

HF_CONFIG_FILE = "config.json"  # kept equal to moe_lab.interop.hf's, which needs transformers to import
HF_TOKENIZER_FILE = "tokenizer.json"
SAVED_TOKENIZER_FILE = "tokenizer_info.json"  # what moe_lab.data tokenizers' save() writes
LOAD_COLUMNS = 16  # experts per row block of the load table


@dataclass
class Source:
    cfg: ModelConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer: object  # moe_lab.data.tokenizers.Tokenizer
    kind: str


@dataclass
class RoutingSummary:
    layers: list[int]  # MoE layer indices
    counts: np.ndarray  # [n_moe_layers, E] assignments routed to each expert
    entropy: np.ndarray  # [n_moe_layers] mean per-token entropy of the routing distribution (nats)
    n_tokens: int


# ------------------------------------------------------------------------------------------ loading


def load_source(path: Path) -> Source:
    if not path.exists():
        raise CheckpointError(f"{path}: not found")
    from moe_lab.data.tokenizers import ByteTokenizer  # imports `datasets`: only once there is a model

    if path.is_dir() and (path / CONFIG_FILE).is_file():
        cfg, state_dict = load_pretrained(path)
        tokenizer = saved_tokenizer([path, path / "tokenizer"]) or ByteTokenizer()
        return Source(cfg, state_dict, tokenizer, "moe_lab directory")
    if path.is_dir() and (path / HF_CONFIG_FILE).is_file():
        return load_hf_source(path)
    if path.is_file() and path.suffix == ".ckpt":
        cfg, state_dict = load_lightning_checkpoint(path)
        # The trainer writes RUN/checkpoints/*.ckpt and its tokenizer to RUN/tokenizer/.
        tokenizer = saved_tokenizer([path.parent.parent / "tokenizer", path.parent]) or ByteTokenizer()
        return Source(cfg, state_dict, tokenizer, "trainer checkpoint")
    raise CheckpointError(
        f"{path}: not a moe_lab model directory ({CONFIG_FILE}), a trainer checkpoint "
        f"(*.ckpt) or a Hugging Face checkpoint directory ({HF_CONFIG_FILE})"
    )


def load_hf_source(path: Path) -> Source:
    try:
        from moe_lab.interop.hf import load_hf_dir
    except ImportError as err:
        raise CheckpointError(
            f"{path}: reading Hugging Face checkpoints needs transformers (pip install 'moe-lab[hf]'): {err}"
        ) from None
    if not (path / HF_TOKENIZER_FILE).is_file():
        raise CheckpointError(
            f"{path / HF_TOKENIZER_FILE}: not found; the text is tokenized with the checkpoint's own tokenizer"
        )
    cfg, state_dict = load_hf_dir(path)
    return Source(cfg, state_dict, hf_tokenizer(path / HF_TOKENIZER_FILE), "Hugging Face checkpoint")


def hf_tokenizer(file: Path):
    import tokenizers

    from moe_lab.data.tokenizers import HFTokenizer

    try:
        return HFTokenizer(tokenizers.Tokenizer.from_file(str(file)), "pretrained", str(file))
    except Exception as err:  # the tokenizers library raises its own exception types
        raise CheckpointError(f"{file}: not a readable tokenizer: {first_line(err)}") from None


def saved_tokenizer(directories: list[Path]):
    from moe_lab.data.tokenizers import load_saved_tokenizer

    for directory in directories:
        if (directory / SAVED_TOKENIZER_FILE).is_file():
            return load_saved_tokenizer(directory)
        if (directory / HF_TOKENIZER_FILE).is_file():
            return hf_tokenizer(directory / HF_TOKENIZER_FILE)
    return None


def read_tokens(text_file: Path, tokenizer, vocab_size: int, max_tokens: int) -> list[int]:
    try:
        text = text_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{text_file}: cannot read UTF-8 text: {err}") from None
    ids = tokenizer.encode(text)[:max_tokens]
    if not ids:
        raise DataError(f"{text_file}: no tokens to route")
    if max(ids) >= vocab_size:
        raise DataError(
            f"{text_file}: the {tokenizer.kind} tokenizer gives id {max(ids)}, beyond model.vocab_size={vocab_size}"
        )
    return ids


# ------------------------------------------------------------------------------------------ routing


@torch.no_grad()
def route_tokens(model: MoETransformer, ids: list[int], context: int) -> RoutingSummary:
    """Run the token stream in windows of `context` tokens; sum expert counts, token-weight entropy."""
    model.eval()
    layers = model.moe_layers
    n_experts = expert_dims(model.cfg).n_routed_experts
    counts = torch.zeros(len(layers), n_experts, dtype=torch.float64)
    entropy = torch.zeros(len(layers), dtype=torch.float64)
    for start in range(0, len(ids), context):
        window = torch.tensor(ids[start : start + context]).unsqueeze(0)
        routing = model(window).routing
        for row, layer in enumerate(layers):
            counts[row] += routing[layer].expert_counts.double()
            entropy[row] += routing[layer].entropy.double() * window.numel()
    return RoutingSummary(layers=layers, counts=counts.numpy(), entropy=(entropy / len(ids)).numpy(), n_tokens=len(ids))


def load_shares(summary: RoutingSummary) -> np.ndarray:
    """[n_moe_layers, E] share of each layer's assignments per expert (rows sum to 1)."""
    totals = summary.counts.sum(axis=1, keepdims=True)
    return summary.counts / np.maximum(totals, 1.0)


# ------------------------------------------------------------------------------------------ tables


def format_model_summary(cfg: ModelConfig) -> str:
    counts = count_model(cfg)
    lines = [f"{'component':<16}{'params':>14}{'active':>14}{'fwd FLOPs/token':>18}"]
    for name in counts.params:
        lines.append(
            f"{name:<16}{counts.params[name]:>14,}{counts.active_params[name]:>14,.0f}"
            f"{counts.flops_per_token[name]:>18,.0f}"
        )
    lines.append(
        f"{'total':<16}{counts.total_params:>14,}{counts.total_active_params:>14,.0f}"
        f"{counts.total_flops_per_token:>18,.0f}"
    )
    share = counts.total_active_params / counts.total_params
    lines.append(
        f"active parameters per token: {counts.total_active_params:,.0f} of {counts.total_params:,} "
        f"({share:.1%}); FLOPs per token at context {cfg.max_seq_len}: "
        f"{counts.total_flops_per_token:,.0f}"
    )
    lines.append(moe_layers_line(cfg))
    return "\n".join(lines)


def format_routing(summary: RoutingSummary) -> str:
    """Per-layer routing summary and expert load, load given relative to uniform (1.00 = balanced)."""
    n_experts = summary.counts.shape[1]
    rel = load_shares(summary) * n_experts
    lines = [
        f"routing over {summary.n_tokens:,} tokens (load = share of assignments x n_experts; 1.00 is uniform)",
        f"{'layer':>5}{'assignments':>13}{'entropy':>9}{'/ln E':>7}{'max load':>10}{'min load':>10}{'idle':>6}",
    ]
    max_entropy = math.log(n_experts) if n_experts > 1 else 1.0
    for row, layer in enumerate(summary.layers):
        lines.append(
            f"{layer:>5}{summary.counts[row].sum():>13,.0f}{summary.entropy[row]:>9.3f}"
            f"{summary.entropy[row] / max_entropy:>7.3f}"
            f"{rel[row].max():>10.2f}{rel[row].min():>10.2f}{int((summary.counts[row] == 0).sum()):>6}"
        )
    lines.append("")
    lines.append("expert load")
    for first in range(0, n_experts, LOAD_COLUMNS):
        experts = range(first, min(first + LOAD_COLUMNS, n_experts))
        lines.append(f"{'layer':>5}" + "".join(f"{'e' + str(e):>7}" for e in experts))
        for row, layer in enumerate(summary.layers):
            lines.append(f"{layer:>5}" + "".join(f"{rel[row, e]:>7.2f}" for e in experts))
    return "\n".join(lines)


def write_heatmap(logdir: Path, summary: RoutingSummary) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from moe_lab.callbacks.heatmap import expert_load_heatmap

    fig = expert_load_heatmap(
        load_shares(summary), summary.layers, title=f"expert load over {summary.n_tokens:,} tokens"
    )
    with SummaryWriter(log_dir=str(logdir)) as writer:
        writer.add_figure("routing/expert_load", fig, global_step=0)  # closes the figure
        for row, layer in enumerate(summary.layers):
            writer.add_scalar(f"routing/entropy/layer_{layer}", float(summary.entropy[row]), 0)


# ------------------------------------------------------------------------------------------ CLI


def positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def inspect(path: Path, text_file: Path, max_tokens: int, logdir: Path | None) -> None:
    source = load_source(path)
    cfg = source.cfg
    ids = read_tokens(text_file, source.tokenizer, cfg.vocab_size, max_tokens)
    print(f"model      {path} ({source.kind})")
    print(f"tokenizer  {source.tokenizer.kind} (vocab {source.tokenizer.vocab_size:,})")
    print(f"text       {text_file}: {len(ids):,} tokens (--max-tokens {max_tokens})\n")
    print(format_model_summary(cfg) + "\n")
    if not moe_layer_indices(cfg):
        return
    # RoPE tables cover max_seq_len positions in every layer; positions past the window are never
    # used, so build for the window only (an HF config may declare 32k+ positions).
    context = min(cfg.max_seq_len, max_tokens)
    model = build_model(replace(cfg, max_seq_len=context), source.state_dict, str(path))
    summary = route_tokens(model, ids, context)
    print(format_routing(summary))
    if logdir is not None:
        write_heatmap(logdir, summary)
        print(f"\nwrote TensorBoard routing heatmap to {logdir}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moe_lab.inspect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path, help="moe_lab model directory, *.ckpt, or HF checkpoint directory")
    parser.add_argument(
        "--text", type=Path, help="UTF-8 text file to route (trace modes: default the start of the embedded Hamlet)"
    )
    parser.add_argument("--max-tokens", type=positive_int, default=2048, help="route at most this many tokens")
    parser.add_argument("--logdir", type=Path, help="write the TensorBoard heatmap (--trace: specialisation) here")
    parser.add_argument("--trace", type=Path, metavar="OUT.parquet", help="write PATH's routing trace")
    parser.add_argument("--compare", type=Path, metavar="OTHER", help="routing consistency with a checkpoint or trace")
    parser.add_argument("--numerics", action="store_true", help="routing consistency fp32 vs bf16, compiled vs eager")
    args = parser.parse_args(argv)
    if args.trace or args.compare or args.numerics:
        request = TraceRequest(
            args.path, args.text, args.max_tokens, args.trace, args.compare, args.numerics, args.logdir
        )
        return run_main(lambda: trace_command(request, load_source, read_tokens))
    if args.text is None:
        parser.error("the following arguments are required: --text (unless --trace, --compare or --numerics)")
    return run_main(lambda: inspect(args.path, args.text, args.max_tokens, args.logdir))


if __name__ == "__main__":
    sys.exit(main())
