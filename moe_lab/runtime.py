"""Process-level settings shared by the command-line entry points (train, sweep, bench)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from pathlib import Path

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process heap instead of handing it back to the OS.

    By default glibc serves every allocation above a few MB with a fresh mmap and unmaps it on free,
    so each activation tensor of a training step pays page faults on first touch; in a VM that made
    element-wise ops over [8192, 512] tensors 3-5x slower than the arithmetic (measured with
    `python -m moe_lab.bench moe`). This is the same cure as running under jemalloc/tcmalloc.
    Returns whether the settings were applied (glibc on Linux only; elsewhere a no-op).
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
# (message regex, category, why)
KNOWN_HARMLESS_WARNINGS = (
    # Lightning 2.6 builds torch's LeafSpec, deprecated in torch 2.10+; nothing for us to change.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # We claim trials under a lock and run Optuna's heartbeat thread ourselves (moe_lab.sweep.runner).
    (r"Heartbeat of storage is supposed to be used with Study\.optimize", UserWarning),
)


def filter_known_harmless_warnings() -> None:
    import warnings

    for message, category in KNOWN_HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


@contextlib.contextmanager
def lightning_output_to(path: Path):
    """Lightning's console lines (device summary, its tips, "`Trainer.fit` stopped") and the warnings raised
    meanwhile go to the file `path` (appended) instead of the console: a sweep trains many runs, each with
    its log."""
    import logging

    handler = logging.FileHandler(path, encoding="utf-8")
    try:
        with _lightning_output_to_handler(handler):
            yield
    finally:
        handler.close()


@contextlib.contextmanager
def lightning_output_captured():
    """As lightning_output_to, into a string buffer (yielded): for what Lightning prints before the run
    directory that will hold its log may be created."""
    import io
    import logging

    buffer = io.StringIO()
    with _lightning_output_to_handler(logging.StreamHandler(buffer)):
        yield buffer


@contextlib.contextmanager
def _lightning_output_to_handler(handler):
    import logging
    import warnings

    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    saved = [(lg.handlers[:], lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [handler], False
    with warnings.catch_warnings():  # restores showwarning on exit
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: \
            handler.stream.write(warnings.formatwarning(message, category, filename, lineno, line))
        try:
            yield
        finally:
            for lg, (handlers, propagate) in zip(loggers, saved):
                lg.handlers, lg.propagate = handlers, propagate
