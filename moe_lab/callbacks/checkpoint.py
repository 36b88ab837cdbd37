"""Lightning's ModelCheckpoint, made safe against crashes and damaged files."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from moe_lab.artifacts.atomic import atomic_file
from moe_lab.artifacts.run_dir import PREVIOUS_CKPT


class SameFolderCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO writes a checkpoint whole into memory, then into a temporary file in
    $TMPDIR (fsspec's transaction), then moves it to its folder: a small $TMPDIR fails a run whose output
    folder has room, and a full disk leaves a partial copy behind. This one writes the same bytes straight
    into a temporary file beside the target (moe_lab.artifacts.atomic.atomic_file): nothing else to fill,
    removed on any failure, and a full disk is one line (DiskSpaceError)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:  # Lightning's own refusal, worded by Lightning
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_file(Path(path), "wb", needed=_storage_bytes(checkpoint)) as f:
            torch.save(checkpoint, f)  # to a file object, as Lightning to its buffer: the same bytes


def _storage_bytes(obj) -> int:
    """About what torch.save writes for `obj`: the bytes of each tensor storage in it, once."""
    storages, stack = {}, [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            storages[item.untyped_storage().data_ptr()] = item.untyped_storage().nbytes()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return sum(storages.values())


class RotatingCheckpoint(ModelCheckpoint):
    """ModelCheckpoint writing each file atomically (a temporary file in the same folder, then a
    rename), and with `keep_previous` moving the replaced last.ckpt to previous.ckpt: a crash, a full
    disk or a damaged file costs at most the steps since the checkpoint before. The trainer writes through
    SameFolderCheckpointIO (set up here unless another CheckpointIO was chosen): nothing staged in $TMPDIR.

    `trusted` says whether an existing last.ckpt may become previous.ckpt: one this run did not resume
    from (damaged, or left by another run in a reused version folder) is replaced, not kept."""

    def __init__(self, *args, keep_previous: bool = False, trusted: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.keep_previous = keep_previous
        self.trusted = trusted

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default; a chosen one stays
            trainer.strategy.checkpoint_io = SameFolderCheckpointIO()

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        path = Path(filepath)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # complete before last.ckpt moves aside
        try:
            super()._save_checkpoint(trainer, str(tmp))
            if trainer.is_global_zero:
                if self.keep_previous and self.trusted and path.is_file():
                    os.replace(path, path.with_name(PREVIOUS_CKPT))
                os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # what another CheckpointIO may have left
            raise
        trainer.strategy.barrier()
        self.trusted = True
        self._last_checkpoint_saved = filepath
