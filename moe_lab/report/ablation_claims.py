"""The ablation's claims decided on the completed seeds of two arms (moe_lab.report.stats, shared with the
sweep report).

A claim is "Δ < margin" with Δ = mean(arm) − mean(other): margin 0 for `less_than`, the tolerance for
`at_most`. It is tested paired by seed where the arms share seeds (every shipped ablation: one seed list
for all arms), with Welch's t otherwise, and is *supported* only when the whole 95% confidence interval of
Δ lies below the margin, *contradicted* when it lies wholly above, *undecided* otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from moe_lab.report.ablation_data import AblationData, Arm, Claim
from moe_lab.report.common import four_decimals_or_sci
from moe_lab.report.stats import CONFIDENCE, CONTRADICTED, SUPPORTED, UNDECIDED, WELCH, Comparison, compare

OUTCOMES = (SUPPORTED, CONTRADICTED, UNDECIDED)


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    comparison: Comparison

    @property
    def tested(self) -> bool:
        return self.comparison.delta is not None

    @property
    def outcome(self) -> str:
        """SUPPORTED, CONTRADICTED or UNDECIDED ("not tested" without a value in one of the arms)."""
        return self.comparison.outcome() if self.tested else "not tested"

    @property
    def indicative(self) -> bool:
        return self.tested and self.comparison.indicative

    def line(self) -> str:
        c, cmp = self.claim, self.comparison
        if not self.tested:
            missing = [name for name, s in ((c.arm, cmp.a), (c.other, cmp.b)) if s.n == 0]
            text = f"{c.text} — not tested: no completed seed of {' and '.join(missing)} recorded {c.metric}"
            return text + (f". Note: {c.note}" if c.note else "")
        outcome = f"**{self.outcome}**" + (f" (indicative: n ≤ {min(cmp.a.n, cmp.b.n)})" if self.indicative else "")
        means = f"{four_decimals_or_sci(cmp.a.mean)} vs {four_decimals_or_sci(cmp.b.mean)}"
        text = (
            f"{c.text} — {outcome}: {means} (n = {cmp.a.n} vs {cmp.b.n}), Δ = {cmp.delta:+.4f}; "
            f"{cmp.describe()}{self._bound()}"
        )
        if cmp.test is not None and cmp.test.name == WELCH:
            text += f" ({cmp.test.why})"
        return text + (f". Note: {c.note}" if c.note else "")

    def _bound(self) -> str:
        """What the interval still allows when the claim is undecided, in the claim's own words."""
        test, c = self.comparison.test, self.claim
        if test is None or self.outcome != UNDECIDED:
            return ""
        if c.at_most:
            return f"; the data allow {c.arm} up to {test.high:+.4f} above {c.other} (tolerance {c.tolerance:g})"
        better, worse = max(0.0, -test.low), max(0.0, test.high)
        return (
            f"; the data still allow {c.arm} lower by up to {better:.4f} or higher by up to {worse:.4f} "
            f"({CONFIDENCE:.0%} CI)"
        )


def judge(claim: Claim, arms: dict[str, Arm]) -> Verdict:
    """The verdict of one claim on the completed seeds of its two arms, paired by seed."""
    a, b = (arms[name].by_seed(claim.metric) if name in arms else {} for name in (claim.arm, claim.other))
    margin = claim.tolerance if claim.at_most else 0.0
    return Verdict(claim, compare(a, b, (claim.arm, claim.other), margin=margin))


def verdicts(data: AblationData) -> list[Verdict]:
    arms = {arm.name: arm for arm in data.arms}
    return [judge(claim, arms) for claim in data.claims]


def counts(results: list[Verdict]) -> dict[str, int]:
    """How many claims ended in each outcome (and untested), for suite.json and the overview."""
    tally = {outcome: sum(v.outcome == outcome for v in results) for outcome in OUTCOMES}
    return {**tally, "not tested": sum(not v.tested for v in results)}


def overall_line(results: list[Verdict]) -> str:
    if not results:
        return "No claims to check."
    tally = counts(results)
    text = (
        f"**{tally[SUPPORTED]} supported, {tally[CONTRADICTED]} contradicted, {tally[UNDECIDED]} undecided "
        f"of {len(results)} claims**"
    )
    indicative = sum(v.indicative and v.outcome != UNDECIDED for v in results)
    text += f" ({indicative} decided on n ≤ 2 seeds: indicative only)." if indicative else "."
    for outcome, words in ((CONTRADICTED, "Contradicted at this scale"), ("not tested", "Not tested")):
        named = [v.claim.text for v in results if v.outcome == outcome]
        if named:
            text += f" {words}: {'; '.join(named)}."
    return text
