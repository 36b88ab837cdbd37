"""Stopping on a signal without losing anything.

SIGTERM (a scheduler preempting a job or ending it at its time limit), SIGINT (Ctrl-C) and SIGUSR1 (SLURM's
warning ahead of the time limit, `#SBATCH --signal=USR1@90`) all ask the process to stop and keep what it has.
While `handled()` is in force, the first of them
- inside `deferred()` (a run's training, a sweep worker) is only recorded, and the code that deferred it stops at
  its next safe point: training at its next step boundary, with last.ckpt saved there (moe_lab.callbacks.stop);
  a sweep worker before it claims another trial (moe_lab.sweep.runner);
- elsewhere raises Interrupted at once, as Ctrl-C raises KeyboardInterrupt.
Later ones are ignored, the stop being under way: one signal often arrives twice (the terminal and SLURM signal
every process of a job, and a sweep forwards each signal to its worker processes, `forwarding`). Entry points turn
Interrupted into the exit code 128 + the signal's number (moe_lab.cli).
"""

from __future__ import annotations

import contextlib
import signal
import threading

from moe_lab.errors import Interrupted

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class _StopRequest:
    """The process's record of a stop signal (signal handlers belong to the process, so there is one)."""

    def __init__(self):
        self.signum: int | None = None
        self.deferring = 0  # depth of deferred() blocks
        self.handling = False  # handled() is in force
        self.forward_to: list = []  # subprocess.Popen each stop signal is passed on to
        self.arrived = threading.Event()


_request = _StopRequest()


def _on_signal(signum: int, frame) -> None:
    if _request.signum is not None:
        return  # a repeat: the stop is under way
    _request.signum = signum
    _request.arrived.set()
    _forward(signum, _request.forward_to)
    if not _request.deferring:
        raise Interrupted(signum)


def _forward(signum: int, processes: list) -> None:
    for process in processes:
        with contextlib.suppress(OSError):
            process.send_signal(signum)  # a no-op for a process that has exited


def received() -> int | None:
    """The stop signal this process received, if any."""
    return _request.signum


def raise_if_received() -> None:
    """The safe point of code that deferred the stop signals: raise Interrupted if one arrived."""
    if _request.signum is not None:
        raise Interrupted(_request.signum)


def wait(seconds: float) -> None:
    """Sleep `seconds`, or less when a stop signal arrives meanwhile."""
    _request.arrived.wait(seconds)


@contextlib.contextmanager
def handled():
    """Handle the stop signals as this module says while in force (nested uses are one). Signal handlers can
    only be set from the main thread: elsewhere this does nothing."""
    if _request.handling or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    _request.signum = None
    _request.arrived.clear()
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_signal)
    _request.handling = True
    try:
        yield
    finally:
        _request.handling = False
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def handle_again() -> None:
    """Take the stop signals back from a library that installed its own handlers. Lightning's Trainer does for
    SIGTERM at each fit and validate: its handler ends them with SIGTERMException, a SystemExit of code 0 that
    saves nothing (lightning.pytorch.trainer.connectors.signal_connector); its teardown restores ours."""
    if _request.handling and threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) is not _on_signal:
                signal.signal(signum, _on_signal)


@contextlib.contextmanager
def deferred():
    """Within: a stop signal is only recorded; the caller acts on it (received, raise_if_received)."""
    _request.deferring += 1
    try:
        yield
    finally:
        _request.deferring -= 1


@contextlib.contextmanager
def forwarding(processes: list):
    """Pass each stop signal on to `processes` (subprocess.Popen: a sweep's workers) while in force, and one that
    arrived already at once."""
    if _request.signum is not None:
        _forward(_request.signum, processes)
    _request.forward_to.extend(processes)
    try:
        yield
    finally:
        for process in processes:
            _request.forward_to.remove(process)
