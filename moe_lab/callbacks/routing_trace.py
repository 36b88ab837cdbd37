"""RoutingTraceMonitor: every n optimizer steps, at validation, a routing trace of a fixed evaluation set.

The evaluation set is the first validation batch (its first rows, at most `max_tokens` tokens), fixed for
the run: the validation blocks and their order never change (moe_lab.data.datamodule). Each trace is
written to RUN/traces/step_<N>.parquet (moe_lab.traces.store). Against the previous trace it logs the
routing consistency per MoE layer, `moe/layer{i}/routing_consistency` and `moe/layer{i}/top1_agreement`,
and their means over the layers (ROUTING_CONSISTENCY_MEAN, TOP1_AGREEMENT_MEAN); TensorBoard also gets
the token-class specialisation as one image per layer, `moe/layer{i}/specialisation`.

The model runs as validation runs it: eval mode, under the trainer's precision (bf16-mixed autocasts),
each sequence of the batch one window. Every rank traces (with expert parallelism the forward exchanges
tokens between ranks); rank 0 writes and draws. A resumed run takes the newest trace on disk from before
its step as the previous one.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from lightning.pytorch import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

from moe_lab.artifacts.metrics import ROUTING_CONSISTENCY_MEAN, TOP1_AGREEMENT_MEAN, layer_tag
from moe_lab.artifacts.run_dir import TRACES
from moe_lab.callbacks.expert_load import tensorboard_writers
from moe_lab.checks import whole_at_least
from moe_lab.traces.capture import capture_trace
from moe_lab.traces.compare import Consistency, compare_traces
from moe_lab.traces.specialisation import class_expert_shares, specialisation_figure, token_classes
from moe_lab.traces.store import read_trace, write_trace
from moe_lab.traces.trace import Trace, TraceError

TRACE_MAX_TOKENS = 8192  # the evaluation set: this many tokens of the first validation batch at most
TRACE_FILE = "step_{step}.parquet"
TRACE_FILE_PATTERN = re.compile(r"step_(\d+)\.parquet")


def trace_path(traces_dir: Path, step: int) -> Path:
    return traces_dir / TRACE_FILE.format(step=step)


def consistency_metrics(result: Consistency) -> dict[str, float]:
    metrics = {}
    for row, layer in enumerate(result.layers):
        metrics[layer_tag(layer, "routing_consistency")] = float(result.consistency[row])
        metrics[layer_tag(layer, "top1_agreement")] = float(result.top1_agreement[row])
    return metrics | {ROUTING_CONSISTENCY_MEAN: result.overall, TOP1_AGREEMENT_MEAN: result.overall_top1}


class RoutingTraceMonitor(Callback):
    def __init__(self, run_dir: Path, every_n_steps: int, max_tokens: int = TRACE_MAX_TOKENS):
        whole_at_least("trace_every_n_steps", every_n_steps, 1)
        whole_at_least("max_tokens", max_tokens, 1)
        self.traces_dir = Path(run_dir) / TRACES
        self.every_n_steps = every_n_steps
        self.max_tokens = max_tokens
        self._tokens: torch.Tensor | None = None  # [N, S] the evaluation set, on the CPU
        self._previous: Trace | None = None

    # ---- Lightning hooks ----

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self._tokens is None and batch_idx == 0:
            x = batch[0]  # [B, S]
            self._tokens = x[: max(1, self.max_tokens // x.shape[1])].detach().cpu()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        step = trainer.global_step
        if trainer.sanity_checking or self._tokens is None or not pl_module.model.moe_layers:
            return
        if self._previous is None:
            self._previous = self.trace_on_disk_before(step)
        last = self._previous.meta.step if self._previous is not None else 0
        if step // self.every_n_steps <= last // self.every_n_steps:
            return  # no multiple of every_n_steps since the last trace
        trace = self.capture(trainer, pl_module)
        tb_step = step - 1 if trainer.state.fn == TrainerFn.FITTING else step  # where this validation is plotted
        if trainer.is_global_zero:
            write_trace(trace, trace_path(self.traces_dir, step))
            self.draw_specialisation(trainer, pl_module, trace, tb_step)
        if self._previous is not None:
            self.log_consistency(trainer, pl_module, trace, tb_step)
        self._previous = trace

    # ---- internals ----

    def capture(self, trainer, pl_module) -> Trace:
        tokenizer = pl_module.tokenizer
        with trainer.precision_plugin.forward_context():
            return capture_trace(
                pl_module.model,
                self._tokens.flatten(),
                self._tokens.shape[1],
                checkpoint=str(self.traces_dir.parent),
                step=trainer.global_step,
                dtype=str(trainer.precision),
                tokenizer=tokenizer.descriptor if tokenizer is not None else "",
            )

    def trace_on_disk_before(self, step: int) -> Trace | None:
        """The newest RUN/traces/step_<N>.parquet with N < step (a resumed run's last trace), or None."""
        steps = [
            int(m[1]) for p in self.traces_dir.glob("step_*.parquet") if (m := TRACE_FILE_PATTERN.fullmatch(p.name))
        ]
        earlier = [s for s in steps if s < step]
        if not earlier:
            return None
        try:
            return read_trace(trace_path(self.traces_dir, max(earlier)))
        except TraceError as err:
            rank_zero_warn(f"routing trace: {err}; the next trace starts afresh")
            return None

    def log_consistency(self, trainer, pl_module, trace: Trace, tb_step: int) -> None:
        try:
            result = compare_traces(self._previous, trace)
        except TraceError as err:  # e.g. resumed with other validation data than the trace on disk
            rank_zero_warn(f"routing trace at step {trace.meta.step}: not compared with the previous one: {err}")
            return
        metrics = consistency_metrics(result)
        pl_module.log_dict(metrics, logger=False)  # trainer.callback_metrics: the run's final metrics read them
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=tb_step)

    def draw_specialisation(self, trainer, pl_module, trace: Trace, tb_step: int) -> None:
        writers = tensorboard_writers(trainer)
        if not writers:
            return
        tokenizer = pl_module.tokenizer
        classes = token_classes(trace.token_ids, tokenizer.decode if tokenizer is not None else None)
        shares_LCE = class_expert_shares(trace, classes)
        for writer in writers:
            for row, layer in enumerate(trace.layers):
                title = f"layer {layer}, step {trace.meta.step}: expert share by token class"
                fig = specialisation_figure(shares_LCE[row], classes.names, title)
                writer.add_figure(layer_tag(layer, "specialisation"), fig, global_step=tb_step, close=True)
