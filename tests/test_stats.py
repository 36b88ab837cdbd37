"""Welch's z shared by the sweep and ablation reports, against hand-worked examples."""

import math

import pytest

from moe_lab.report.stats import NOISE_Z, compare


def test_welch_z_hand_worked():
    # means 1.1 and 1.6, both sample stds 0.1: SE = sqrt(0.01/3 + 0.01/3) = 0.08165, z = -0.5 / SE = -6.124
    c = compare([1.0, 1.2, 1.1], [1.5, 1.7, 1.6])
    assert c.delta == pytest.approx(-0.5)
    assert c.sigma == pytest.approx(0.1)
    assert c.z == pytest.approx(-0.5 / math.sqrt(0.02 / 3)) and c.z == pytest.approx(-6.1237, abs=1e-4)
    assert c.noise == "clear"


def test_unequal_spreads_and_sizes_use_welch_not_pooled_se():
    # a: n=2, mean 1.5, s²=0.5; b: n=4, mean 2.5, s²=1.6667. Welch SE = sqrt(0.25 + 0.41667) = 0.8165,
    # z = -1 / 0.8165 = -1.2247 (the pooled-variance SE would give -1.0 / 1.1547 = -0.866)
    a, b = [1.0, 2.0], [1.0, 2.0, 3.0, 4.0]
    c = compare(a, b)
    assert c.z == pytest.approx(-1.0 / math.sqrt(0.5 / 2 + (5 / 3) / 4)) and c.z == pytest.approx(-1.2247, abs=1e-4)
    assert c.sigma == pytest.approx(math.sqrt((1 * 0.5 + 3 * 5 / 3) / 4))
    assert abs(c.z) < NOISE_Z and c.noise == "within"


def test_margin_and_missing_spread():
    # equal seeds, s² = 0.02 each: SE = sqrt(0.02/2 + 0.02/2) = 0.1414; z against the margin = -0.1 / SE
    assert compare([1.0, 1.2], [1.0, 1.2], margin=0.1).z == pytest.approx(-0.1 / math.sqrt(0.02))
    one = compare([1.0], [2.0, 2.2], names=("x", "y"))
    assert one.z is None and one.delta == pytest.approx(-1.1) and "fewer than 2 seeds in x (n = 1)" in one.why_no_z
    flat = compare([1.0, 1.0], [2.0, 2.0])
    assert flat.z is None and "seed std 0" in flat.why_no_z and flat.noise == "unknown"
    assert compare([], [1.0, 2.0]).delta is None
