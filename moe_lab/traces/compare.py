"""Routing consistency between two traces of the same tokens: how many tokens keep their experts.

consistency = 1 - (share of tokens whose top-k expert SET changed): the order of a token's choices and
its gate weights do not count, only which experts it goes to. top-1 agreement: the share of tokens
whose first choice is the same (for expert choice, the expert with the highest affinity among those
that picked the token). Both per MoE layer; overall is the mean over the layers (every layer routes
the same tokens, so it is also the share over all (layer, token) pairs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moe_lab.traces.trace import Trace, TraceError, pad_width


@dataclass
class Consistency:
    layers: list[int]
    consistency: np.ndarray  # [L] share of tokens whose expert set is unchanged
    top1_agreement: np.ndarray  # [L] share of tokens whose first choice is unchanged
    n_tokens: int

    @property
    def overall(self) -> float:
        return float(self.consistency.mean())

    @property
    def overall_top1(self) -> float:
        return float(self.top1_agreement.mean())


def check_comparable(a: Trace, b: Trace) -> None:
    """Raise TraceError unless a and b routed the same tokens, in the same windows, through the same layers."""
    if a.n_tokens != b.n_tokens or not np.array_equal(a.token_ids, b.token_ids):
        raise TraceError(
            f"the traces are over different tokens ({a.n_tokens:,} tokens from {a.meta.checkpoint}, "
            f"{b.n_tokens:,} from {b.meta.checkpoint}); trace both on the same text"
        )
    if a.layers != b.layers or a.meta.n_experts != b.meta.n_experts:
        raise TraceError(
            f"the traces are of different models: MoE layers {a.layers} with {a.meta.n_experts} experts "
            f"vs {b.layers} with {b.meta.n_experts}"
        )
    if a.meta.context != b.meta.context:
        raise TraceError(
            f"the traces routed the tokens in windows of {a.meta.context} and {b.meta.context} tokens; "
            f"the routing depends on the window, so they cannot be compared"
        )


def compare_traces(a: Trace, b: Trace) -> Consistency:
    check_comparable(a, b)
    width = max(a.experts.shape[2], b.experts.shape[2])
    experts_a, _ = pad_width(a.experts, a.gates, width)
    experts_b, _ = pad_width(b.experts, b.gates, width)
    # Sorted rows are equal exactly when the sets are: each row holds distinct experts plus NO_EXPERT padding.
    same_set_LT = (np.sort(experts_a, axis=-1) == np.sort(experts_b, axis=-1)).all(axis=-1)
    same_first_LT = experts_a[..., 0] == experts_b[..., 0]
    return Consistency(
        layers=list(a.layers),
        consistency=same_set_LT.mean(axis=-1),
        top1_agreement=same_first_LT.mean(axis=-1),
        n_tokens=a.n_tokens,
    )


def format_consistency(result: Consistency) -> str:
    lines = [
        f"routing consistency over {result.n_tokens:,} tokens "
        "(share whose top-k expert set is unchanged; top-1: whose first choice is)",
        f"{'layer':>5}{'consistency':>13}{'top-1':>8}",
    ]
    for row, layer in enumerate(result.layers):
        lines.append(f"{layer:>5}{result.consistency[row]:>13.4f}{result.top1_agreement[row]:>8.4f}")
    lines.append(f"{'all':>5}{result.overall:>13.4f}{result.overall_top1:>8.4f}")
    return "\n".join(lines)
