"""Does the routing survive a change of numerics? One model traced in float32 and under bfloat16
autocast, and compiled against eager, on the same tokens; the answer is their routing consistency.

bfloat16 runs under torch.autocast, as training with precision bf16-mixed does: the router logits stay in
float32 (moe_lab.model.routers.base), so what moves the choices is the bf16 computation of the hidden
states that reach the router. A token whose top-k and (k+1)-th logits are nearly tied may flip expert;
a low consistency says routing decisions sit on such ties, i.e. a model trained in one precision may
route differently when served in another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from moe_lab.errors import first_line
from moe_lab.model import MoETransformer
from moe_lab.traces.capture import capture_trace
from moe_lab.traces.compare import Consistency, compare_traces
from moe_lab.traces.trace import Trace


@dataclass
class NumericsCheck:
    label: str  # what was compared with what
    consistency: Consistency | None  # None: the check could not run
    note: str = ""  # why it did not run


def numerics_checks(
    model: MoETransformer,
    ids: Sequence[int] | torch.Tensor,
    context: int,
    checkpoint: str,
    with_compile: bool = True,
    reference: Trace | None = None,
) -> list[NumericsCheck]:
    """bf16 autocast vs fp32, then (`with_compile`) torch.compile vs eager, both in fp32. The model must hold
    float32 weights; `reference`: its float32 eager trace of these ids and windows, when already taken."""
    reference = reference or capture_trace(model, ids, context, checkpoint=checkpoint)
    bf16 = compare_traces(reference, bf16_trace(model, ids, context, checkpoint))
    checks = [NumericsCheck("bfloat16 autocast vs float32", bf16)]
    if with_compile:
        checks.append(compiled_check(model, ids, context, checkpoint, reference))
    return checks


def bf16_trace(model: MoETransformer, ids, context: int, checkpoint: str) -> Trace:
    device = next(model.parameters()).device.type
    with torch.autocast(device, dtype=torch.bfloat16):
        return capture_trace(model, ids, context, checkpoint=checkpoint, dtype="bfloat16 autocast")


def compiled_check(model: MoETransformer, ids, context: int, checkpoint: str, eager: Trace) -> NumericsCheck:
    """torch.compile (inductor) needs a working compiler toolchain: any failure skips the check with its reason."""
    label = "torch.compile vs eager (float32)"
    try:
        compiled = torch.compile(model)
        trace = capture_trace(model, ids, context, checkpoint=checkpoint, dtype="float32 compiled", forward=compiled)
    except Exception as err:  # dynamo and inductor raise many kinds, compiler errors included
        return NumericsCheck(label, None, f"skipped: torch.compile failed here: {first_line(err, 200)}")
    return NumericsCheck(label, compare_traces(eager, trace))


def format_numerics(checks: list[NumericsCheck]) -> str:
    lines = [f"{'numerics':<36}{'consistency':>13}{'top-1':>8}   per layer"]
    for check in checks:
        c = check.consistency
        if c is None:
            lines.append(f"{check.label:<36}{check.note}")
            continue
        per_layer = " ".join(f"{layer}:{value:.4f}" for layer, value in zip(c.layers, c.consistency, strict=True))
        lines.append(f"{check.label:<36}{c.overall:>13.4f}{c.overall_top1:>8.4f}   {per_layer}")
    return "\n".join(lines)
