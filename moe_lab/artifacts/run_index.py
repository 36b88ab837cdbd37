"""Run reuse: a finished run stands in for any later run that would compute the same numbers.

A run is addressed by the content of what determines its numbers: the resolved experiment config less
where it writes (name, output_dir, version, resume, progress bar), the seed (in the config), the code
commit, the package versions and the torch thread count (CPU kernels split work by threads, so a
different count can change the last bits). Code with uncommitted changes has no address: it is never
reused nor offered for reuse, since two dirty checkouts at one commit may differ.

The index is a folder of `<key>.json` files, each naming the run directory of a completed run. A study
that finds its run there copies that directory (without checkpoints) into its own tree and writes
REUSED beside it, so the study's reports read it like any other run and say where it came from.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from moe_lab.artifacts.atomic import write_json_atomic
from moe_lab.artifacts.environment import CODE, package_versions
from moe_lab.artifacts.run_dir import CHECKPOINTS, METRICS

REUSED = "reused.json"  # in a reused run's directory: {"from": the original run directory, "key": ...}
# Where a run writes, not what it computes.
PLACEMENT_KEYS = ("name", "output_dir", "version")
TRAINER_PLACEMENT_KEYS = ("resume", "progress_bar")


def run_key(cfg: Any, code: dict | None = None) -> str | None:
    """The content address of the run `cfg` describes (an ExperimentConfig or its dict), or None when the
    code is not one clean commit. `code` defaults to this process's CodeRevision record."""
    code = CODE.record() if code is None else code
    if not code.get("commit") or code.get("dirty") is not False:
        return None
    tree = cfg if isinstance(cfg, dict) else OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    tree = {k: v for k, v in tree.items() if k not in PLACEMENT_KEYS}
    tree["trainer"] = {k: v for k, v in tree["trainer"].items() if k not in TRAINER_PLACEMENT_KEYS}
    content = {
        "config": tree,
        "commit": code["commit"],
        "packages": package_versions(),
        "threads": tree["trainer"].get("threads") or torch.get_num_threads(),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


class RunIndex:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def find(self, key: str | None) -> Path | None:
        """The directory of a completed run with this key, if the index has one that still exists."""
        if key is None or not (entry := self.root / f"{key}.json").is_file():
            return None
        try:
            run_dir = Path(json.loads(entry.read_text())["run_dir"])
            metrics = json.loads((run_dir / METRICS).read_text())
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a moved or half-written run is trained again
        return run_dir if metrics.get("status") == "completed" else None

    def record(self, key: str | None, run_dir: Path) -> None:
        """Offer a completed run for reuse (a reused run is not offered again: its original is)."""
        if key is None or (run_dir / REUSED).is_file():
            return
        write_json_atomic(self.root / f"{key}.json", {"run_dir": str(Path(run_dir).resolve())})

    @staticmethod
    def reuse(source: Path, run_dir: Path, key: str) -> dict:
        """Copy `source` (less its checkpoints) to `run_dir`, mark it reused; return its final metrics."""
        staging = run_dir.with_name(run_dir.name + ".reusing")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging, ignore=shutil.ignore_patterns(CHECKPOINTS, REUSED))
        write_json_atomic(staging / REUSED, {"from": str(source), "key": key})
        shutil.rmtree(run_dir, ignore_errors=True)  # an attempt that died before writing anything
        staging.replace(run_dir)
        return json.loads((run_dir / METRICS).read_text())


def reused_from(run_dir: Path) -> str | None:
    """Where a reused run came from (None for a run trained in place)."""
    path = Path(run_dir) / REUSED
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text())["from"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
