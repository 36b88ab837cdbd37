"""The validation vocabulary: every config rule in moe_lab (model, data, experiment, sweep, ablation,
callbacks) is said with these few checks, so a rule reads the same everywhere and its message names the
offending key in one wording. Each raises ConfigError(key, message)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from moe_lab.errors import ConfigError


def require(ok: bool, key: str, message: str) -> None:
    """The general rule: `message` says what is wrong with `key` when `ok` is false."""
    if not ok:
        raise ConfigError(key, message)


def one_of(key: str, value: Any, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    require(value in allowed, key, f"unknown value {value!r}; expected one of {', '.join(allowed)}")


def at_least(key: str, value: float, low: float) -> None:
    """A finite number >= low (inf would pass the comparison and fail at step 1)."""
    require(math.isfinite(value) and value >= low, key, f"must be {_finite(value)}>= {low}, got {value}")


def above(key: str, value: float, low: float) -> None:
    """A finite number > low: rates and scales."""
    require(math.isfinite(value) and value > low, key, f"must be {_finite(value)}> {low}, got {value}")


def _finite(value: float) -> str:
    return "" if math.isfinite(value) else "a finite number "


def in_range(key: str, value: float, low: float, high: float, what: str = "") -> None:
    """low <= value < high; `what` says what the value is ("a fraction of uniform load ")."""
    require(low <= value < high, key, f"must be {what}in [{low}, {high}), got {value}")


def whole_at_least(key: str, value: Any, low: int) -> None:
    """An int (not a bool, not a float) of at least `low`: for values that come from code, not a schema
    that has typed them already."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    require(ok, key, f"expected an integer >= {low}, got {value!r}")


def path_component(key: str, value: str) -> None:
    """A name that becomes one directory: not empty, not '.' or '..', no '/', no NUL byte; so a run or a
    study never writes outside its output_dir."""
    require(
        bool(value.strip()) and value not in (".", "..") and "/" not in value and "\x00" not in value,
        key,
        f"must be a single directory name (not empty, '.' or '..'; no '/' or NUL byte), got {value!r}",
    )


def no_nul(key: str, value: str) -> None:
    require("\x00" not in value, key, f"holds a NUL byte: {value!r}")


SEED_LIMIT = 2**32  # numpy's and Lightning's seeds are 32-bit


def seed(key: str, value: int) -> None:
    require(0 <= value < SEED_LIMIT, key, f"must be in [0, 2^32), got {value}")
