"""Specification of ``vreason.analysis.per_sample``: EMA peak, final entropy and micro-cycles of one
trace, the per-sample table, and output tokens per sample."""

from __future__ import annotations

import numpy as np
import pytest
from test_analysis import ema_of, make_trace, prediction

from vreason import analysis
from vreason.analysis import Run


def test_micro_cycles_counts_prominent_maxima_and_minima_only():
    t = np.linspace(0, 6 * np.pi, 2000)
    curve = np.sin(t) + 0.01 * np.sin(60 * t)  # 3 big tops and 3 big bottoms, plus small ripples
    assert analysis.micro_cycles(curve, prominence=0.5) == (3, 3)
    ripples = analysis.micro_cycles(curve, prominence=1e-6)
    assert ripples.maxima > 3 and ripples.minima > 3


def test_micro_cycles_never_count_endpoints():
    rising = np.linspace(0.0, 1.0, 50)  # its maximum is the last point, not an interior peak
    assert analysis.micro_cycles(rising, prominence=0.01) == (0, 0)


def test_ema_peak_is_first_global_maximum():
    assert analysis.ema_peak([0.1, 0.5, 0.9, 0.9, 0.4]) == (2, 0.9)


def test_ema_peak_is_later_and_lower_than_raw_entropy_peak():
    entropy = [0.2] * 20 + [2.0] * 5 + [0.1] * 200  # a short burst of high entropy
    raw_index, raw_height = analysis.ema_peak(entropy)
    ema_index, ema_height = analysis.ema_peak(ema_of(entropy))
    assert ema_index >= raw_index and ema_height < raw_height


def test_ema_peak_of_empty_curve_raises():
    with pytest.raises(ValueError, match="non-empty"):
        analysis.ema_peak([])


def test_final_entropy_is_mean_of_last_tokens():
    assert analysis.final_entropy([5.0] * 10 + [1.0] * 32, last_n=32) == 1.0
    assert analysis.final_entropy([1.0, 3.0], last_n=32) == 2.0  # shorter than the window: all tokens


def test_token_count_distribution_lists_finished_samples_per_run():
    a = Run("a", "a", predictions=[prediction("x", num_tokens=5), prediction("y", failed=True)])
    b = Run("b", None, predictions=[prediction("x", num_tokens=7, benchmark="mmvu")])
    frame = analysis.token_count_distribution([a, b])
    assert frame.to_dict("list") == {
        "run": ["a", "b"],
        "benchmark": ["synthetic", "mmvu"],
        "sample_id": ["x", "x"],
        "num_tokens": [5, 7],
    }


def test_trace_summary_reads_peak_final_entropy_and_cycles():
    p = prediction("x", num_tokens=3)
    p["trace"] = make_trace([0.5, 1.0, 2.0, 1.5, 1.0])
    p["trace"]["ema"] = [0.5, 1.0, 2.0, 1.5, 1.0]
    row = analysis.trace_summary([p], prominence=0.1, last_n=2).iloc[0]
    assert (row.ema_peak_step, row.ema_peak_height, row.final_entropy) == (3, 2.0, 1.25)
    assert (row.maxima, row.minima, row.ema_peak_position) == (1, 0, 0.6)
