"""Seed statistics shared by the sweep and ablation reports: is the difference between two settings
larger than what changing the seed alone does, at a stated confidence?

Δ = mean(a) − mean(b), tested against a margin m (0 for "a < b", the tolerance for "a ≤ b + tol"):
- **paired t** (Student 1908) on the per-seed differences d_s = a_s − b_s when the two settings share at
  least two seeds. A seed fixes the data order of every arm (moe_lab.data.sampler), and the initial weights
  where two arms build the same modules, so what of the seed's luck the arms share cancels in d_s;
  df = n_pairs − 1. The test is valid either way; it is sharper only as far as the arms' losses correlate
  over seeds (dense against MoE did not, r = −0.34 over 6 seeds: experiments/pilots/README.md).
- **Welch t** (Welch 1947) otherwise: SE = sqrt(s_a²/n_a + s_b²/n_b), Welch–Satterthwaite df.
The test is chosen by that rule before any value is looked at, never by which p-value is smaller.

Each gives a two-sided p-value against the margin and a CONFIDENCE confidence interval of Δ. A claim
"Δ < margin" is decided only by the interval: *supported* when the whole interval lies below the margin
(so a tolerance claim needs its upper bound inside the tolerance), *contradicted* when it lies wholly
above, *undecided* otherwise, and then the interval is the largest effect the data still allow. With
n ≤ INDICATIVE_N seeds on a side a decision is marked indicative (df ≤ 1: one unlucky seed decides it);
one seed has no spread and no test.
The computations are scipy's (scipy.stats.ttest_rel / ttest_ind with equal_var=False).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats as scipy_stats

CONFIDENCE = 0.95  # of every interval and so every decision (two-sided p < 0.05)
INDICATIVE_N = 2  # at most this many seeds on a side: a decision is only indicative

SUPPORTED, CONTRADICTED, UNDECIDED = "supported", "contradicted", "undecided"
PAIRED, WELCH = "paired t", "Welch t"
WHY_PAIRED = "paired by seed: a seed fixes every arm's data order (and its initial weights, architectures alike)"
WHY_WELCH = "Welch t: the settings share fewer than 2 seeds, so no pairing"


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
class TTest:
    """One t test of Δ = a − b against `margin`."""

    name: str  # PAIRED or WELCH
    why: str  # why this test applies
    delta: float  # the estimate tested: mean of the per-seed differences (paired) or difference of means
    se: float
    df: float
    t: float  # (delta - margin) / se
    p: float  # two-sided, against the margin
    low: float  # CONFIDENCE interval of delta
    high: float
    n: int  # pairs (paired) or the smaller side's seeds (Welch)


@dataclass(frozen=True)
class Comparison:
    """a against b. `test` is None (with `why_no_test`) when the seed spread cannot be estimated."""

    a: Stat
    b: Stat
    delta: float | None = None  # mean(a) - mean(b) over all their seeds
    margin: float = 0.0
    test: TTest | None = None
    why_no_test: str = ""

    @property
    def indicative(self) -> bool:
        """Too few seeds for a decision to be more than a hint."""
        return min(self.a.n, self.b.n) <= INDICATIVE_N

    def outcome(self) -> str:
        """SUPPORTED / CONTRADICTED / UNDECIDED for the claim Δ < margin: the whole interval below the
        margin, wholly above it, or straddling it (then it bounds the effect either way)."""
        if self.test is None:
            return UNDECIDED
        if self.test.high < self.margin:
            return SUPPORTED
        return CONTRADICTED if self.test.low > self.margin else UNDECIDED

    def describe(self) -> str:
        """'paired t(2) = -4.12, p = 0.054, 95% CI of Δ [-0.031, +0.001]' or why there is no test."""
        if self.test is None:
            return self.why_no_test
        t = self.test
        return (
            f"{t.name}({format_df(t.df)}) = {t.t:+.2f}, p = {format_p(t.p)}, "
            f"{CONFIDENCE:.0%} CI of Δ [{t.low:+.4f}, {t.high:+.4f}]"
        )

    def brief(self) -> str:
        """'Welch t(1.9) p = 0.41, indicative at n = 2': the test in a sentence, or why there is none."""
        if self.test is None:
            return self.why_no_test
        text = f"{self.test.name}({format_df(self.test.df)}) p = {format_p(self.test.p)}"
        return text + (f", indicative at n = {min(self.a.n, self.b.n)}" if self.indicative else "")


def format_p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else "< 0.001"


def format_df(df: float) -> str:
    return f"{df:.0f}" if float(df).is_integer() else f"{df:.1f}"


def compare(
    a: dict[int, float] | list[float],
    b: dict[int, float] | list[float],
    names: tuple[str, str] = ("a", "b"),
    margin: float = 0.0,
) -> Comparison:
    """Δ = mean(a) − mean(b) tested against `margin`: paired when a and b are {seed: value} sharing at
    least 2 seeds, Welch otherwise (lists carry no seeds). `names` only word the reason for no test."""
    a_by, b_by = _by_seed(a), _by_seed(b)
    sa, sb = Stat.of(list(a_by.values())), Stat.of(list(b_by.values()))
    if not sa.n or not sb.n:
        return Comparison(sa, sb, margin=margin)
    delta = sa.mean - sb.mean
    shared = sorted(set(a_by) & set(b_by)) if isinstance(a, dict) and isinstance(b, dict) else []
    if len(shared) >= 2:
        test = paired_t([a_by[s] for s in shared], [b_by[s] for s in shared], margin)
        why = "" if test else f"the {len(shared)} paired differences are all equal: no spread, not tested"
        return Comparison(sa, sb, delta, margin, test, why)
    few = [f"{name} (n = {s.n})" for name, s in zip(names, (sa, sb), strict=True) if s.n < 2]
    if few:
        why = f"fewer than 2 seeds in {' and '.join(few)}: no seed spread, not tested"
        return Comparison(sa, sb, delta, margin, None, why)
    test = welch_t(list(a_by.values()), list(b_by.values()), margin)
    why = "" if test else f"seed std 0 in both {names[0]} and {names[1]}: not tested"
    return Comparison(sa, sb, delta, margin, test, why)


def paired_t(a: list[float], b: list[float], margin: float = 0.0) -> TTest | None:
    """Paired t of a − b (equal lengths, matched by position) against `margin`; None without spread."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    if len(diffs) < 2 or statistics.pstdev(diffs) == 0.0:
        return None
    result = scipy_stats.ttest_rel([d - margin for d in diffs], [0.0] * len(diffs))
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    return _ttest(PAIRED, WHY_PAIRED, result, statistics.fmean(diffs), se, margin, len(diffs))


def welch_t(a: list[float], b: list[float], margin: float = 0.0) -> TTest | None:
    """Welch's unequal-variance t of mean(a) − mean(b) against `margin`; None without spread."""
    if min(len(a), len(b)) < 2 or statistics.pstdev(a) == statistics.pstdev(b) == 0.0:
        return None
    result = scipy_stats.ttest_ind([x - margin for x in a], b, equal_var=False)
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    delta = statistics.fmean(a) - statistics.fmean(b)
    return _ttest(WELCH, WHY_WELCH, result, delta, se, margin, min(len(a), len(b)))


def _ttest(name: str, why: str, result, delta: float, se: float, margin: float, n: int) -> TTest:
    ci = result.confidence_interval(CONFIDENCE)  # scipy tested (a - margin) against b: shift back to Δ
    return TTest(
        name=name,
        why=why,
        delta=delta,
        se=se,
        df=float(result.df),
        t=float(result.statistic),
        p=float(result.pvalue),
        low=float(ci.low) + margin,
        high=float(ci.high) + margin,
        n=n,
    )


def _by_seed(values: dict[int, float] | list[float]) -> dict[int, float]:
    return dict(values) if isinstance(values, dict) else dict(enumerate(values))
