"""Specification of ``vreason.analysis.alpha``: α recomputed from an EMA (Eq. 4) and the α counts
before the EMA peak (Fig. 5)."""

from __future__ import annotations

from vreason import analysis


def test_alpha_from_ema_is_plus_one_at_running_peak():
    ema = [0.1, 0.3, 0.2, 0.4, 0.35, 0.5, 0.45, 0.3]
    assert analysis.alpha_from_ema(ema).tolist() == [1, 1, -1, 1, -1, 1, -1, -1]


def test_alpha_before_peak_counts_optimised_steps_strictly_before_peak():
    # EMA peak at index 5. Before it, optimised steps are 1 (+1), 2 (-1), 4 (-1); step 3 (+1) was not
    # optimised; the peak step (+1) and the steps after it (-1, -1) do not count.
    first = {
        "ema": [0.1, 0.3, 0.2, 0.4, 0.35, 0.5, 0.45, 0.3],
        "alpha": [0, 1, -1, 0, -1, 1, -1, -1],
        "optimized": [False, True, True, False, True, True, True, True],
    }
    # EMA peak at index 2; before it: +1 at 0 and 1, both optimised.
    second = {"ema": [0.2, 0.3, 0.6, 0.1], "alpha": [1, 1, 1, -1], "optimized": [True] * 4}
    counts = analysis.alpha_before_peak([first, second])
    assert (counts.explore, counts.exploit, counts.samples) == (3, 2, 2)


def test_alpha_before_peak_from_ema_reads_a_baseline():
    baseline = {"ema": [0.1, 0.3, 0.2, 0.4, 0.35, 0.5, 0.45], "alpha": [0] * 7, "optimized": [False] * 7}
    assert analysis.alpha_before_peak([baseline]).steps == 0
    counts = analysis.alpha_before_peak([baseline], only_optimized=False, source="ema")
    assert (counts.explore, counts.exploit) == (3, 2)  # indices 0, 1, 3 at the running peak; 2, 4 below
