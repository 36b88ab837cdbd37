"""Loss against training tokens for each validation-loss claim: where along training do the two arms
separate? At every evaluation both arms logged, the per-seed difference Δ = arm − other is tested as the
final value is (moe_lab.report.stats: paired by seed), giving a curve of Δ with its 95% confidence band.

The arms *separate* at the first evaluation from which the interval stays on one side of 0 at every later
evaluation; one excursion that does not last is not a separation. Evaluations are not independent tests,
so the band is pointwise (no correction across evaluations) and the separation point is descriptive; the
claim's verdict is the one at the final value.
"""

from __future__ import annotations

from dataclasses import dataclass

from moe_lab.artifacts.metrics import metric_named
from moe_lab.report.ablation_data import AblationData, Arm, Claim, recorded_tokens_per_step
from moe_lab.report.stats import Comparison, compare

VAL_LOSS, VAL_TAG = "val_loss", metric_named("val_loss").tag


@dataclass(frozen=True)
class Point:
    step: int
    tokens: int
    comparison: Comparison


def first_recorded_tokens_per_step(data: AblationData) -> int:
    """Training tokens per optimizer step of the first run that records them (0: none does; a budget that
    differs between arms is flagged by the report's budget line)."""
    per_step = (recorded_tokens_per_step(*run.budget()[1:]) for arm in data.arms for run in arm.runs)
    return next((n for n in per_step if n is not None), 0)


def seed_curves(arm: Arm) -> dict[int, dict[int, float]]:
    """{seed: {step: val/loss}} of the arm's completed seeds."""
    from moe_lab.report.tb_scalars import read_scalars

    return {run.seed: read_scalars(run.run_dir, VAL_TAG) for run in arm.completed if run.run_dir is not None}


def difference_curve(data: AblationData, claim: Claim) -> list[Point]:
    """Δ = claim.arm − claim.other at every evaluation step both logged in at least two shared seeds."""
    arms = {arm.name: arm for arm in data.arms}
    if claim.metric != VAL_LOSS or claim.at_most or claim.arm not in arms or claim.other not in arms:
        return []
    a, b = seed_curves(arms[claim.arm]), seed_curves(arms[claim.other])
    per_step = first_recorded_tokens_per_step(data)
    points = []
    for step in sorted({s for curve in a.values() for s in curve}):
        at_a = {seed: curve[step] for seed, curve in a.items() if step in curve}
        at_b = {seed: curve[step] for seed, curve in b.items() if step in curve}
        if len(set(at_a) & set(at_b)) >= 2:
            # Lightning logs the evaluation after step k's update as step k - 1: k updates trained.
            points.append(Point(step, (step + 1) * per_step, compare(at_a, at_b, (claim.arm, claim.other))))
    return points


def separation(points: list[Point]) -> Point | None:
    """The first point from which the confidence interval excludes 0 on one and the same side at every
    later evaluation; None when the last one does not exclude it."""
    side = None
    first = None
    for point in reversed(points):
        test = point.comparison.test
        here = None if test is None else ("below" if test.high < 0 else "above" if test.low > 0 else None)
        if here is None or (side is not None and here != side):
            break
        side, first = here, point
    return first


def claim_curves(data: AblationData) -> dict[Claim, list[Point]]:
    """The difference curve of every validation-loss `less_than` claim with at least one point."""
    return {c: pts for c in data.claims if (pts := difference_curve(data, c))}


def curve_lines(data: AblationData, curves: dict[Claim, list[Point]]) -> list[str]:
    """results.md: per claim, Δ and its interval at every evaluation, and where the arms separate."""
    lines = []
    for claim, points in curves.items():
        sep = separation(points)
        if sep is None:
            verdict = "the arms do not separate: the 95% interval of Δ includes 0 at the last evaluation"
        else:
            side = "below" if sep.comparison.test.high < 0 else "above"
            verdict = (
                f"{claim.arm} separates {side} {claim.other} from {sep.tokens:,} training tokens on "
                f"(step {sep.step + 1})"
            )
        lines += [
            f"`{claim.text}`: {verdict}.",
            "",
            "| tokens | Δ | test | 95% CI of Δ |",
            "| ---: | ---: | --- | --- |",
        ]
        for p in points:
            t = p.comparison.test
            interval = f"[{t.low:+.4f}, {t.high:+.4f}]" if t else p.comparison.why_no_test
            lines.append(f"| {p.tokens:,} | {p.comparison.delta:+.4f} | {t.name if t else '-'} | {interval} |")
        lines.append("")
    return lines
