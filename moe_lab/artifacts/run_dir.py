"""The layout of one run directory (`<output_dir>/<name>/version_N/`, or a sweep trial's `seedS/`):
the file names every writer and reader of a run uses."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import IO

from moe_lab.artifacts.metrics import VOCABULARY, metrics_where
from moe_lab.errors import ConfigError

CONFIG = "config.yaml"  # the resolved ExperimentConfig
METRICS = "metrics.json"  # final metrics (RunMetrics) and status
ENV = "env.json"  # environment_record(): packages, threads, git revision, argv
TRAIN_LOG = "train.log"  # Lightning's own output of a sweep trial's run
CHECKPOINTS = "checkpoints"  # Lightning checkpoints: last.ckpt, best.ckpt
LAST_CKPT = "last.ckpt"
BEST_CKPT = "best.ckpt"
PREVIOUS_CKPT = "previous.ckpt"  # the last.ckpt before the newest: what a damaged last.ckpt falls back to
MODEL_SUMMARY = "model_summary.txt"  # parameter and FLOP accounting of the model (moe_lab.model.summary)
TOKENIZER_DIR = "tokenizer"  # the tokenizer in use (its file names: moe_lab.data.tokenizers)
PROGRESS = "progress.json"  # a running run's step, losses and throughput, for watchers outside the process
TRACES = "traces"  # routing traces, step_<N>.parquet (monitor.trace_every_n_steps; moe_lab.callbacks.routing_trace)
LOCK = ".lock"  # locked by the process that writes into the run directory (claim_run_dir)
RUN_DIR_ENV = "MOE_LAB_RUN_DIR"  # rank 0's run directory, for the ranks it launches (launching_rank_run_dir)
VERSION_PREFIX = "version_"  # <output_dir>/<name>/version_N: Lightning's run numbering


# ------------------------------------------------------------------------------------------- metrics
# A run's status in METRICS, and those of a run that is over for good (resuming it would train nothing).
COMPLETED, PRUNED, STOPPED, FAILED = "completed", "pruned", "stopped", "failed"
INTERRUPTED = "interrupted"  # a stop signal ended it at a step boundary, last.ckpt saved there: resume it
FINISHED_STATUSES = (COMPLETED, PRUNED)

# What a finished run reports in METRICS: how it ended, then one field per metric of the vocabulary
# (moe_lab.artifacts.metrics.VOCABULARY, each field's metadata["metric"] its Metric), then the run's totals
# and records. Every list of metric names in moe_lab is read from the vocabulary, so a metric is added
# or renamed there only.
RunMetrics = make_dataclass(
    "RunMetrics",
    [
        ("status", str, field(default=COMPLETED)),  # COMPLETED | PRUNED | STOPPED | FAILED | INTERRUPTED
        ("error", str | None, field(default=None)),
        ("steps", int, field(default=0)),
        *((m.name, float | None, field(default=None, metadata={"metric": m})) for m in VOCABULARY),
        # Totals over every part of a resumed run (each part up to the checkpoint the next resumed from).
        ("train_tokens", int | None, field(default=None)),
        ("train_seconds", float | None, field(default=None)),
        ("wall_time_s", float | None, field(default=None)),
        ("resumed_from_step", int | None, field(default=None)),
        ("this_part", dict | None, field(default=None)),  # the throughput figures of this part alone
        ("total_params", int | None, field(default=None)),
        ("active_params", float | None, field(default=None)),
        ("flops_per_token", float | None, field(default=None)),
        ("moe_layers", list | None, field(default=None)),
        ("collapse_events", list, field(default_factory=list)),
        ("prune_reason", str | None, field(default=None)),
    ],
)


def _names(flag: str) -> tuple[str, ...]:
    return tuple(m.name for m in metrics_where(flag))


OBJECTIVE_METRICS = _names("objective")
CLAIM_METRICS = _names("claim")
HPARAM_METRICS = _names("hparams")
METRIC_CURVES = {m.name: m.tag for m in VOCABULARY}


# -------------------------------------------------------------------------------- finding runs


def next_version(experiment_dir: Path) -> str:
    """version_<N+1> after the highest version_<N> in `experiment_dir` (Lightning's own numbering, decided
    here once so that every logger writes into the same run directory)."""
    numbers = [
        int(m.group(1))
        for d in Path(experiment_dir).glob(f"{VERSION_PREFIX}*")
        if (m := re.fullmatch(rf"{VERSION_PREFIX}(\d+)", d.name)) and d.is_dir()
    ]
    return f"{VERSION_PREFIX}{max(numbers) + 1 if numbers else 0}"


@dataclass
class RunDirClaim:
    """A run directory this process writes into, and the lock that says so (see claim_run_dir)."""

    path: Path
    made: bool  # this process created the directory
    lock: IO

    def release(self, remove_if_unused: bool = False) -> None:
        """Let the directory go; `remove_if_unused`: a run refused before writing anything leaves none."""
        if remove_if_unused and self.made and [p.name for p in self.path.iterdir()] == [LOCK]:
            (self.path / LOCK).unlink()
            self.path.rmdir()
        self.lock.close()  # closing the file drops the lock


def claim_run_dir(experiment_dir: Path, version: str | None) -> RunDirClaim:
    """The run directory, claimed for this process: made if missing, and locked (flock on its LOCK file,
    dropped by the OS when the process ends, however it ends). Two runs started together never share
    one: with `version` None the loser of a race takes the next free version_N; a version named by the
    user (or a sweep) that another live process holds is refused in one line. A directory that no live
    process holds may be continued (a resumed run, a retried sweep unit)."""
    experiment_dir.mkdir(parents=True, exist_ok=True)
    while True:
        path = experiment_dir / (version or next_version(experiment_dir))
        try:
            path.mkdir()
            made = True
        except FileExistsError:
            made = False
        lock = open(path / LOCK, "a")  # noqa: SIM115 - held open for the whole run
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return RunDirClaim(path, made, lock)
        except BlockingIOError:
            lock.close()
            if version:
                raise ConfigError(
                    "version", f"{path}: another run is writing into it now; pick another version or let it finish"
                ) from None


def latest_last_checkpoint(experiment_dir: Path) -> Path | None:
    """The most recently written last.ckpt of any run of the experiment."""
    found = sorted(Path(experiment_dir).glob(f"*/{CHECKPOINTS}/{LAST_CKPT}"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def resolve_resume(experiment_dir: Path, version: str, resume: str) -> tuple[str | None, Path | None]:
    """(run directory name to log into, checkpoint to resume from) for `trainer.resume` = "" (a fresh
    run), "auto" (the latest last.ckpt of the experiment, or of `version` when one is named) or a
    checkpoint path. A version of None: the caller numbers a new run."""
    experiment_dir = Path(experiment_dir)
    if resume == "":
        return version or None, None
    if resume != "auto":
        ckpt: Path | None = Path(resume)
    elif version:
        candidate = experiment_dir / version / CHECKPOINTS / LAST_CKPT
        ckpt = candidate if candidate.is_file() else None
    else:
        ckpt = latest_last_checkpoint(experiment_dir)
    if ckpt is None:
        return version or None, None  # nothing to resume: a fresh run
    # Keep logging into the run directory the checkpoint belongs to, when it is one of ours.
    run_dir = ckpt.parent.parent
    ours = run_dir.parent.resolve() == experiment_dir.resolve()
    return (run_dir.name if ours else (version or None)), ckpt


def launching_rank_run_dir() -> Path | None:
    """The run directory of the rank-0 process that started this one, or None.

    Lightning starts ranks 1.. of a one-host DDP run by running the same command again, with LOCAL_RANK set,
    in the environment rank 0's process has at that moment. Rank 0 names its claimed directory there
    (`shared_with_launched_ranks`), and those ranks train in it instead of claiming directories of their own
    (they write nothing there themselves: Lightning's checkpoints and loggers are rank 0's). Ranks that a
    launcher such as torchrun or SLURM starts never see it and claim their own, on their own hosts."""
    if os.environ.get("LOCAL_RANK", "0") == "0":
        return None
    value = os.environ.get(RUN_DIR_ENV)
    return Path(value) if value else None


@contextlib.contextmanager
def shared_with_launched_ranks(run_dir: Path) -> Iterator[None]:
    """Name `run_dir` to the ranks this process launches while the block runs; the environment as it was after."""
    previous = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous
