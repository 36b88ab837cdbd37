"""ExpertCollapseDetector: notice starved experts, a collapsed or a dead router early; warn, stop or prune.

Checked once per optimizer step, on the step's routing (micro-batches of gradient accumulation summed).
The stats are already reduced across DDP ranks, so every rank reaches the same decision without a
collective of its own; one host sync per step moves the per-layer counts to the CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from moe_lab.artifacts.metrics import COLLAPSE_EVENTS
from moe_lab.callbacks.expert_load import tensorboard_writers
from moe_lab.callbacks.routing_metrics import (
    RoutingAccumulator,
    load_fractions,
    normalised_entropy,
    routing_from_outputs,
    starved_experts,
)
from moe_lab.checks import whole_at_least
from moe_lab.config import check_collapse_settings

# A collapse event as it fired, one record type per kind. Field order is the order of the keys in the
# dicts of metrics.json and of the checkpoint (dataclasses.asdict): step, layer, expert, kind, value.
# What a kind fixes (its name; no expert but for starved_expert) is init=False: not passed, still recorded.


@dataclass(frozen=True)
class StarvedExpert:
    step: int
    layer: int
    expert: int
    kind: str = field(default="starved_expert", init=False)
    load: float  # the expert's load fraction at the firing step


@dataclass(frozen=True)
class LowEntropy:
    step: int
    layer: int
    expert: None = field(default=None, init=False)
    kind: str = field(default="low_entropy", init=False)
    entropy_norm: float  # the layer's normalised router entropy at the firing step


@dataclass(frozen=True)
class DeadRouter:
    step: int
    layer: int
    expert: None = field(default=None, init=False)
    kind: str = field(default="dead_router", init=False)
    grad_norm: float  # the router's LM-loss gradient norm measured at the firing step


CollapseEvent = StarvedExpert | LowEntropy | DeadRouter
EVENT_TYPES = {cls.kind: cls for cls in (StarvedExpert, LowEntropy, DeadRouter)}


def event_from_dict(record: dict) -> CollapseEvent:
    """The event an asdict() record describes (as held in checkpoints)."""
    cls = EVENT_TYPES[record["kind"]]
    return cls(**{f.name: record[f.name] for f in fields(cls) if f.init})


class ExpertCollapseDetector(Callback):
    """Detects three kinds of collapse, each held for `patience_steps` consecutive optimizer steps:

    - "starved_expert": an expert's load fraction is below `min_load_fraction` x uniform load (1/E);
    - "low_entropy": a layer's normalised router entropy (mean per-token entropy / ln E) is below
      `min_entropy_norm` (0 disables this check);
    - "dead_router": the norm of the LM loss's gradient on a layer's router weights, measured by the
      LightningModule every few steps (`router_lm_grad` in the training_step output), stays at or below
      `dead_router_max_grad_norm` (None disables): the router is trained by the aux/z losses alone, as a
      renormalised top-1 gate is. A streak spans the steps from its first such measurement.

    Steps before `check_from_step` (global_step counts completed optimizer steps, from 1) are ignored,
    so warm-up routing noise cannot start a streak. Each (layer, expert, kind) fires once and appends to
    `events` its record (StarvedExpert, LowEntropy or DeadRouter) holding the value at the firing step.
    On firing: `rank_zero_warn`, a TensorBoard text entry `moe/collapse`, and per `action`: "warn" nothing
    more; "stop" sets `trainer.should_stop`; "prune" also sets `prune_reason` (the first event's
    description) for a sweep to mark the trial pruned.
    `moe/collapse_events` (running count) is logged every step.
    """

    def __init__(
        self,
        min_load_fraction: float = 0.1,
        patience_steps: int = 100,
        min_entropy_norm: float = 0.0,
        action: str = "warn",
        check_from_step: int = 0,
        dead_router_max_grad_norm: float | None = None,
    ):
        check_collapse_settings(min_load_fraction, min_entropy_norm, action)
        whole_at_least("patience_steps", patience_steps, 1)
        whole_at_least("check_from_step", check_from_step, 0)
        self.min_load_fraction = float(min_load_fraction)
        self.patience_steps = patience_steps
        self.min_entropy_norm = float(min_entropy_norm)
        self.action = action
        self.check_from_step = check_from_step
        self.dead_router_max_grad_norm = dead_router_max_grad_norm
        self._dead_router_since: dict[int, int] = {}  # layer -> first step of its current dead streak
        self._router_grad: dict[int, float] = {}  # this optimizer step's measurement, if any
        self.events: list[CollapseEvent] = []
        self.prune_reason: str | None = None
        self._starved_run: dict[int, np.ndarray] = {}  # layer -> [E] consecutive starved steps
        self._low_entropy_run: dict[int, int] = {}  # layer -> consecutive low-entropy steps
        self._step = RoutingAccumulator()
        self._steps_before_batch = 0

    # ---- Lightning hooks ----

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._steps_before_batch = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._step.add(routing_from_outputs(outputs))
        if isinstance(outputs, dict) and outputs.get("router_lm_grad"):
            self._router_grad = dict(outputs["router_lm_grad"])
        if trainer.global_step == self._steps_before_batch or not self._step:
            return  # a micro-batch of a gradient-accumulation step, or a dense model
        totals, step = self._step.pop(), trainer.global_step
        router_grad, self._router_grad = self._router_grad, {}
        if step >= self.check_from_step:
            new = []
            for layer, t in totals.items():
                new += self._check_load(step, layer, t.counts)
                new += self._check_entropy(step, layer, normalised_entropy(t.entropy, t.n_experts))
            for layer, norm in router_grad.items():
                new += self._check_router_grad(step, layer, norm)
            for event in new:
                self._fire(trainer, event)
        pl_module.log(COLLAPSE_EVENTS, float(len(self.events)))

    # ---- checks: update streaks, return the events that reached patience now ----

    def _check_load(self, step: int, layer: int, counts: np.ndarray) -> list[CollapseEvent]:
        starved = starved_experts(counts, self.min_load_fraction)
        run = self._starved_run.get(layer, np.zeros(len(counts), dtype=np.int64))
        run = np.where(starved, run + 1, 0)
        self._starved_run[layer] = run
        frac = load_fractions(counts)
        return [
            StarvedExpert(step, layer, int(j), load=float(frac[j]))
            for j in np.flatnonzero(run >= self.patience_steps)
            if not self._fired(layer, int(j), "starved_expert")
        ]

    def _check_entropy(self, step: int, layer: int, entropy_norm: float) -> list[CollapseEvent]:
        if self.min_entropy_norm <= 0.0:
            return []
        low = entropy_norm < self.min_entropy_norm
        run = (self._low_entropy_run.get(layer, 0) + 1) if low else 0
        self._low_entropy_run[layer] = run
        if run < self.patience_steps or self._fired(layer, None, "low_entropy"):
            return []
        return [LowEntropy(step, layer, entropy_norm=float(entropy_norm))]

    def _check_router_grad(self, step: int, layer: int, grad_norm: float) -> list[CollapseEvent]:
        if self.dead_router_max_grad_norm is None:
            return []
        if grad_norm > self.dead_router_max_grad_norm:
            self._dead_router_since.pop(layer, None)
            return []
        since = self._dead_router_since.setdefault(layer, step)
        if step - since + 1 < self.patience_steps or self._fired(layer, None, "dead_router"):
            return []
        return [DeadRouter(step, layer, grad_norm=grad_norm)]

    def _fired(self, layer: int, expert: int | None, kind: str) -> bool:
        return any((e.layer, e.expert, e.kind) == (layer, expert, kind) for e in self.events)

    # ---- reacting ----

    def describe(self, event: CollapseEvent) -> str:
        """One human-readable line, e.g. 'expert 3 of layer 1 below 10% of uniform load for 100 steps
        (step 250)'."""
        if isinstance(event, StarvedExpert):
            what = f"expert {event.expert} of layer {event.layer} below {self.min_load_fraction:.0%} of uniform load"
        elif isinstance(event, DeadRouter):
            what = (
                f"router of layer {event.layer} gets no gradient from the LM loss "
                f"(norm <= {self.dead_router_max_grad_norm:g})"
            )
        else:
            what = f"router entropy of layer {event.layer} below {self.min_entropy_norm:g} x ln(E)"
        return f"{what} for {self.patience_steps} steps (step {event.step})"

    def _fire(self, trainer, event: CollapseEvent) -> None:
        self.events.append(event)
        message = self.describe(event)
        rank_zero_warn(f"expert collapse: {message}")
        self._write_text(trainer, message, event.step)
        if self.action in ("stop", "prune"):
            trainer.should_stop = True
        if self.action == "prune" and self.prune_reason is None:
            self.prune_reason = message

    @staticmethod
    @rank_zero_only
    def _write_text(trainer, message: str, step: int) -> None:
        for writer in tensorboard_writers(trainer):
            writer.add_text("moe/collapse", message, global_step=step - 1)

    # ---- checkpointing: a resumed run continues streaks and keeps its events ----

    def state_dict(self) -> dict:
        return {
            "events": [asdict(e) for e in self.events],  # plain dicts: checkpoints load with weights_only
            "prune_reason": self.prune_reason,
            "starved_run": {layer: run.tolist() for layer, run in self._starved_run.items()},
            "low_entropy_run": dict(self._low_entropy_run),
            "dead_router_since": dict(self._dead_router_since),
            "pending": self._step.state_dict(),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.events = [event_from_dict(e) for e in state_dict["events"]]
        self.prune_reason = state_dict["prune_reason"]
        self._starved_run = {int(k): np.asarray(v, dtype=np.int64) for k, v in state_dict["starved_run"].items()}
        self._low_entropy_run = {int(k): int(v) for k, v in state_dict["low_entropy_run"].items()}
        # Checkpoints written before the dead-router check have no such entry.
        self._dead_router_since = {int(k): int(v) for k, v in state_dict.get("dead_router_since", {}).items()}
        self._step.load_state_dict(state_dict["pending"])
