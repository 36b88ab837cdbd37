"""Errors meant for people: one line naming the offending key or file.

CLIs catch `MoELabError`, print `error: <message>` on stderr and exit with code 2, no traceback.
"""


class MoELabError(Exception):
    """Base class for user-facing errors (bad config, bad data input)."""


class ConfigError(MoELabError, ValueError):
    """A configuration value is invalid. `key` is the dotted config key at fault."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")


class DataError(MoELabError, ValueError):
    """Data input is unusable (missing file, empty corpus, unknown text field, ...)."""


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first non-empty line of an error's message (a database driver's own error where one is
    wrapped, as SQLAlchemy's `orig`), or the error's type name when the message is empty; at most
    `limit` characters. Used wherever a lower-level error is quoted inside a one-line message."""
    text = str(getattr(err, "orig", None) or err).strip()
    line = next((s.strip() for s in text.splitlines() if s.strip()), type(err).__name__)
    return line if limit is None else line[:limit]
