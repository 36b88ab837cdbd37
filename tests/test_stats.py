"""The seed statistics shared by the sweep and ablation reports, against hand-worked values (printed t
tables, the Welch–Satterthwaite formula written out) and scipy's own tests."""

import math
import statistics

import pytest
from scipy import stats as scipy_stats

from moe_lab.report.stats import CONTRADICTED, PAIRED, SUPPORTED, UNDECIDED, WELCH, compare

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}  # two-sided 95% critical t, from a printed table


def test_welch_hand_worked():
    # means 1.1 and 1.6, both sample stds 0.1: SE = sqrt(0.01/3 + 0.01/3) = 0.08165, t = -6.124,
    # Welch-Satterthwaite df = (2 * 0.01/3)^2 / (2 * (0.01/3)^2 / 2) = 4: CI = -0.5 ± 2.776 * 0.08165
    c = compare([1.0, 1.2, 1.1], [1.5, 1.7, 1.6])
    t = c.test
    assert t.name == WELCH and c.delta == pytest.approx(-0.5)
    assert (t.se, t.df, t.t) == pytest.approx((0.08165, 4.0, -6.1237), abs=1e-4)
    assert (t.low, t.high) == pytest.approx((-0.5 - 2.776 * 0.08165, -0.5 + 2.776 * 0.08165), abs=1e-3)
    assert t.p == pytest.approx(0.0036, abs=1e-4) and c.outcome() == SUPPORTED


def test_welch_unequal_spreads_match_scipy_and_the_formula():
    a, b = [1.0, 2.0], [1.0, 2.0, 3.0, 4.0]  # s² = 0.5 and 1.6667: Welch, not the pooled SE
    va, vb = 0.5 / 2, (5 / 3) / 4
    df = (va + vb) ** 2 / (va**2 / 1 + vb**2 / 3)
    c = compare(a, b)
    ref = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert c.test.df == pytest.approx(df) and c.test.df == pytest.approx(float(ref.df))
    assert c.test.t == pytest.approx(-1.0 / math.sqrt(va + vb)) and c.test.p == pytest.approx(float(ref.pvalue))
    assert c.outcome() == UNDECIDED and c.indicative  # n = 2 on one side


def test_paired_by_seed_hand_worked_and_against_scipy():
    # Seeds shared: differences -0.02, -0.03, -0.01, -0.02: mean -0.02, sd 0.008165, SE 0.004082,
    # t(3) = -4.899; CI = -0.02 ± 3.182 * 0.004082. Unpaired, the seed-to-seed spread (0.05) hides it.
    a = {0: 1.50, 1: 1.57, 2: 1.44, 3: 1.53}
    b = {0: 1.52, 1: 1.60, 2: 1.45, 3: 1.55}
    c = compare(a, b)
    t = c.test
    assert t.name == PAIRED and t.df == 3 and t.n == 4
    assert (t.delta, t.se, t.t) == pytest.approx((-0.02, 0.004082, -4.899), abs=1e-4)
    assert (t.low, t.high) == pytest.approx((-0.02 - T_975[3] * 0.004082, -0.02 + T_975[3] * 0.004082), abs=1e-4)
    ref = scipy_stats.ttest_rel(list(a.values()), list(b.values()))
    assert t.p == pytest.approx(float(ref.pvalue)) and t.p < 0.05 and c.outcome() == SUPPORTED
    assert compare(list(a.values()), list(b.values())).outcome() == UNDECIDED  # Welch: no pairing


def test_pairs_only_the_shared_seeds():
    a = {0: 1.0, 1: 1.1, 2: 1.3, 5: 9.0}  # seed 5 has no partner: left out of the pairs, kept in the mean
    b = {0: 1.2, 1: 1.4, 2: 1.4}
    c = compare(a, b)
    assert c.test.name == PAIRED and c.test.n == 3 and c.test.df == 2
    assert c.test.delta == pytest.approx(statistics.fmean([-0.2, -0.3, -0.1]))
    assert c.delta == pytest.approx(statistics.fmean(a.values()) - statistics.fmean(b.values()))
    assert compare({0: 1.0, 1: 1.2}, {2: 1.5, 3: 1.7}).test.name == WELCH  # no shared seeds


def test_margin_decides_tolerance_claims_by_the_upper_bound():
    # differences 0.10, 0.11, 0.09: CI 0.10 ± 4.303 * 0.005774 = [0.0752, 0.1248]
    a, b = {0: 2.70, 1: 2.72, 2: 2.68}, {0: 2.60, 1: 2.61, 2: 2.59}
    outcomes = {m: compare(a, b, margin=m).outcome() for m in (0.13, 0.11, 0.05)}
    assert outcomes == {0.13: SUPPORTED, 0.11: UNDECIDED, 0.05: CONTRADICTED}
    c = compare(a, b, margin=0.13)
    assert c.test.t == pytest.approx((0.10 - 0.13) / (0.01 / math.sqrt(3)), rel=1e-6)
    half = T_975[2] * 0.005774
    assert (c.test.low, c.test.high) == pytest.approx((0.10 - half, 0.10 + half), abs=1e-3)


def test_no_spread_no_test():
    one = compare([1.0], [2.0, 2.2], names=("x", "y"))
    assert one.test is None and one.delta == pytest.approx(-1.1)
    assert "fewer than 2 seeds in x (n = 1)" in one.why_no_test
    assert one.outcome() == UNDECIDED and one.indicative
    flat = compare([1.0, 1.0], [2.0, 2.0])
    assert flat.test is None and "seed std 0" in flat.why_no_test
    same = compare({0: 1.0, 1: 1.5}, {0: 1.2, 1: 1.7})  # the same difference at every seed
    assert same.test is None and "all equal" in same.why_no_test
    assert compare([], [1.0, 2.0]).delta is None
