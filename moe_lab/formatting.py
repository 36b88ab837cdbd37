"""How numbers are printed in summaries and report tables, for every layer."""

from __future__ import annotations


def si(n: float | None) -> str:
    """A parameter or FLOP count as the tables print it: 1_086_592 -> '1.09M'; None -> '-'."""
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"
