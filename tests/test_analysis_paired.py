"""Specification of ``vreason.analysis.paired``: McNemar, the paired bootstrap and Wilcoxon on runs
whose answers are known by hand, and the pairings that are rejected."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_analysis import prediction, run_with_outcomes, seven_versus_two

from vreason import analysis
from vreason.analysis import Run


def test_mcnemar_p_matches_binomial_formula_for_7_vs_2():
    c = analysis.paired_comparison(*seven_versus_two(), n_boot=200)
    assert (c.n_pairs, c.only_in_baseline, c.only_in_other) == (20, 3, 1)
    assert (c.only_baseline_correct, c.only_other_correct) == (2, 7)
    # Two-sided exact: 2 * P(X <= 2), X ~ Binomial(9, 1/2) = 2 * (1 + 9 + 36) / 2**9.
    assert c.mcnemar_p == pytest.approx(2 * (math.comb(9, 0) + math.comb(9, 1) + math.comb(9, 2)) / 2**9)
    assert c.accuracy_diff == pytest.approx(5 / 20)
    assert c.score_diff == pytest.approx(5 / 20) and c.binary_scores


def test_no_discordant_pairs_gives_mcnemar_p_one():
    a = run_with_outcomes("a", [True, False, True])
    assert analysis.paired_comparison(a, a, n_boot=100).mcnemar_p == 1.0


def test_regression_scores_are_thresholded_for_mcnemar_and_reported_raw():
    a = Run("a", "a", predictions=[prediction("x", 0.4), prediction("y", 0.9)])
    b = Run("b", "b", predictions=[prediction("x", 0.6), prediction("y", 0.8)])
    c = analysis.paired_comparison(a, b, n_boot=100)
    assert (c.only_baseline_correct, c.only_other_correct) == (0, 1)  # x crosses 0.5; y stays correct
    assert c.score_diff == pytest.approx(((0.6 - 0.4) + (0.8 - 0.9)) / 2)
    assert c.accuracy_diff == pytest.approx(0.5) and not c.binary_scores


def test_failed_prediction_scores_zero_and_drops_out_of_token_pairs():
    a = Run("a", "a", predictions=[prediction("x", 1.0, 10), prediction("y", 1.0, 10)])
    b = Run("b", "b", predictions=[prediction("x", 1.0, 30), prediction("y", failed=True)])
    c = analysis.paired_comparison(a, b, n_boot=100)
    assert c.score_other == 0.5 and c.only_baseline_correct == 1
    assert c.token_pairs == 1 and c.token_diff == 20.0


def test_paired_bootstrap_ci_contains_true_difference_and_is_seeded():
    # Population: the other run is right whenever the baseline is, and on 10% more of the samples.
    u = np.random.default_rng(123).random(500)
    differences = (u < 0.7).astype(float) - (u < 0.6)
    low, high = analysis.paired_bootstrap_ci(differences, n_boot=4000, seed=7)
    assert low < 0.1 < high
    assert (low, high) == analysis.paired_bootstrap_ci(differences, n_boot=4000, seed=7)
    assert (low, high) != analysis.paired_bootstrap_ci(differences, n_boot=4000, seed=8)
    # Resampling pairs (not each run separately) gives the paired standard error, sd(d) / sqrt(n).
    paired_se = differences.std(ddof=1) / math.sqrt(differences.size)
    assert (high - low) / 2 == pytest.approx(1.96 * paired_se, rel=0.15)


def test_wilcoxon_detects_known_token_shift():
    tokens_a = [100 + 7 * i for i in range(20)]
    tokens_b = [n + i + 1 for i, n in enumerate(tokens_a)]  # differences 1..20, all positive
    a = run_with_outcomes("a", [True] * 20, tokens_a)
    b = run_with_outcomes("b", [True] * 20, tokens_b)
    c = analysis.paired_comparison(a, b, n_boot=100)
    assert c.token_diff == pytest.approx(10.5)
    assert c.wilcoxon_p == pytest.approx(2 / 2**20)  # exact: only the all-positive sign pattern is as extreme
    assert c.wilcoxon_note is None


def test_wilcoxon_all_zero_differences_gives_p_one_with_note():
    a = run_with_outcomes("a", [True] * 5, [10] * 5)
    c = analysis.paired_comparison(a, a, n_boot=100)
    assert c.token_diff == 0.0 and c.wilcoxon_p == 1.0
    assert "all differences are zero" in c.wilcoxon_note


def test_duplicate_sample_id_is_rejected():
    a = Run("a", "a", predictions=[prediction("x"), prediction("x")])
    with pytest.raises(ValueError, match="'x' appears twice"):
        analysis.paired_comparison(a, a)


def test_runs_without_shared_samples_are_rejected():
    a, b = Run("a", "a", predictions=[prediction("x")]), Run("b", "b", predictions=[prediction("y")])
    with pytest.raises(ValueError, match="share no sample_id"):
        analysis.paired_comparison(a, b)
