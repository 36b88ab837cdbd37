"""A routing trace: for a fixed list of tokens, the experts each MoE layer chose for every one of them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moe_lab.errors import MoELabError

NO_EXPERT = -1  # pads a token's expert list (expert choice: fewer experts chose it than the widest token's)


class TraceError(MoELabError):
    """A trace file that cannot be read, or two traces that cannot be compared."""


@dataclass(frozen=True)
class TraceMeta:
    """Where a trace came from; written into the trace file's metadata."""

    checkpoint: str  # the routed model: checkpoint path, model directory or run directory
    dtype: str  # the compute the model ran in: float32, bfloat16 autocast, a Lightning precision, ...
    step: int | None  # the optimizer step of the checkpoint, when known
    n_experts: int  # routed experts per MoE layer, after the granularity split
    context: int  # the tokens were routed in windows of this many, one window per forward
    token_choice: bool  # False: expert choice, where each token has the set of experts that chose it
    tokenizer: str = ""  # descriptor of the tokenizer the ids are from (moe_lab.data.tokenizers); "" unknown


@dataclass
class Trace:
    """Token t's choices in MoE layer layers[l] are experts[l, t] with gate weights gates[l, t].

    Token choice: the router's routed_top_k choices in the router's order (first choice first), K =
    routed_top_k. Expert choice has no per-token k: a token's row is the set of experts that picked it,
    highest affinity first, padded with NO_EXPERT (gate 0) to the widest row, K = that width. The choices
    are the router's, before any capacity drop in the dispatch.
    """

    layers: list[int]  # MoE layer indices
    token_ids: np.ndarray  # [T] int64
    experts: np.ndarray  # [L, T, K] int16, NO_EXPERT where a token has fewer than K experts
    gates: np.ndarray  # [L, T, K] float32, 0 where experts is NO_EXPERT
    meta: TraceMeta

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    def describe(self) -> str:
        """One line: what was traced and how."""
        meta = self.meta
        width = f"k={self.experts.shape[2]}" if meta.token_choice else f"up to {self.experts.shape[2]} experts/token"
        step = f" at step {meta.step}" if meta.step is not None else ""
        return (
            f"{self.n_tokens:,} tokens x {len(self.layers)} MoE layers ({meta.n_experts} experts, {width}), "
            f"{meta.checkpoint}{step}, {meta.dtype}, windows of {meta.context}"
        )


def pad_width(experts: np.ndarray, gates: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """[..., K] expert and gate arrays padded with NO_EXPERT / 0 on the right to [..., width]."""
    extra = width - experts.shape[-1]
    if extra <= 0:
        return experts, gates
    pad = [(0, 0)] * (experts.ndim - 1) + [(0, extra)]
    return np.pad(experts, pad, constant_values=NO_EXPERT), np.pad(gates, pad, constant_values=0.0)
