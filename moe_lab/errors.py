"""Errors meant for people: one line naming the offending key or file.

CLIs catch `MoELabError`, print `error: <message>` on stderr and exit with code 2, no traceback.
"""

from __future__ import annotations

import signal
from pathlib import Path


class MoELabError(Exception):
    """Base class for user-facing errors (bad config, bad data input)."""


class ConfigError(MoELabError, ValueError):
    """A configuration value is invalid. `key` is the dotted config key at fault."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")


class DataError(MoELabError, ValueError):
    """Data input is unusable (missing file, empty corpus, unknown text field, ...)."""


class DiskSpaceError(MoELabError, OSError):
    """A file could not be written for want of space (ENOSPC) or quota (EDQUOT). Still an OSError with
    that errno, so code that tolerates a failed write keeps doing so; its message is one line."""

    def __init__(self, message: str, errno: int = 28):  # ENOSPC; a default, so that it pickles
        super().__init__(message)
        self.errno = errno  # set after: OSError(errno, text) would print as "[Errno 28] text"


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first non-empty line of an error's message (a database driver's own error where one is
    wrapped, as SQLAlchemy's `orig`), or the error's type name when the message is empty; at most
    `limit` characters. Used wherever a lower-level error is quoted inside a one-line message."""
    text = str(getattr(err, "orig", None) or err).strip()
    line = next((s.strip() for s in text.splitlines() if s.strip()), type(err).__name__)
    return line if limit is None else line[:limit]


class Interrupted(BaseException):
    """A stop signal (moe_lab.signals: SIGTERM, SIGINT, SIGUSR1) ended the work at a safe point, with what resuming
    needs saved. Not an error and not an Exception: like KeyboardInterrupt it passes every `except Exception` on
    its way to the entry point, which exits with 128 + `signum` (moe_lab.cli). `run_dir`: the run directory whose
    last checkpoint a resumed run continues from, when one was saved."""

    def __init__(self, signum: int, run_dir: Path | None = None):
        self.signum, self.run_dir = int(signum), run_dir
        super().__init__(f"stopped by {signal_name(signum)}")


def signal_name(signum: int) -> str:
    """SIGTERM, SIGINT, ... (the number itself for a signal this platform does not name)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)
