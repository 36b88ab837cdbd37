"""Lightning's ModelCheckpoint, made safe against crashes and damaged files."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from moe_lab.artifacts.run_dir import PREVIOUS_CKPT


class RotatingCheckpoint(ModelCheckpoint):
    """ModelCheckpoint writing each file atomically (a temporary file in the same folder, then a
    rename), and with `keep_previous` moving the replaced last.ckpt to previous.ckpt: a crash, a full
    disk or a damaged file costs at most the steps since the checkpoint before.

    `trusted` says whether an existing last.ckpt may become previous.ckpt: one this run did not resume
    from (damaged, or left by another run in a reused version folder) is replaced, not kept."""

    def __init__(self, *args, keep_previous: bool = False, trusted: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.keep_previous = keep_previous
        self.trusted = trusted

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        path = Path(filepath)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        super()._save_checkpoint(trainer, str(tmp))
        if trainer.is_global_zero:
            if self.keep_previous and self.trusted and path.is_file():
                os.replace(path, path.with_name(PREVIOUS_CKPT))
            os.replace(tmp, path)
        trainer.strategy.barrier()
        self.trusted = True
        self._last_checkpoint_saved = filepath
