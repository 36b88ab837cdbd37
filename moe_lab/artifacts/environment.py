"""What a run records about the machine and code it ran on: Python, platform, packages, torch
settings, git revision and command line (the run directory's env.json)."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

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


def git_revision(cwd: Path | None = None) -> dict:
    """The commit of the moe_lab checkout in use, and whether it had uncommitted changes."""
    where = cwd or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return {"commit": rev, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment_record(**extra) -> dict:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "torch": {
            "threads": torch.get_num_threads(),
            "cuda_available": torch.cuda.is_available(),
            "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        },
        "git": git_revision(),
        "argv": sys.argv,
        **extra,
    }
