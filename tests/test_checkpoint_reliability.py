"""Checkpoints facing what goes wrong on disk: a full disk is one line naming the folder and leaves every
older checkpoint as it was and no temporary file behind; a small or missing $TMPDIR does not matter, as a
checkpoint is staged beside its target; the bytes written are the ones Lightning's own writer gives.

Driven through a real Trainer and RotatingCheckpoint, and the training CLI for the exit code and console.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.demos.boring_classes import BoringModel

from moe_lab.artifacts import atomic
from moe_lab.callbacks.checkpoint import RotatingCheckpoint, SameFolderCheckpointIO
from moe_lab.errors import DiskSpaceError, MoELabError
from tests.helpers import write_tiny_experiment

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def fit(root: Path, steps: int) -> Path:
    """A few steps of Lightning's BoringModel with a run's last-checkpoint callback (last.ckpt and
    previous.ckpt, one each step); returns the checkpoint folder."""
    folder = root / "checkpoints"
    last = RotatingCheckpoint(
        dirpath=folder, save_top_k=0, save_last=True, every_n_train_steps=1, keep_previous=True, trusted=True
    )
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[last],
        default_root_dir=root,
    )
    trainer.fit(BoringModel())
    return folder


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def save_that_fills_the_disk(obj, f, *args, **kwargs):
    f.write(b"\0" * 4096)  # part of the checkpoint reaches the file, then the disk is full
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_is_one_line_and_keeps_every_older_checkpoint(tmp_path, monkeypatch):
    folder = fit(tmp_path, steps=2)
    (folder / "best.ckpt").write_bytes((folder / "last.ckpt").read_bytes())  # as a run's best callback leaves it
    before = folder_bytes(folder)
    assert sorted(before) == ["best.ckpt", "last.ckpt", "previous.ckpt"]

    monkeypatch.setattr(torch, "save", save_that_fills_the_disk)
    with pytest.raises(DiskSpaceError) as err:
        fit(tmp_path, steps=2)
    assert isinstance(err.value, MoELabError)  # reaches the CLI's one-line handler, not wrapped by Lightning
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{folder}: "), message
    assert re.search(r" \(about [\d.]+ (bytes|kB|MB) to write, [\d.]+ [kMG]B free\)$", message), message
    assert folder_bytes(folder) == before  # no temporary file left, nothing older touched


@pytest.mark.parametrize("tmpdir", ["missing", "read-only"])
def test_checkpoint_is_staged_beside_its_target_not_in_tmpdir(tmp_path, monkeypatch, tmpdir):
    unusable = tmp_path / "tmpdir"
    if tmpdir == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes in a read-only folder")
        unusable.mkdir(mode=0o500)
    monkeypatch.setattr(tempfile, "tempdir", str(unusable))  # what $TMPDIR set tempfile.gettempdir() to
    folder = fit(tmp_path / "run", steps=2)
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "previous.ckpt"]
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 2
    assert torch.load(folder / "previous.ckpt", weights_only=True)["global_step"] == 1


def test_same_bytes_as_lightnings_own_writer(tmp_path):
    folder = fit(tmp_path, steps=2)
    checkpoint = torch.load(folder / "last.ckpt", weights_only=True)
    TorchCheckpointIO().save_checkpoint(checkpoint, tmp_path / "lightning.ckpt")
    SameFolderCheckpointIO().save_checkpoint(checkpoint, tmp_path / "ours.ckpt")
    assert (tmp_path / "ours.ckpt").read_bytes() == (tmp_path / "lightning.ckpt").read_bytes()
    assert (tmp_path / "ours.ckpt").stat().st_mode == (tmp_path / "lightning.ckpt").stat().st_mode


FULL_DISK_AT_CHECKPOINT = textwrap.dedent("""
    import errno, os, sys
    import torch
    from moe_lab.train import main

    def save(obj, f, *args, **kwargs):
        f.write(b"\\0" * 4096)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    torch.save = save
    sys.exit(main(sys.argv[1:]))
""")


def test_training_cli_says_a_full_disk_in_one_line(tmp_path):
    exp = write_tiny_experiment(tmp_path / "tiny.yaml", tmp_path / "cache", steps=2)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    args = [sys.executable, "-c", FULL_DISK_AT_CHECKPOINT, str(exp), f"output_dir={tmp_path / 'runs'}"]
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    folder = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and errors[0].startswith(f"error: {folder}: No space left on device"), result.stderr
    assert result.stderr.strip().endswith(errors[0])  # the last word; Lightning's device lines come before it
    assert "Traceback" not in result.stderr + result.stdout
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_run_record_on_a_full_disk_keeps_the_old_one_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    (tmp_path / "metrics.json").write_text('{"val_loss": 1.5}\n')

    def dump_that_fills_the_disk(data, f, **kwargs):
        f.write('{"val_loss": ')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.json, "dump", dump_that_fills_the_disk)
    written = re.escape(f"{tmp_path}: No space left on device (about 18 bytes to write, ")  # the old file's size
    with pytest.raises(DiskSpaceError, match=f"^{written}[\\d.]+ [kMG]B free\\)$"):
        atomic.write_json_atomic(tmp_path / "metrics.json", {"val_loss": 1.0})
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    assert (tmp_path / "metrics.json").read_text() == '{"val_loss": 1.5}\n'
