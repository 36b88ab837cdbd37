"""What every command-line entry point shares: errors for people, Ctrl-C, process settings.

Each `python -m moe_lab.X` parses its arguments, then hands its work to `run_main`:

- a `MoELabError` (bad config, bad data, a refused checkpoint) prints `error: <message>` on one line of
  stderr and exits 2, no traceback (an error class may name another code in `exit_code`);
- Ctrl-C prints the command's own hint (how to resume) and exits 130, the shell's code for SIGINT;
- the CPU allocator keeps freed memory in the process (`tune_cpu_allocator`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable

from moe_lab.errors import MoELabError

EXIT_ERROR = 2  # a MoELabError: the input is at fault, not the code
EXIT_INTERRUPTED = 130  # 128 + SIGINT

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def run_main(body: Callable[[], int | None], interrupted: str = "interrupted", tune_allocator: bool = True) -> int:
    """Run an entry point's `body` and turn its outcome into an exit code (None counts as 0)."""
    if tune_allocator:
        tune_cpu_allocator()
    try:
        return body() or 0
    except MoELabError as err:
        print(f"error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", EXIT_ERROR)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED


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
)


def filter_known_harmless_warnings() -> None:
    import warnings

    for message, category in KNOWN_HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
