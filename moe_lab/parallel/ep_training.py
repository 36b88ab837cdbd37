"""What a data-parallel trainer needs besides the sharded layer to train with expert parallelism: the
process groups, the expert shards' gradient reduction, the gradient norm over all shards, and checkpoints
in the single-device layout. Plain `torch.distributed`; the Lightning hooks that call it are in
`moe_lab.training.lit`.

The trainer's data parallelism (Lightning's DDP) keeps averaging the replicated parameters' gradients over
all W ranks and is told to leave the expert shards alone: their values differ from rank to rank. The
shards' gradients are reduced here so that every parameter's gradient is DDP's: the mean over the W ranks
of the gradients of their own losses.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import ProcessGroup

from moe_lab.parallel.expert_parallel import ExpertParallelExperts, gather_experts, parallelize_experts


@dataclass(frozen=True)
class ExpertParallelGroups:
    ep_size: int  # N: ranks sharing one copy of the experts, E / N experts each
    world_size: int  # W: all data-parallel ranks
    ep: ProcessGroup  # my N consecutive ranks: tokens travel between them
    replicas: ProcessGroup  # the W / N ranks holding my shard (same position in their EP group)


def new_groups(ep_size: int) -> ExpertParallelGroups:
    """EP groups of `ep_size` consecutive ranks and the orthogonal groups of shard replicas. Every rank
    creates every group in the same order (torch.distributed's rule for `new_group`)."""
    world = dist.get_world_size()
    if world % ep_size:
        raise ValueError(f"expert parallelism: {ep_size} ranks per EP group do not divide the {world} ranks")
    ep, _ = dist.new_subgroups_by_enumeration([list(range(s, s + ep_size)) for s in range(0, world, ep_size)])
    replicas, _ = dist.new_subgroups_by_enumeration([list(range(i, world, ep_size)) for i in range(ep_size)])
    return ExpertParallelGroups(ep_size=ep_size, world_size=world, ep=ep, replicas=replicas)


class ExpertParallelTraining:
    """The expert shards of `module` (every MoE layer sharded over `groups.ep` by the constructor, in place),
    named as in `module.state_dict()`, and the collectives their training needs."""

    def __init__(self, module: nn.Module, groups: ExpertParallelGroups):
        self.groups = groups
        parallelize_experts(module, groups.ep)
        self.shards: dict[str, nn.Parameter] = {
            f"{prefix}.{name}": param
            for prefix, sub in module.named_modules()
            if isinstance(sub, ExpertParallelExperts)
            for name, param in sub.named_parameters()
        }

    @torch.no_grad()
    def reduce_gradients(self) -> None:
        """Each shard's gradient as DDP makes a replicated one: the mean over all W ranks' losses.

        The backward's all-to-all already summed, into the shard, the gradient of every token its EP group
        sent it (those of the N ranks' losses); the sum over the replicas adds the other EP groups' tokens,
        so it is the sum over all W ranks' losses, and DDP's mean divides that by W (not by the replicas).
        One collective for all shards. A shard no token reached has no gradient yet: zeros take part."""
        params = list(self.shards.values())
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        flat = torch.cat([param.grad.reshape(-1) for param in params])
        if dist.get_world_size(self.groups.replicas) > 1:
            dist.all_reduce(flat, group=self.groups.replicas)
        flat /= self.groups.world_size
        for param, grad in zip(params, flat.split([param.numel() for param in params]), strict=True):
            param.grad.copy_(grad.view_as(param))

    @torch.no_grad()
    def clip_grad_norm_(self, params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
        """`torch.nn.utils.clip_grad_norm_` over the whole model: the replicated gradients (equal on every
        rank after DDP) once, plus every expert shard of the EP group once (the EP groups hold equal
        copies after `reduce_gradients`). Returns the total norm before clipping, equal on every rank."""
        params = [p for p in params if p.grad is not None]
        shard_ids = {id(p) for p in self.shards.values()}
        replicated = [p.grad for p in params if id(p) not in shard_ids]
        sharded = [p.grad for p in params if id(p) in shard_ids]
        sharded_sq = torch.nn.utils.get_total_norm(sharded).pow(2) if sharded else torch.zeros(())
        sharded_sq = sharded_sq.to(params[0].device)
        dist.all_reduce(sharded_sq, group=self.groups.ep)
        replicated_sq = torch.nn.utils.get_total_norm(replicated).pow(2) if replicated else 0.0
        total = (replicated_sq + sharded_sq).sqrt()
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        return total

    # ---------------------------------------------------------------- checkpoints: single-device layout

    def gather_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace, in `state`, each shard by the full [E, ...] stack of its EP group (a collective)."""
        for name in self.shards:
            state[name] = gather_experts(state[name], self.groups.ep)

    def shard_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace, in `state`, each full [E, ...] stack by this rank's rows of it."""
        for name, param in self.shards.items():
            state[name] = self._my_rows(state[name], param, name)

    def gather_optimizer_state(self, optimizer: torch.optim.Optimizer, saved: dict) -> None:
        """In `saved` (`optimizer.state_dict()`), each shard's per-element state (Adam's moments: tensors of
        the shard's shape) by the full stacks; scalars (`step`) stay. New entries, never edited in place:
        the saved entries are the optimizer's live state."""
        for index, param in self._optimizer_indices(optimizer):
            entry = saved["state"].get(index)
            if entry is None:  # before the first step: no state on any rank
                continue
            saved["state"][index] = {
                key: gather_experts(value, self.groups.ep) if _per_element(value, param) else value
                for key, value in sorted(entry.items())  # the same collectives in the same order on every rank
            }

    def shard_optimizer_state(self, optimizer: torch.optim.Optimizer, saved: dict) -> None:
        """The reverse of `gather_optimizer_state`, on a loaded state: this rank's rows of each full stack."""
        for index, param in self._optimizer_indices(optimizer):
            entry = saved["state"].get(index)
            if entry is None:
                continue
            name = f"optimizer state of {self._name_of(param)}"
            saved["state"][index] = {
                key: self._my_rows(value, param, name) if isinstance(value, torch.Tensor) and value.ndim else value
                for key, value in entry.items()
            }

    def _optimizer_indices(self, optimizer: torch.optim.Optimizer) -> list[tuple[int, nn.Parameter]]:
        """(index in `optimizer.state_dict()["state"]`, shard) pairs: state dicts number the parameters in
        param-group order, and sharding keeps every parameter's place, so the numbers do not depend on N."""
        shard_ids = {id(p) for p in self.shards.values()}
        flat = [p for group in optimizer.param_groups for p in group["params"]]
        return [(index, p) for index, p in enumerate(flat) if id(p) in shard_ids]

    def _name_of(self, param: nn.Parameter) -> str:
        return next(name for name, p in self.shards.items() if p is param)

    def _my_rows(self, full: torch.Tensor, shard: nn.Parameter, name: str) -> torch.Tensor:
        n_local, n_ranks = shard.shape[0], self.groups.ep_size
        if full.shape[1:] != shard.shape[1:] or full.shape[0] != n_local * n_ranks:
            raise ValueError(
                f"{name}: expected the full stack [{n_local * n_ranks}, ...] of {n_ranks} shards of shape "
                f"{list(shard.shape)}, got {list(full.shape)}"
            )
        rank = dist.get_rank(self.groups.ep)
        return full[rank * n_local : (rank + 1) * n_local].clone()


def _per_element(value, param: nn.Parameter) -> bool:
    return isinstance(value, torch.Tensor) and value.shape == param.shape
