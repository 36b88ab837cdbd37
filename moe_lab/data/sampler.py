"""Training batch order: a fixed function of (seed, epoch), sharded over ranks, resumable mid-epoch.

Epoch e visits the blocks in the order of torch.randperm(n, seed + e). With W ranks, global batch k is
blocks perm[k*B*W : (k+1)*B*W] and rank r takes its r-th slice of B, so a DDP run sees exactly the
global batches of a single-process run with batch size B*W. A resumed run starts at the first batch
its checkpoint had not trained on, so the step-for-step data stream equals an uninterrupted run's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochBatchSampler(Sampler[list[int]]):
    def __init__(self, n_blocks: int, batch_size: int, seed: int):
        self.n_blocks, self.batch_size, self.seed = n_blocks, batch_size, seed
        self.epoch = 0  # epoch of the next __iter__
        self.skip_batches = 0  # batches of that epoch already trained on (resume)

    def __len__(self) -> int:
        _, world = _rank_and_world()
        # Keep every global batch full; a corpus smaller than one global batch still gives one batch.
        return max(1, self.n_blocks // (self.batch_size * world))

    def __iter__(self) -> Iterator[list[int]]:
        rank, world = _rank_and_world()
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n_blocks, generator=g).tolist()
        global_batch = self.batch_size * world
        start, self.skip_batches = self.skip_batches, 0
        self.epoch += 1
        for k in range(start, len(self)):
            chunk = order[k * global_batch : (k + 1) * global_batch]
            yield chunk[rank * self.batch_size : (rank + 1) * self.batch_size] or chunk[: self.batch_size]


class ResumableDataLoader(DataLoader):
    """A DataLoader Lightning can checkpoint: `state_dict` holds (epoch, batches trained this epoch).

    The position comes from `position_fn` (the trainer's progress counters), not from counting yielded
    batches: Lightning fetches one batch ahead, so the loader's own count would be off by one.
    """

    def __init__(self, *args, batch_sampler: EpochBatchSampler, position_fn: Callable[[], tuple[int, int]], **kwargs):
        super().__init__(*args, batch_sampler=batch_sampler, **kwargs)
        self.position_fn = position_fn

    def state_dict(self) -> dict:
        epoch, batches_done = self.position_fn()
        return {"epoch": int(epoch), "batches_done": int(batches_done)}

    def load_state_dict(self, state: dict) -> None:
        sampler: EpochBatchSampler = self.batch_sampler
        sampler.epoch = state["epoch"]
        sampler.skip_batches = state["batches_done"]
