"""Seed statistics shared by the sweep and ablation reports: is a difference between two settings
larger than what changing the seed alone does?

Over the per-seed values of two settings a and b: Δ = mean(a) - mean(b); the seed spread σ is the pooled
sample std of the two; z = (Δ - margin) / SE with Welch's standard error SE = sqrt(s_a²/n_a + s_b²/n_b)
(Welch 1947, "The generalization of Student's problem when several different population variances are
involved"). |z| < NOISE_Z is reported as within seed noise. With a handful of seeds this is a rough
screen, not a test at a stated confidence level.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

NOISE_Z = 2.0  # |z| below this: the difference is within seed noise


@dataclass(frozen=True)
class Stat:
    """Mean and sample std (n - 1) over seeds; std is None below 2 seeds, mean None without any."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        if not values:
            return cls(None, None, 0)
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


@dataclass(frozen=True)
class Comparison:
    """a against b. delta is None when either has no value; sigma and z are None (with `why_no_z`) when
    the seed spread cannot be estimated."""

    a: Stat
    b: Stat
    delta: float | None = None
    sigma: float | None = None  # pooled sample std of the two
    z: float | None = None  # Welch, against `margin`
    why_no_z: str = ""

    @property
    def noise(self) -> str:
        return noise_of(self.z)


def noise_of(z: float | None) -> str:
    """'clear' (|z| >= NOISE_Z), 'within' (|z| < NOISE_Z) or 'unknown' (no z)."""
    if z is None:
        return "unknown"
    return "within" if abs(z) < NOISE_Z else "clear"


def compare(
    a_values: list[float], b_values: list[float], names: tuple[str, str] = ("a", "b"), margin: float = 0.0
) -> Comparison:
    """Welch's z of mean(a) - mean(b) against `margin`; `names` only word the reason when there is no z."""
    a, b = Stat.of(a_values), Stat.of(b_values)
    if not a.n or not b.n:
        return Comparison(a, b)
    delta = a.mean - b.mean
    few = [f"{name} (n = {s.n})" for name, s in zip(names, (a, b), strict=True) if s.n < 2]
    if few:
        return Comparison(
            a, b, delta, why_no_z=f"fewer than 2 seeds in {' and '.join(few)}: no seed spread, z not computed"
        )
    se = math.sqrt(a.std**2 / a.n + b.std**2 / b.n)
    if se == 0.0:
        return Comparison(a, b, delta, why_no_z=f"seed std 0 in both {names[0]} and {names[1]}: z not computed")
    sigma = math.sqrt(((a.n - 1) * a.std**2 + (b.n - 1) * b.std**2) / (a.n + b.n - 2))
    return Comparison(a, b, delta, sigma, (delta - margin) / se)
