"""Fixed-length training examples cut from a flat token file."""

import numpy as np
import torch
from torch.utils.data import Dataset

from moe_lab.data.cache import TokenSplit
from moe_lab.errors import DataError


def check_block_fits(split: TokenSplit, block_size: int, what: str) -> None:
    """DataError unless `split` holds one training example: block_size + 1 tokens (x and its shifted y)."""
    if split.n_tokens < block_size + 1:
        raise DataError(
            f"{what} has {split.n_tokens} tokens but data.block_size={block_size} needs at least "
            f"{block_size + 1}; lower data.block_size or add text"
        )


class TokenBlocks(Dataset):
    """Non-overlapping windows of block_size + 1 tokens (stride block_size) over a memory-mapped split.

    Item i is (x, y) = (tokens[s : s + block_size], tokens[s + 1 : s + block_size + 1]) with
    s = i * block_size: y is the next-token target of every position of x. The extra token lets
    every window be a full training example; the last token of a window starts the next one.
    """

    def __init__(self, split: TokenSplit, block_size: int, name: str):
        check_block_fits(split, block_size, f"{name} split")
        self.split = split
        self.block_size = block_size
        self.n_blocks = (split.n_tokens - 1) // block_size
        self._tokens = None  # opened lazily, so each DataLoader worker maps the file itself

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = self.split.open()
        return self._tokens

    def __getstate__(self) -> dict:
        # A memmap does not travel to worker processes: send the path, reopen on first access.
        return {**self.__dict__, "_tokens": None}

    def __len__(self) -> int:
        return self.n_blocks

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.n_blocks:
            raise IndexError(f"block {index} out of range [0, {self.n_blocks})")
        start = index * self.block_size
        window = torch.from_numpy(self.tokens[start : start + self.block_size + 1].astype(np.int64))
        return window[:-1], window[1:]
