"""What a run records about the machine and code it ran on: Python, platform, packages, torch
settings, the git revision of the code the process loaded and command line (the run directory's env.json)."""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from moe_lab.redact import redact_all

PACKAGES = (
    "moe-lab",
    "torch",
    "lightning",
    "optuna",
    "datasets",
    "tokenizers",
    "omegaconf",
    "numpy",
    "tensorboard",
    "transformers",
)


def _git(args: list[str], where: Path) -> str:
    return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=10, check=True).stdout


def git_state(where: Path) -> dict:
    """The checkout's commit, whether tracked files differ from it, and a hash of that difference."""
    try:
        diff = _git(["diff", "HEAD", "--no-ext-diff", "--binary"], where)
        return {
            "commit": _git(["rev-parse", "HEAD"], where).strip(),
            "dirty": bool(diff),
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
        }
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "diff_sha256": None}


class CodeRevision:
    """The git state of the code a process runs. Read once when the process loads moe_lab, not when a
    run starts: a sweep worker keeps the code it imported while commits and edits go on in the checkout
    (runs of one ablation once recorded five different commits, none of them the code that ran). A run
    records the state at start; if the checkout changed since, the run is marked dirty, since the
    process may have imported modules from either state."""

    def __init__(self, where: Path):
        self.where = where
        self.at_start = git_state(where)

    def record(self) -> dict:
        now = git_state(self.where)
        start = self.at_start
        changed = start["commit"] is not None and (
            now["commit"] != start["commit"] or now["diff_sha256"] != start["diff_sha256"]
        )
        dirty = None if start["dirty"] is None else bool(start["dirty"] or changed)
        return {"commit": start["commit"], "dirty": dirty, "changed_since_start": changed}


CODE = CodeRevision(Path(__file__).resolve().parent)


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment_record(**extra) -> dict:
    """What a run ran on, credentials in it masked (moe_lab.redact: a storage URL on the command line)."""
    return redact_all(
        {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "packages": package_versions(),
            "torch": {
                "threads": torch.get_num_threads(),
                "cuda_available": torch.cuda.is_available(),
                "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            },
            "git": CODE.record(),
            "argv": sys.argv,
            **extra,
        }
    )
