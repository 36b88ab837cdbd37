"""What every command-line entry point shares: errors for people, Ctrl-C, process settings.

Each `python -m moe_lab.X` parses its arguments, then hands its work to `run_main`:

- a `MoELabError` (bad config, bad data, a refused checkpoint) prints `error: <message>` on one line of
  stderr and exits 2, no traceback (an error class may name another code in `exit_code`);
- a stop signal (SIGTERM, SIGINT = Ctrl-C, SIGUSR1: moe_lab.signals, handled by the entry points that train)
  ends the work at a safe point with what resuming needs saved, prints the command's own hint (how to resume)
  and exits 128 + the signal's number, the shell's code for it: 143 SIGTERM, 130 SIGINT, 138 SIGUSR1 (Linux);
  never 0, so that a scheduler does not count the job as done;
- the CPU allocator keeps freed memory in the process (`tune_cpu_allocator`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import signal
import sys
from collections.abc import Callable

from moe_lab import signals
from moe_lab.errors import Interrupted, MoELabError
from moe_lab.redact import redact

EXIT_ERROR = 2  # a MoELabError: the input is at fault, not the code


def signal_exit_code(signum: int) -> int:
    """The exit code of a process a signal ended, as the shell reports it: 128 + the signal's number."""
    return 128 + int(signum)


EXIT_INTERRUPTED = signal_exit_code(signal.SIGINT)  # 130: Ctrl-C
EXIT_TERMINATED = signal_exit_code(signal.SIGTERM)  # 143: a scheduler's preemption or time limit
EXIT_USR1 = signal_exit_code(signal.SIGUSR1)  # 138 on Linux: SLURM's warning before the time limit

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def run_main(
    body: Callable[[], int | None],
    interrupted: str | Callable[[Interrupted], str] = "interrupted",
    tune_allocator: bool = True,
    stop_signals: bool = False,
) -> int:
    """Run an entry point's `body` and turn its outcome into an exit code (None counts as 0).
    `stop_signals`: handle SIGTERM, SIGINT and SIGUSR1 as moe_lab.signals says (the entry points that train).
    `interrupted`: what to print when a stop signal or Ctrl-C ends the body (how to resume), or a function of
    the Interrupted that says it; nothing when empty."""
    if tune_allocator:
        tune_cpu_allocator()
    try:
        with signals.handled() if stop_signals else contextlib.nullcontext():
            return body() or 0
    except MoELabError as err:
        print(f"error: {redact(str(err))}", file=sys.stderr)
        return getattr(err, "exit_code", EXIT_ERROR)
    except (Interrupted, KeyboardInterrupt) as err:
        stop = err if isinstance(err, Interrupted) else Interrupted(signal.SIGINT)
        message = interrupted(stop) if callable(interrupted) else interrupted
        if message:
            print(message, file=sys.stderr, flush=True)
        return signal_exit_code(stop.signum)


@functools.cache
def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process heap instead of handing it back to the OS.

    By default glibc serves every allocation above a few MB with a fresh mmap and unmaps it on free,
    so each activation tensor of a training step pays page faults on first touch; in a VM that made
    element-wise ops over [8192, 512] tensors 3-5x slower than the arithmetic (measured with
    `python -m moe_lab.bench moe`). This is the same cure as running under jemalloc/tcmalloc.
    Returns whether the settings were applied (glibc on Linux only; elsewhere a no-op). Applied once
    per process; later calls return the first call's answer.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)  # glibc's maximum on 64-bit
    ok &= mallopt(_M_TRIM_THRESHOLD, 1024 * 1024 * 1024)
    ok &= mallopt(_M_TOP_PAD, 64 * 1024 * 1024)
    return bool(ok)


# Warnings known to be harmless in our use, silenced by exact message and category (nothing else is):
# (message regex, category)
KNOWN_HARMLESS_WARNINGS = (
    # Lightning 2.6 builds torch's LeafSpec, deprecated in torch 2.10+; nothing for us to change.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # We claim trials under a lock and run Optuna's heartbeat thread ourselves (moe_lab.sweep.claims).
    (r"Heartbeat of storage is supposed to be used with Study\.optimize", UserWarning),
    # Under DDP: the validation metrics come from a torchmetrics mean that is already synchronised over the
    # ranks before it is logged (MoELitModule.on_validation_epoch_end); sync_dist would reduce it twice.
    (r"It is recommended to use `self\.log\('val/\w+', \.\.\., sync_dist=True\)`", UserWarning),
    # A run directory is claimed by one run only (artifacts.run_dir), so a non-empty checkpoint folder is
    # that run's own, met again when it resumes.
    (r"Checkpoint directory .* exists and is not empty", UserWarning),
)


def filter_known_harmless_warnings() -> None:
    import warnings

    for message, category in KNOWN_HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
