"""An ablation's prerequisite runs (moe_lab.sweep.prerequisites) checked before anything runs, counted by the
dry run, and trained before the arms' trials: seed by seed, one run at a time in the process that opened the
study, with its threads (the workers that train the arms start after them)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from moe_lab.artifacts.run_dir import CHECKPOINTS, COMPLETED, LAST_CKPT, METRICS, TRAIN_LOG
from moe_lab.config import ExperimentConfig
from moe_lab.errors import ConfigError, MoELabError
from moe_lab.sweep.config import Sweep, merged_values
from moe_lab.sweep.prerequisites import REFERENCE


def experiment(sweep: Sweep, name: str, seed: int | None = None, resume: bool = False) -> ExperimentConfig:
    """The validated experiment of prerequisite `name` for `seed` (None: as planned, where it writes unset):
    the base with the sweep's overrides, then the prerequisite's, and what the sweep sets in every run it
    trains; `resume`: continue from the run directory's last checkpoint. Compute matching resizes arms,
    never a prerequisite: it trains as written."""
    placement = None
    if seed is not None:
        placement = sweep.placement(sweep.prerequisites.root / name, seed)
        if resume:
            placement["trainer"] = {"resume": "auto"}
    return sweep.source.extended(sweep.prerequisites.runs[name]).config(merged_values(sweep.run_values(), placement))


def check(sweep: Sweep) -> None:
    """Every prerequisite must be a valid experiment (its planned experiment is recorded for the arms to be
    validated against); ConfigError naming it otherwise."""
    for name in sweep.prerequisites.runs:
        try:
            sweep.prerequisites.planned[name] = experiment(sweep, name)
        except MoELabError as err:
            raise ConfigError(f"prerequisites.{name}", f"invalid experiment: {err}") from None


def completed(run_dir: Path) -> bool:
    """Whether the run completed: only a completed run is one to start from (a pruned one stopped early)."""
    try:
        return json.loads((run_dir / METRICS).read_text()).get("status") == COMPLETED
    except (OSError, ValueError, AttributeError):
        return False


def train(sweep: Sweep, log: Callable[[str], None] = print) -> None:
    """Train every prerequisite run not completed yet, seed by seed. A completed run is kept as it is; an
    interrupted or failed one continues from its last checkpoint when it saved one; one that another process
    is training is waited for (a lock per run), then kept. A run that ends other than completed stops the
    ablation (MoELabError): no arm can start from it."""
    from filelock import FileLock

    from moe_lab.training.run import run  # Lightning: only in processes that train

    pre = sweep.prerequisites
    runs = [(name, seed) for seed in sweep.cfg.seeds for name in pre.runs]
    done = sum(completed(pre.run_dir(name, seed)) for name, seed in runs)
    rest = "" if done == len(runs) else "; the others train now, one at a time, before the arms"
    log(f"prerequisites: {done} of {len(runs)} runs completed in {pre.root}{rest}")
    for name, seed in runs:
        run_dir, what = pre.run_dir(name, seed), f"prerequisite {name} seed {seed}"
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(run_dir.parent / f".{run_dir.name}.lock")):
            if completed(run_dir):
                continue
            resume = (run_dir / CHECKPOINTS / LAST_CKPT).is_file()
            cfg = experiment(sweep, name, seed, resume)
            log(f"{what}: {'resuming' if resume else 'training'} to step {cfg.trainer.max_steps}")
            start = time.time()
            record = run(cfg, quiet=True).record
        if record.status != COMPLETED:
            raise MoELabError(
                f"prerequisites.{name}: the run of seed {seed} ended {record.status}"
                + (f" ({record.error})" if record.error else "")
                + f"; no arm can start from it (see {run_dir / TRAIN_LOG})"
            )
        log(f"{what}: completed in {time.time() - start:.0f} s, val_loss {record.val_loss:.4f}")


def plan(sweep: Sweep, times_of: Callable) -> tuple[list[str], float]:
    """The dry run's rows of the prerequisite runs, and the seconds those not completed take one after another
    at this process's threads, as `train` runs them. `times_of(cfg, threads, concurrent)`: the dry run's step times."""
    import torch

    from moe_lab.model.accounting import count_model
    from moe_lab.sweep.estimate import run_seconds

    pre, seeds = sweep.prerequisites, sweep.cfg.seeds
    rows, seconds = [], 0.0
    for name, cfg in pre.planned.items():
        left = [s for s in seeds if not completed(pre.run_dir(name, s))]
        each = run_seconds(cfg, times_of(cfg, torch.get_num_threads(), 1))
        seconds += each * len(left)
        counts = count_model(cfg.model, cfg.data.block_size)
        done = f" ({len(seeds) - len(left)} of {len(seeds)} done)" if left != seeds else ""
        rows.append(
            f"  pre  {REFERENCE + name:<28} active {counts.total_active_params / 1e6:6.2f}M  "
            f"total {counts.total_params / 1e6:6.2f}M  {each:5.0f} s/run x {len(left)} "
            f"seed{'s' * (len(left) != 1)}{done}, before the arms"
        )
    return rows, seconds
