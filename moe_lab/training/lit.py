"""The LightningModule: LM loss + weighted router losses, AdamW with warmup + cosine, validation
metrics (loss, perplexity, bits per byte), routing statistics reduced across ranks, text samples."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchmetrics import MeanMetric

from moe_lab.artifacts.metrics import (
    TRAIN_AUX_LOSS,
    TRAIN_LM_LOSS,
    TRAIN_LOSS,
    TRAIN_LR,
    TRAIN_Z_LOSS,
    VAL_BPB,
    VAL_LOSS,
    VAL_PPL,
    layer_tag,
)
from moe_lab.config import ExperimentConfig, config_from_dict, to_dict, to_yaml
from moe_lab.model import MoETransformer, RoutingStats
from moe_lab.parallel.ep_training import ExpertParallelTraining, new_groups

LN2 = math.log(2.0)


def checkpoint_activations(blocks: nn.ModuleList) -> None:
    """Make each block recompute its forward during the backward instead of storing activations.

    The forward is replaced per instance, so parameter names and checkpoints are unchanged. Non-reentrant
    checkpointing returns the MoE output's extra tensors (router losses, statistics) as usual, and it
    restores the RNG state for the recomputation, so noisy routers route the same way twice.
    """
    for block in blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup to 1 over `warmup` steps, cosine decay to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def reduce_routing(routing: dict[int, RoutingStats], reduce: Callable[..., torch.Tensor]) -> dict[int, RoutingStats]:
    """Expert counts summed and scalar statistics averaged over ranks (`reduce`: the strategy's), so every
    rank (and every callback) sees the loads of the global batch. Two collectives per step, whatever the
    depth. Fields are matched by name: a field added to RoutingStats is averaged too."""
    layers = sorted(routing)
    names = RoutingStats.scalar_fields()
    counts = torch.stack([routing[i].expert_counts for i in layers])  # [L, E]
    # One collective for all scalars: stacking promotes them to the widest dtype among the fields.
    scalars = torch.stack([torch.stack([getattr(routing[i], name) for name in names]) for i in layers])  # [L, F]
    counts = reduce(counts, reduce_op="sum")
    scalars = reduce(scalars, reduce_op="mean")
    return {
        i: RoutingStats(expert_counts=counts[j], **dict(zip(names, scalars[j].unbind(), strict=True)))
        for j, i in enumerate(layers)
    }


class MoELitModule(pl.LightningModule):
    def __init__(self, config: ExperimentConfig | dict, val_bytes_per_token: float = 1.0):
        """config: the validated experiment; val_bytes_per_token converts nats/token to bits/byte.
        Every checkpoint holds the config as a plain dict (hyper_parameters.config), so a checkpoint
        alone rebuilds the model; Lightning's load_from_checkpoint passes that dict back here."""
        super().__init__()
        self.cfg = config_from_dict(config) if isinstance(config, dict) else config
        # logger=False: hyperparameters go to TensorBoard once, at the end, with the final metrics.
        self.save_hyperparameters(
            {"config": to_dict(self.cfg), "val_bytes_per_token": val_bytes_per_token}, logger=False
        )
        self.model = MoETransformer(self.cfg.model)
        self.val_bytes_per_token = val_bytes_per_token
        self.tokenizer = None  # set by the caller for text samples; not part of the checkpoint
        self.val_loss = MeanMetric()
        self._step_counts: dict[int, torch.Tensor] = {}  # expert loads of the optimiser step so far
        # The callable the steps run: the model, or its torch.compile wrapper. Set without registering it
        # as a submodule, or every checkpoint would hold each tensor twice (`model.*` and `_forward.*`).
        object.__setattr__(self, "_forward", self.model)
        if self.cfg.trainer.activation_checkpointing:
            checkpoint_activations(self.model.blocks)
        # Throughput is timed by the Throughput callback (moe_lab.callbacks.throughput).
        self._router_grad_step = -1  # global step of the last router-health measurement
        self.last_val: dict[str, float] = {}
        self.last_val_logged_step: int | None = None  # the logger step of last_val (see on_validation_epoch_end)
        self.expert_parallel: ExpertParallelTraining | None = None  # set in configure_model
        self._optimizer_states_to_shard: list[dict] = []  # a resumed checkpoint's, full stacks (on_load_checkpoint)

    def configure_model(self) -> None:
        # Called again by every fit/validate: the experts are sharded once, when the process group exists.
        ep_size = self.cfg.trainer.expert_parallel
        if ep_size > 1 and self.expert_parallel is None:
            self.expert_parallel = ExpertParallelTraining(self, new_groups(ep_size))
            # DDP (construction broadcast, gradient all-reduce) leaves the shards alone: they differ per rank.
            self._ddp_params_and_buffers_to_ignore = list(self.expert_parallel.shards)
        if self.cfg.trainer.compile and self._forward is self.model:
            if self.expert_parallel is not None:
                # The all-to-alls split the compiled model into several graphs whose backwards donate their
                # buffers, and the router-health backward (retain_graph=True) then fails; torch's own advice.
                torch._functorch.config.donated_buffer = False
            object.__setattr__(self, "_forward", torch.compile(self.model))

    # ------------------------------------------------------------------ training
    def on_train_start(self) -> None:
        # The config once per run, as one entry of TensorBoard's Text tab: by the part that starts at step 0
        # (a resumed part that changed a key records it in config.resume<n>.yaml).
        if self.global_step == 0:
            self._add_text("config", to_yaml(self.cfg))

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self._forward(x, y)
        loss = out.lm_loss + self.model.router_loss(out)
        routing = self._reduce_across_ranks(out.routing)
        for layer, stats in routing.items():
            self._step_counts[layer] = self._step_counts.get(layer, 0) + stats.expert_counts
        self.log(TRAIN_LOSS, loss, prog_bar=False)
        self.log(TRAIN_LM_LOSS, out.lm_loss, prog_bar=True)
        self.log(TRAIN_AUX_LOSS, out.aux_loss)
        self.log(TRAIN_Z_LOSS, out.z_loss)
        # Both parameter groups (with and without weight decay) follow one schedule: one curve.
        self.log(TRAIN_LR, self.trainer.optimizers[0].param_groups[0]["lr"])
        result = {"loss": loss, "routing": routing}
        if self._router_grad_due():
            result["router_lm_grad"] = self.router_lm_grad_norms(out.lm_loss)
        return result

    def _router_grad_due(self) -> bool:
        every = self.cfg.monitor.router_grad_every_n_steps
        if not every or not self.model.moe_layers or self.global_step % every:
            return False
        # Once per optimizer step: the first micro-batch of a gradient-accumulation step measures.
        due = self._router_grad_step != self.global_step
        self._router_grad_step = self.global_step
        return due

    def router_lm_grad_norms(self, lm_loss: torch.Tensor) -> dict[int, float]:
        """Per MoE layer, ||d(LM loss)/d(router weights)||: the aux and z losses are left out, so a router
        that only they train (a renormalised top-1 gate is constant 1.0) reads ~0. Costs one partial
        backward (activation gradients, no weight gradients but the routers'); the graph is kept for
        the real backward that follows."""
        gates = self.model.router_gate_weights()
        grads = torch.autograd.grad(lm_loss, list(gates.values()), retain_graph=True, allow_unused=True)
        norms = {layer: 0.0 if g is None else float(g.norm()) for layer, g in zip(gates, grads, strict=True)}
        # Straight to the loggers: measured every n steps, these would miss Lightning's own
        # log_every_n_steps cadence whenever the two are not aligned.
        if self.global_rank == 0:
            for logger in self.loggers:
                logger.log_metrics(
                    {layer_tag(layer, "router_lm_grad_norm"): norm for layer, norm in norms.items()},
                    step=self.global_step,
                )
        return norms

    def _reduce_across_ranks(self, routing: dict[int, RoutingStats]) -> dict[int, RoutingStats]:
        if self.trainer.world_size == 1 or not routing:
            return routing
        return reduce_routing(routing, self.trainer.strategy.reduce)

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        # Loss-free balancing (DeepSeek-V3): bias moves after the optimiser step, from that step's
        # global token counts; identical on every rank because the counts were all-reduced.
        self.model.update_router_biases(self._step_counts)
        self._step_counts = {}

    def on_before_optimizer_step(self, optimizer) -> None:
        # Once per optimizer step, after the last micro-batch's backward and before clipping (the callbacks'
        # own on_before_optimizer_step run earlier: they see the shards' gradients unreduced).
        if self.expert_parallel is not None:
            self.expert_parallel.reduce_gradients()

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if self.expert_parallel is None or not gradient_clip_val:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        # By the norm of the whole model's gradient, not of this rank's shards (the config clips by norm only).
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.expert_parallel.clip_grad_norm_(params, gradient_clip_val)

    def on_save_checkpoint(self, checkpoint):
        # Checkpoints hold the single-device layout whatever the EP size: full expert stacks, gathered on
        # every rank (a collective; Lightning dumps a checkpoint on every rank, rank 0 writes it).
        if self.expert_parallel is not None:
            self.expert_parallel.gather_state_dict(checkpoint["state_dict"])
            for optimizer, saved in zip(self.trainer.optimizers, checkpoint.get("optimizer_states", []), strict=False):
                self.expert_parallel.gather_optimizer_state(optimizer, saved)

    def on_load_checkpoint(self, checkpoint):
        # Checkpoints written before `_forward` stopped being a submodule hold a second copy of the weights.
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("_forward.")]:
            del state[key]
        if self.expert_parallel is not None:  # called before Lightning loads the weights
            self.expert_parallel.shard_state_dict(state)
            # The optimizer state is loaded from this dict once the optimizer exists (after on_fit_start).
            self._optimizer_states_to_shard = checkpoint.get("optimizer_states", [])

    def on_fit_start(self) -> None:
        if self._optimizer_states_to_shard:  # a resumed checkpoint's (weights-only ones have none)
            for optimizer, saved in zip(self.trainer.optimizers, self._optimizer_states_to_shard, strict=True):
                self.expert_parallel.shard_optimizer_state(optimizer, saved)
        self._optimizer_states_to_shard = []

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            # Weight decay on matrices only: not on norms, biases or embeddings (nor a head tied to them).
            (no_decay if p.ndim < 2 or name.startswith("embed.") else decay).append(p)
        o = self.cfg.optim
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr,
            betas=(o.beta1, o.beta2),
            eps=o.eps,
        )
        total = self.cfg.trainer.max_steps
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, o.warmup_steps, total, o.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self._forward(x, y)
        self.val_loss.update(out.lm_loss, weight=x.numel())

    def on_validation_epoch_end(self):
        loss = self.val_loss.compute()  # synchronised over ranks by torchmetrics
        self.val_loss.reset()
        bpb = loss / LN2 / self.val_bytes_per_token
        metrics = {VAL_LOSS: loss, VAL_PPL: torch.exp(loss), VAL_BPB: bpb}
        self.log_dict(metrics, sync_dist=False)
        self.last_val = {k: float(v) for k, v in metrics.items()} | {"step": int(self.global_step)}
        # Lightning plots a validation inside fit at the step of the training batch it follows (global_step - 1),
        # one run after fit at global_step; the run's final metrics are logged at the same step.
        fitting = self.trainer.state.fn == TrainerFn.FITTING
        self.last_val_logged_step = int(self.global_step) - 1 if fitting else int(self.global_step)
        self._log_sample()

    def _log_sample(self) -> None:
        m = self.cfg.monitor
        # Decided alike on every rank: under expert parallelism each rank takes part in every forward of its
        # EP group (the all-to-alls), so all ranks generate and rank 0 writes.
        if self.tokenizer is None or m.sample_tokens == 0 or not self._tensorboard_loggers():
            return
        if self.global_rank != 0 and self.expert_parallel is None:
            return
        prompt = torch.tensor([self.tokenizer.encode(m.sample_prompt)], device=self.device)
        # A generator of its own: sampling must not move the global RNG that training draws from.
        generator = torch.Generator(device=self.device).manual_seed(self.cfg.seed + self.global_step)
        ids = self.model.generate(prompt, m.sample_tokens, temperature=0.8, sample_top_k=50, generator=generator)
        self._add_text("samples", self.tokenizer.decode(ids[0].tolist()))

    def _add_text(self, tag: str, text: str) -> None:
        """`text` as an entry of TensorBoard's Text tab at this step (the other loggers have no such tab)."""
        if self.global_rank != 0:
            return
        for logger in self._tensorboard_loggers():
            # TensorBoard renders Markdown: indent by four spaces so line breaks survive.
            logger.experiment.add_text(tag, "    " + text.replace("\n", "\n    "), self.global_step)

    def _tensorboard_loggers(self) -> list[TensorBoardLogger]:
        return [logger for logger in self.loggers if isinstance(logger, TensorBoardLogger)]
