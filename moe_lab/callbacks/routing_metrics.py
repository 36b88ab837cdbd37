"""Load-balance metrics on expert token counts, plus the micro-batch accumulator the callbacks share.

Everything here is plain numpy/torch, no Lightning, so reports and notebooks can recompute any logged
number from saved counts. Functions take counts of shape [E] or [L, E] and reduce over the last axis
(experts). Counts are token *assignments* (a top-k router gives each token k of them).

A balanced router has load fraction 1/E everywhere: load_cv 0, max_over_uniform 1, no dead experts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch


def _counts(counts) -> np.ndarray:
    return np.asarray(counts, dtype=np.float64)


def load_fractions(counts) -> np.ndarray:
    """Fraction of assignments each expert received; rows sum to 1 (NaN when no token was routed)."""
    c = _counts(counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return c / c.sum(axis=-1, keepdims=True)


def load_cv(counts) -> np.ndarray | float:
    """Coefficient of variation of the load: population std / mean over experts.

    The Switch Transformer load-balancing loss (Fedus et al. 2021, eq. 4) is minimised by CV 0.
    """
    c = _counts(counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _scalar(c.std(axis=-1) / c.mean(axis=-1))


def max_over_uniform(counts) -> np.ndarray | float:
    """Busiest expert's load over the mean load: how far capacity must stretch to drop nothing."""
    c = _counts(counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _scalar(c.max(axis=-1) / c.mean(axis=-1))


def dead_experts(counts) -> np.ndarray | int:
    """Number of experts that received no token at all."""
    dead = (_counts(counts) == 0).sum(axis=-1)
    return int(dead) if np.ndim(dead) == 0 else dead


def token_spread(counts) -> tuple:
    """(min, max, population std) of tokens per expert."""
    c = _counts(counts)
    return _scalar(c.min(axis=-1)), _scalar(c.max(axis=-1)), _scalar(c.std(axis=-1))


def normalised_entropy(entropy, n_experts: int) -> np.ndarray | float:
    """Router entropy in nats divided by its maximum ln(E): 1 = uniform gates, 0 = one-hot gates.

    NaN for a single expert, where the ratio is 0/0 (and no threshold on it can ever fire).
    """
    if n_experts < 2:
        return _scalar(np.full(np.shape(entropy), np.nan))
    return _scalar(np.asarray(entropy, dtype=np.float64) / math.log(n_experts))


def starved_experts(counts, min_load_fraction: float) -> np.ndarray:
    """Boolean mask [..., E]: experts whose load is below min_load_fraction x uniform load (1/E)."""
    frac = load_fractions(counts)
    return frac < min_load_fraction / frac.shape[-1]


def routing_from_outputs(outputs) -> Mapping[int, object]:
    """The `routing` entry of a training_step output (layer -> RoutingStats); empty for a dense model."""
    routing = outputs.get("routing") if isinstance(outputs, Mapping) else None
    return routing or {}


def _scalar(x):
    x = np.asarray(x)
    return float(x) if x.ndim == 0 else x


@dataclass
class LayerTotals:
    """One layer's routing over some micro-batches: counts summed, scalar stats averaged."""

    counts: np.ndarray  # [E] float64, assignments per expert, summed over micro-batches
    dropped_frac: float  # mean over micro-batches
    entropy: float  # mean over micro-batches, nats
    n_micro: int  # micro-batches summed

    @property
    def n_experts(self) -> int:
        return self.counts.shape[-1]


class RoutingAccumulator:
    """Sums `RoutingStats` of successive micro-batches per layer, on the device they live on.

    Adding is asynchronous (no host sync); `pop` moves everything to the host in one transfer per
    layer and starts a new window. Counts are summed in float32 on the device: exact up to 2**24
    assignments per expert per window, and a relative error near 1e-7 beyond, harmless for fractions.
    """

    def __init__(self):
        self._sums: dict[int, torch.Tensor] = {}  # layer -> [E + 2]: counts, dropped_frac, entropy
        self._n: dict[int, int] = {}

    def __bool__(self) -> bool:
        return bool(self._n)

    def add(self, routing: Mapping[int, object]) -> None:
        """routing: layer index -> RoutingStats (anything with the same fields)."""
        for layer, s in routing.items():
            counts = s.expert_counts.detach().float().reshape(-1)
            scalars = torch.stack([s.dropped_frac.float().reshape(()), s.entropy.float().reshape(())])
            row = torch.cat([counts, scalars.to(counts.device)])
            layer = int(layer)
            # .to() is a no-op except after load_state_dict, which restores sums on the CPU.
            self._sums[layer] = row if layer not in self._sums else self._sums[layer].to(row.device) + row
            self._n[layer] = self._n.get(layer, 0) + 1

    def totals(self) -> dict[int, LayerTotals]:
        """Totals per layer (sorted by layer) since the last pop."""
        out = {}
        for layer in sorted(self._sums):
            row, n = self._sums[layer].detach().cpu().double().numpy(), self._n[layer]
            out[layer] = LayerTotals(
                counts=row[:-2], dropped_frac=float(row[-2] / n), entropy=float(row[-1] / n), n_micro=n
            )
        return out

    def pop(self) -> dict[int, LayerTotals]:
        """Totals per layer since the last pop, and start afresh."""
        out = self.totals()
        self._sums, self._n = {}, {}
        return out

    def state_dict(self) -> dict:
        return {"sums": {k: v.detach().cpu().tolist() for k, v in self._sums.items()}, "n": dict(self._n)}

    def load_state_dict(self, state: dict) -> None:
        self._sums = {int(k): torch.tensor(v, dtype=torch.float32) for k, v in state["sums"].items()}
        self._n = {int(k): int(v) for k, v in state["n"].items()}
