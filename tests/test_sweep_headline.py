"""The sweep summary's headline and seed statistics, on hand-built studies whose numbers are worked out
by hand (two-sided 95% t: 2.776 at df 4, 12.706 at df 1, 4.303 at df 2) and checked against scipy."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from scipy import stats as scipy_stats

from moe_lab.report.stats import format_df, format_p
from moe_lab.report.sweep_study import load_study_data
from moe_lab.report.sweep_summary import summary_markdown

TOP_K = {"model.moe.top_k": CategoricalDistribution([1, 2, 4])}


def summary(study_dir: Path, configs: dict[int, dict[int, float]], direction: str = "minimize") -> str:
    """summary.md of a study with one complete trial per top_k, {top_k: {seed: objective}}, recorded as
    the sweep runner records them (std 0 for one seed)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_dir.mkdir(parents=True)
    db = f"sqlite:///{study_dir / 'study.db'}"
    study = optuna.create_study(study_name="demo", storage=db, direction=direction)
    for config_id, (top_k, by_seed) in enumerate(configs.items()):
        values = list(by_seed.values())
        attrs = {
            "config_id": config_id,
            "label": f"top_k={top_k}",
            "seeds": list(by_seed),
            "run_dirs": [f"trials/t{config_id:03d}/seed{s}" for s in by_seed],
            "objective_values": values,
            "objective_mean": statistics.fmean(values),
            "objective_std": statistics.stdev(values) if len(values) > 1 else 0.0,
        }
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                value=attrs["objective_mean"],
                params={"model.moe.top_k": top_k},
                distributions=TOP_K,
                user_attrs=attrs,
            )
        )
    seeds = sorted({s for by_seed in configs.values() for s in by_seed})
    info = {"study_name": "demo", "storage_url": db, "objective_metric": "val_loss", "direction": direction}
    (study_dir / "study_info.json").write_text(json.dumps({**info, "seeds": seeds, "compute_matching": "active"}))
    return summary_markdown(load_study_data(study_dir), {}, {})


def section(text: str, title: str) -> str:
    return text.split(f"## {title}\n")[1].split("\n## ")[0].strip()


def welch(a: list[float], b: list[float]) -> str:
    ref = scipy_stats.ttest_ind(a, b, equal_var=False)
    return f"Welch t({format_df(ref.df)}) p = {format_p(ref.pvalue)}"


def test_two_within_noise_form_a_tie_group_that_beats_the_third(tmp_path):
    """n = 3 seeds each, on different seeds (so Welch, no pairing); every sample std 0.1, so
    SE = sqrt(0.01/3 + 0.01/3) = 0.08165, Welch–Satterthwaite df = 4, CI half-width 2.776 · 0.08165 = 0.2267.
    top_k=2 (mean 2.10) − top_k=4 (2.15) = −0.05: CI [−0.2767, +0.1767] straddles 0, a tie. Both beat
    top_k=1 (2.70): by 0.60 and 0.55, each ± 0.2267."""
    two, four, one = [2.00, 2.10, 2.20], [2.05, 2.15, 2.25], [2.60, 2.70, 2.80]
    configs = {2: dict(enumerate(two)), 4: dict(enumerate(four, start=3)), 1: dict(enumerate(one, start=6))}
    text = summary(tmp_path / "demo", configs)
    headline = section(text, "Best configuration").splitlines()[0]
    ref = scipy_stats.ttest_ind(two, four, equal_var=False)
    assert float(ref.df) == pytest.approx(4.0) and float(ref.pvalue) == pytest.approx(0.573, abs=1e-3)
    assert headline == (
        f"**top_k=2 ≈ top_k=4** (undecided: Δ -0.0500, 95% CI [-0.2767, +0.1767], {welch(two, four)}); "
        f"both beat top_k=1: top_k=2 by 0.6000 ± 0.2267 (95% CI; {welch(two, one)}) "
        f"and top_k=4 by 0.5500 ± 0.2267 (95% CI; {welch(four, one)})."
    )
    assert float(scipy_stats.ttest_ind(four, one, equal_var=False).pvalue) < 0.05
    assert "indicative" not in headline
    assert "Best mean: **top_k=2**" in text and "2.1000 ± 0.1000 (n=3)" in text
    table = section(text, "Best mean against the others: a difference or seed noise?")
    assert f"| top_k=4 | -0.0500 | Welch t({format_df(ref.df)}) | 0.57 | [-0.2767, +0.1767] | undecided" in table


def test_two_seeds_are_indicative_and_never_beyond_noise(tmp_path):
    """n = 2, the same seeds: paired t(1). top_k=2 − top_k=4 per seed: −0.15, −0.05, mean −0.10,
    SE 0.05, CI −0.10 ± 12.706 · 0.05 = [−0.7353, +0.5353]: a tie. Against top_k=1: −1.00, −0.95 (mean
    −0.975, SE 0.025, ± 0.3177) and −0.85, −0.90 (mean −0.875): decided, but on 2 seeds, indicative."""
    two, four, one = [2.00, 2.20], [2.15, 2.25], [3.00, 3.15]
    text = summary(tmp_path / "demo", {2: dict(enumerate(two)), 4: dict(enumerate(four)), 1: dict(enumerate(one))})
    headline = section(text, "Best configuration").splitlines()[0]
    p = format_p(scipy_stats.ttest_rel(two, four).pvalue)
    assert headline.startswith(
        f"**top_k=2 ≈ top_k=4** (undecided: Δ -0.1000, 95% CI [-0.7353, +0.5353], paired t(1) p = {p}, "
        "indicative at n = 2); both beat top_k=1: top_k=2 by 0.9750 ± 0.3177 (95% CI; paired t(1) p = "
    )
    assert headline.count("indicative at n = 2") == 3  # every comparison it states
    table = section(text, "Best mean against the others: a difference or seed noise?")
    assert table.count("(indicative: n ≤ 2) |") == 2  # the tie as well as the decision
    assert "beyond noise" not in text and "beyond seed noise" not in text


def test_one_seed_has_no_spread_and_no_test(tmp_path):
    text = summary(tmp_path / "demo", {2: {0: 2.375}, 4: {0: 2.5}})
    assert "±" not in text.replace("objective (mean ± std, n seeds)", "")  # the column's name only
    assert "| top_k=2 | 2.3750 (n=1) |" in text and "val_loss 2.3750 (n=1)" in text
    headline = section(text, "Best configuration").splitlines()[0]
    assert headline.startswith("**top_k=2 ≈ top_k=4** (undecided: Δ -0.1250, fewer than 2 seeds in top_k=2 (n = 1)")


def test_one_configuration_is_just_itself(tmp_path):
    text = summary(tmp_path / "demo", {2: {0: 2.0, 1: 2.2}})
    assert section(text, "Best configuration").startswith("**top_k=2**: the only complete configuration.\n")


def test_a_best_decided_better_than_all_is_named_best_also_when_maximising(tmp_path):
    """Maximised, paired over seeds 0–2: differences 0.10, 0.09, 0.11, mean 0.10, SE 0.01/√3 = 0.005774,
    CI 0.10 ± 4.303 · 0.005774 = 0.10 ± 0.0248."""
    high, low = [0.80, 0.81, 0.82], [0.70, 0.72, 0.71]
    text = summary(tmp_path / "demo", {1: dict(enumerate(low)), 2: dict(enumerate(high))}, direction="maximize")
    p = format_p(scipy_stats.ttest_rel(high, low).pvalue)
    assert section(text, "Best configuration").splitlines()[0] == (
        f"**top_k=2** is best: beats top_k=1 by 0.1000 ± 0.0248 (95% CI; paired t(2) p = {p})."
    )
