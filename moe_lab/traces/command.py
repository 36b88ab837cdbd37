"""The trace modes of `python -m moe_lab.inspect PATH`: --trace OUT.parquet, --compare OTHER, --numerics.

PATH is anything inspect reads (moe_lab model directory, *.ckpt, local Hugging Face directory) or, with
--compare only, a trace file. The evaluation tokens: --text FILE tokenized with PATH's tokenizer, or the
start of the embedded Hamlet (a default validation play, so a fixed text no default run trains on), at
most --max-tokens, routed in windows of the model's context (or of --max-tokens when shorter); compared
with a trace file and without --text, that trace's tokens and windows. One window per forward, in float32
on the CPU.

The checkpoint loading and text reading are moe_lab.inspect's, passed in by it (`load_source`,
`read_tokens`): this module sits below the entry point and does not import it back.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from moe_lab.data.plays import shakespeare_play_files
from moe_lab.interop.checkpoint import build_model
from moe_lab.model import MoETransformer
from moe_lab.traces.capture import capture_trace
from moe_lab.traces.compare import compare_traces, format_consistency
from moe_lab.traces.numerics import format_numerics, numerics_checks
from moe_lab.traces.specialisation import (
    class_expert_shares,
    format_specialisation,
    specialisation_figure,
    token_classes,
)
from moe_lab.traces.store import TRACE_SUFFIX, read_trace, write_trace
from moe_lab.traces.trace import Trace, TraceError

DEFAULT_PLAY = "hamlet"  # the default evaluation text, from the embedded Shakespeare corpus


@dataclass
class TraceRequest:
    path: Path  # checkpoint, or (with `compare` only) a trace file
    text: Path | None  # UTF-8 text to route; None: see the module doc
    max_tokens: int
    out: Path | None  # --trace: where to write PATH's trace
    compare: Path | None  # --compare: a checkpoint or trace file
    numerics: bool  # --numerics
    logdir: Path | None  # TensorBoard specialisation images


@dataclass
class Traced:
    """A checkpoint loaded and traced: what --compare and --numerics reuse."""

    source: object  # moe_lab.inspect.Source
    model: MoETransformer
    trace: Trace


def is_trace_file(path: Path) -> bool:
    return path.suffix == TRACE_SUFFIX


def trace_command(request: TraceRequest, load_source: Callable, read_tokens: Callable) -> None:
    if request.logdir is not None and request.out is None:
        raise TraceError(f"--logdir {request.logdir}: only --trace draws images in the trace modes (add --trace OUT)")
    if is_trace_file(request.path):
        if request.out or request.numerics or not request.compare:
            raise TraceError(
                f"{request.path}: a trace file; only --compare reads one (--trace, --numerics need a checkpoint)"
            )
        first = read_trace(request.path)
        print(f"A  {request.path}: {first.describe()}")
        second = read_or_trace(request.compare, first, load_source)
        print(f"B  {request.compare}: {second.describe()}\n")
        print(format_consistency(compare_traces(first, second)))
        return
    source = load_source(request.path)
    other = read_trace(request.compare) if request.compare and is_trace_file(request.compare) else None
    ids, context = evaluation_tokens(request, source, other, read_tokens)
    traced = trace_checkpoint(request.path, source, ids, context)
    print(f"A  {request.path}: {traced.trace.describe()}")
    if request.out:
        write_trace(traced.trace, request.out)
        print(f"wrote {request.out}\n")
        print_specialisation(traced.trace, source.tokenizer, request.logdir)
    if request.compare:
        second = other or read_or_trace(request.compare, traced.trace, load_source)
        print(f"B  {request.compare}: {second.describe()}\n")
        print(format_consistency(compare_traces(traced.trace, second)) + "\n")
    if request.numerics:
        checks = numerics_checks(traced.model, ids, context, str(request.path), reference=traced.trace)
        print(format_numerics(checks))


def evaluation_tokens(
    request: TraceRequest, source, other: Trace | None, read_tokens: Callable
) -> tuple[list[int], int]:
    """The token ids to route and the window they are routed in (see the module doc)."""
    cfg, tokenizer = source.cfg, source.tokenizer
    if request.text is not None:
        ids = read_tokens(request.text, tokenizer, cfg.vocab_size, request.max_tokens)
        origin = str(request.text)
    elif other is not None:
        ids, origin = other.token_ids.tolist(), f"the tokens of {request.compare}"
    else:
        with importlib.resources.as_file(shakespeare_play_files()[DEFAULT_PLAY]) as file:
            ids = read_tokens(file, tokenizer, cfg.vocab_size, request.max_tokens)
        origin = f"{DEFAULT_PLAY} (embedded Shakespeare, the default evaluation text)"
    context = other.meta.context if other is not None else min(cfg.max_seq_len, request.max_tokens)
    if context > cfg.max_seq_len:
        raise TraceError(
            f"{request.compare} routed windows of {context} tokens, "
            f"beyond {request.path}'s max_seq_len={cfg.max_seq_len}"
        )
    if max(ids) >= cfg.vocab_size:
        raise TraceError(f"{origin}: token id {max(ids)} is beyond {request.path}'s vocab_size={cfg.vocab_size}")
    print(f"text  {origin}: {len(ids):,} tokens ({tokenizer.kind} tokenizer), windows of {context}")
    return ids, context


def trace_checkpoint(path: Path, source, ids, context: int) -> Traced:
    # RoPE tables are built for max_seq_len positions: build for the window only, as inspect does.
    model = build_model(replace(source.cfg, max_seq_len=context), source.state_dict, str(path))
    trace = capture_trace(
        model, ids, context, checkpoint=str(path), step=checkpoint_step(path), tokenizer=source.tokenizer.descriptor
    )
    return Traced(source, model, trace)


def read_or_trace(other: Path, first: Trace, load_source: Callable) -> Trace:
    """`other` as a trace of the same tokens as `first`: read it, or trace the checkpoint on first's tokens."""
    if is_trace_file(other):
        return read_trace(other)
    source = load_source(other)
    if first.meta.tokenizer and source.tokenizer.descriptor != first.meta.tokenizer:
        raise TraceError(
            f"{other}: its tokenizer is {source.tokenizer.descriptor}, the traced tokens are {first.meta.tokenizer}'s"
        )
    if first.meta.context > source.cfg.max_seq_len or int(first.token_ids.max()) >= source.cfg.vocab_size:
        raise TraceError(
            f"{other}: max_seq_len={source.cfg.max_seq_len}, vocab_size={source.cfg.vocab_size} cannot route "
            f"the traced tokens (windows of {first.meta.context}, ids up to {int(first.token_ids.max())})"
        )
    return trace_checkpoint(other, source, first.token_ids, first.meta.context).trace


def checkpoint_step(path: Path) -> int | None:
    """The optimizer step of a trainer checkpoint (read memory-mapped: no second copy of the weights)."""
    if path.suffix != ".ckpt":
        return None
    try:
        step = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step")
    except Exception:  # the weights were already read; the step is only a label
        return None
    return int(step) if step is not None else None


def print_specialisation(trace: Trace, tokenizer, logdir: Path | None) -> None:
    classes = token_classes(trace.token_ids, tokenizer.decode)
    shares_LCE = class_expert_shares(trace, classes)
    print(format_specialisation(trace, classes, shares_LCE) + "\n")
    if logdir is None:
        return
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(logdir)) as writer:
        for row, layer in enumerate(trace.layers):
            fig = specialisation_figure(shares_LCE[row], classes.names, f"layer {layer}: expert share by token class")
            writer.add_figure(f"routing/specialisation/layer_{layer}", fig, global_step=0)  # closes the figure
    print(f"wrote TensorBoard specialisation images to {logdir}\n")
