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
