"""The ablation's claims judged on the completed seeds of two arms (moe_lab.report.stats, shared with the
sweep report).

Δ = mean(arm) - mean(other); the seed spread σ is the pooled sample std of the two arms; z = Δ / SE with
Welch's standard error SE = sqrt(s_a²/n_a + s_b²/n_b).
`less_than` holds iff Δ < 0; `at_most` holds iff Δ <= tolerance, and its z is taken against the
tolerance, (Δ - tolerance) / SE. |z| < NOISE_Z is reported as within seed noise.
"""

from __future__ import annotations

from dataclasses import dataclass

from moe_lab.report.ablation_data import AblationData, Arm, Claim
from moe_lab.report.common import four_decimals_or_sci
from moe_lab.report.stats import NOISE_Z, Stat, compare, noise_of


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    a: Stat
    b: Stat
    delta: float | None = None
    sigma: float | None = None  # pooled sample std of the two arms
    z: float | None = None  # Welch; for at_most against the tolerance
    why_no_z: str = ""

    @property
    def tested(self) -> bool:
        return self.delta is not None

    @property
    def held(self) -> bool:
        if not self.tested:
            return False
        return self.delta <= self.claim.tolerance if self.claim.at_most else self.delta < 0

    @property
    def noise(self) -> str:
        """'clear' (|z| >= NOISE_Z), 'within' (|z| < NOISE_Z) or 'unknown' (no z)."""
        return noise_of(self.z)

    @property
    def outcome(self) -> str:
        if not self.tested:
            return "not tested"
        if self.held:
            return {
                "clear": "held",
                "within": f"held, but within seed noise (|z| < {NOISE_Z:g})",
                "unknown": "held, but seed noise not assessed",
            }[self.noise]
        return {
            "clear": "did not hold",
            "within": f"did not hold (the difference is within seed noise, |z| < {NOISE_Z:g})",
            "unknown": "did not hold (seed noise not assessed)",
        }[self.noise]

    def line(self) -> str:
        c = self.claim
        if not self.tested:
            missing = [name for name, s in ((c.arm, self.a), (c.other, self.b)) if s.n == 0]
            text = f"{c.text} — not tested: no completed seed of {' and '.join(missing)} recorded {c.metric}"
        else:
            bound = (f" {'≤' if self.held else '>'} {c.tolerance:g}") if c.at_most else ""
            if self.z is None:
                spread = self.why_no_z
            else:
                against = " against the tolerance" if c.at_most else ""
                spread = f"|Δ| = {abs(self.delta) / self.sigma:.1f} seed-σ, z = {self.z:+.2f}{against}"
            means = f"{four_decimals_or_sci(self.a.mean)} vs {four_decimals_or_sci(self.b.mean)}"
            text = (
                f"{c.text} — {self.outcome}: {means} "
                f"(n = {self.a.n} vs {self.b.n}), Δ = {self.delta:+.4f}{bound} ({spread})"
            )
        return text + (f". Note: {c.note}" if c.note else "")


def judge(claim: Claim, arms: dict[str, Arm]) -> Verdict:
    """The verdict of one claim on the completed seeds of its two arms (moe_lab.report.stats.compare)."""
    a, b = (arms[name].values(claim.metric) if name in arms else [] for name in (claim.arm, claim.other))
    c = compare(a, b, (claim.arm, claim.other), margin=claim.tolerance if claim.at_most else 0.0)
    return Verdict(claim, c.a, c.b, c.delta, c.sigma, c.z, c.why_no_z)


def verdicts(data: AblationData) -> list[Verdict]:
    arms = {arm.name: arm for arm in data.arms}
    return [judge(claim, arms) for claim in data.claims]


def overall_line(results: list[Verdict]) -> str:
    if not results:
        return "No claims to check."
    held = [v for v in results if v.held]
    noisy = sum(v.noise == "within" for v in held)
    unknown = sum(v.noise == "unknown" for v in held)
    failed = [v for v in results if v.tested and not v.held]
    untested = [v for v in results if not v.tested]
    text = f"**{len(held)} of {len(results)} claims held**"
    caveats = ([f"{noisy} of them within seed noise"] if noisy else []) + (
        [f"{unknown} with too few seeds to judge the noise"] if unknown else []
    )
    text += f" ({'; '.join(caveats)})." if caveats else "."
    if failed:
        text += f" Did not reproduce at this scale: {'; '.join(v.claim.text for v in failed)}."
    if untested:
        text += (
            f" Not tested (an arm has no completed seed with a value for the metric): "
            f"{'; '.join(v.claim.text for v in untested)}."
        )
    return text
