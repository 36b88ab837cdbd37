"""Trace a model: run it over token ids, window by window, and record each MoE layer's choice per token.

The choices are read where the routers hand them over, as moe_lab.inspect's load table counts them: a
forward hook on each MoE layer's router receives its `Routing`, the flat (token, expert, weight)
assignments the dispatch consumes. No model code changes for it, the hooks are removed afterwards, and
torch.compile traces through them (moe_lab.traces.numerics compares compiled and eager routing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from moe_lab.model import MoETransformer, expert_dims
from moe_lab.traces.trace import NO_EXPERT, Trace, TraceError, TraceMeta, pad_width

INT16_MAX = np.iinfo(np.int16).max  # expert ids are stored as int16


@torch.no_grad()
def capture_trace(
    model: MoETransformer,
    ids: Sequence[int] | torch.Tensor,
    context: int,
    *,
    checkpoint: str,
    step: int | None = None,
    dtype: str = "float32",
    tokenizer: str = "",
    forward: Callable | None = None,
) -> Trace:
    """Route `ids` in windows of `context` tokens (one window per forward, batch 1, eval mode) and record
    every MoE layer's choices. `forward` runs the model (default: the model itself; e.g. its
    torch.compile wrapper); an autocast around the call is the caller's, named by `dtype` in the metadata."""
    layers = model.moe_layers
    if not layers:
        raise TraceError(f"{checkpoint}: the model has no MoE layer to trace")
    n_experts = expert_dims(model.cfg).n_routed_experts
    if n_experts > INT16_MAX:
        raise TraceError(f"{checkpoint}: {n_experts} experts per layer do not fit the trace's int16 expert ids")
    routers = {i: model.blocks[i].ffn.router for i in layers}
    token_choice = routers[layers[0]].token_choice
    ids_T = torch.as_tensor(ids, dtype=torch.long).flatten().cpu()
    device = next(model.parameters()).device
    run = forward if forward is not None else model  # not `forward or model`: a Module has no truth value
    seen: dict[int, tuple[torch.Tensor, ...]] = {}
    windows: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {i: [] for i in layers}
    hooks = [
        router.register_forward_hook(
            lambda module, args, out, i=i: seen.__setitem__(i, (out.token_idx, out.expert_idx, out.weight))
        )
        for i, router in routers.items()
    ]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(ids_T), context):
            window = ids_T[start : start + context].to(device).unsqueeze(0)
            seen.clear()
            run(window)
            for i in layers:
                windows[i].append(per_token_choices(*seen[i], window.shape[1], token_choice))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    width = max(experts.shape[1] for per_window in windows.values() for experts, _ in per_window)
    padded = {i: [pad_width(e, g, width) for e, g in windows[i]] for i in layers}
    meta = TraceMeta(checkpoint, dtype, step, n_experts, context, token_choice, tokenizer)
    return Trace(
        layers=list(layers),
        token_ids=ids_T.numpy().astype(np.int64),
        experts=np.stack([np.concatenate([e for e, _ in padded[i]]) for i in layers]),
        gates=np.stack([np.concatenate([g for _, g in padded[i]]) for i in layers]),
        meta=meta,
    )


def per_token_choices(
    token_idx_A: torch.Tensor, expert_idx_A: torch.Tensor, weight_A: torch.Tensor, n_tokens: int, token_choice: bool
) -> tuple[np.ndarray, np.ndarray]:
    """A router's flat assignments as per-token rows: experts [T, K] int16 and gates [T, K] float32, K the
    most experts any token got, shorter rows padded with NO_EXPERT / 0.

    Token choice lists every token's first choice, then every second (moe_lab.model.routers.base), so a
    stable sort by token keeps each token's choices in the router's order. Expert choice lists them
    expert by expert: they are put in descending gate (affinity) order first.
    """
    token_idx_A, expert_idx_A, weight_A = token_idx_A.cpu(), expert_idx_A.cpu(), weight_A.float().cpu()
    if not token_choice:
        by_gate_A = torch.argsort(weight_A, descending=True, stable=True)
        token_idx_A, expert_idx_A, weight_A = token_idx_A[by_gate_A], expert_idx_A[by_gate_A], weight_A[by_gate_A]
    order_A = torch.argsort(token_idx_A, stable=True)
    token_A = token_idx_A[order_A]
    counts_T = torch.bincount(token_A, minlength=n_tokens)
    slot_A = torch.arange(len(token_A)) - (counts_T.cumsum(0) - counts_T)[token_A]  # rank within its token
    width = int(counts_T.max()) if n_tokens else 0
    experts_TK = torch.full((n_tokens, width), NO_EXPERT, dtype=torch.int16)
    gates_TK = torch.zeros((n_tokens, width), dtype=torch.float32)
    experts_TK[token_A, slot_A] = expert_idx_A[order_A].to(torch.int16)
    gates_TK[token_A, slot_A] = weight_A[order_A]
    return experts_TK.numpy(), gates_TK.numpy()
