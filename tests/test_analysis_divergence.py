"""Specification of ``vreason.analysis.divergence`` on hand-made traces whose answers are known: where a
run's tokens first leave the baseline's, how many samples changed, and the entropy difference over the
tokens both emitted alike (exactly, index by index); the plot draws both panels."""

from __future__ import annotations

import math

import pytest
from test_analysis_plots import png_bytes

from vreason import analysis
from vreason.analysis import Run


def traced(sample_id: str, token_ids: list[int], entropy: list[float], failed: bool = False) -> dict:
    if failed:
        return {"sample_id": sample_id, "score": 0.0, "failed": True}
    return {
        "sample_id": sample_id,
        "score": 1.0,
        "failed": False,
        "num_tokens": len(token_ids),
        "trace": {"token_ids": token_ids, "entropy": entropy},
    }


BASE_H = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_identical_outputs_changed_none_and_the_entropy_difference_spans_every_token():
    base = Run("b", "base", predictions=[traced("x", [5, 6, 7, 8, 9, 10], BASE_H)])
    other = Run(
        "o", "vreason", predictions=[traced("x", [5, 6, 7, 8, 9, 10], [1.0, 2.5, 2.0, 4.0, 5.0, 6.6])]
    )
    [row] = analysis.divergence_by_sample(base, other).to_dict("records")
    assert not row["changed"] and row["first_divergence"] is None and row["shared_tokens"] == 6
    assert row["mean_entropy_diff"] == pytest.approx((0.5 - 1.0 + 0.6) / 6)
    assert row["mean_abs_entropy_diff"] == pytest.approx((0.5 + 1.0 + 0.6) / 6)
    s = analysis.divergence_summary(base, other)
    assert (s.pairs, s.changed, s.changed_fraction) == (1, 0, 0.0)
    assert math.isnan(s.first_div_mean) and math.isnan(s.first_div_min)


def test_a_difference_at_token_3_diverges_at_3_and_the_entropy_difference_is_over_tokens_0_to_2():
    other_h = [1.0, 2.25, 2.5, 9.0, 9.0, 9.0]  # tokens 3.. differ: their entropies must not count
    d = analysis.sample_divergence(
        {"token_ids": [5, 6, 7, 8, 9, 10], "entropy": BASE_H},
        {"token_ids": [5, 6, 7, 99, 9, 10], "entropy": other_h},
        "x",
    )
    assert d.changed and d.first_divergence == 3 and d.shared_tokens == 3
    assert d.mean_entropy_diff == pytest.approx((0.0 + 0.25 - 0.5) / 3)
    assert d.mean_abs_entropy_diff == pytest.approx((0.0 + 0.25 + 0.5) / 3)


def test_a_shorter_output_that_is_a_prefix_diverges_where_it_stopped():
    assert analysis.first_divergence([1, 2, 3], [1, 2, 3, 4]) == 3
    assert analysis.first_divergence([1, 2, 3, 4], [1, 2]) == 2
    assert analysis.first_divergence([1, 2], [1, 2]) is None
    assert analysis.first_divergence([7, 2], [1, 2]) == 0  # at the first token: no shared prefix
    d = analysis.sample_divergence({"token_ids": [7], "entropy": [1.0]}, {"token_ids": [1], "entropy": [3.0]})
    assert d.shared_tokens == 0 and math.isnan(d.mean_entropy_diff)


def test_a_run_summary_counts_changed_samples_skips_failed_ones_and_averages_per_sample():
    base = Run(
        "b",
        "base",
        predictions=[
            traced("a", [1, 2, 3, 4], [1.0, 1.0, 1.0, 1.0]),
            traced("b", [1, 2, 3, 4], [1.0, 1.0, 1.0, 1.0]),
            traced("c", [1, 2, 3, 4], [1.0, 1.0, 1.0, 1.0]),
            traced("d", [1, 2], [1.0, 1.0]),
            traced("only-base", [1], [1.0]),
        ],
    )
    other = Run(
        "o",
        "vreason",
        predictions=[
            traced("a", [1, 2, 3, 4], [1.0, 2.0, 1.0, 1.0]),  # unchanged, dH mean 0.25
            traced("b", [1, 9, 3, 4], [1.0, 0.0, 1.0, 1.0]),  # changed at 1, dH over token 0: 0
            traced("c", [1, 2, 3, 9], [1.0, 1.0, 0.4, 1.0]),  # changed at 3, dH over 0-2: -0.2
            traced("d", [1, 2], [1.0, 1.0], failed=True),  # failed: not a pair
        ],
    )
    s = analysis.divergence_summary(base, other)
    assert (s.pairs, s.changed) == (3, 2) and s.changed_fraction == pytest.approx(2 / 3)
    assert s.first_div_mean == 2.0 and s.first_div_min == 1.0
    assert s.dH_mean == pytest.approx((0.25 + 0.0 - 0.2) / 3)
    assert s.abs_dH_mean == pytest.approx((0.25 + 0.0 + 0.2) / 3)

    [row] = analysis.divergence_table([base, other]).to_dict("records")
    assert row["run"] == "vreason" and row["pairs"] == 3 and row["changed"] == 2
    assert list(analysis.divergence_table([base, other]).columns) == [
        "run",
        "pairs",
        *analysis.DIVERGENCE_COLUMNS,
    ]

    steps = analysis.entropy_difference_by_step(base, other)
    assert steps["index"].tolist() == [0, 1, 2, 3]
    assert steps["samples"].tolist() == [3, 2, 2, 1]  # b shares token 0 only, c tokens 0-2, a all four
    assert steps["mean_diff"].tolist() == pytest.approx([0.0, 0.5, -0.3, 0.0])
    assert steps["mean_abs_diff"].tolist() == pytest.approx([0.0, 0.5, 0.3, 0.0])


def test_plot_divergence_draws_the_histogram_and_the_prefix_entropy_difference():
    base = Run(
        "b",
        "base",
        params={"method.controller.name": "none"},
        predictions=[traced(f"s{i}", [1, 2, 3, 4, 5], [1.0] * 5) for i in range(4)],
    )
    other = Run(
        "o",
        "vreason",
        predictions=[
            traced(f"s{i}", [1, 2, 3, 4, 5][: 2 + i] + [9] * (3 - i), [1.0, 1.1, 1.2, 1.3, 1.4])
            for i in range(4)
        ],
    )
    figure = analysis.plot_divergence(base, [other])
    left, right = figure.axes
    assert left.get_xlabel() == "first differing token (0-based index)"
    assert "3 changed, 1 unchanged of 4" in left.get_legend().get_texts()[0].get_text()
    assert right.get_ylabel() == "H_run − H_baseline (nats)" and len(right.get_lines()) == 3  # ΔH, |ΔH|, zero
    assert png_bytes(figure).startswith(b"\x89PNG")
    analysis.close(figure)
    empty = analysis.plot_divergence(base, [Run("e", "empty", predictions=[])])
    assert any("nothing to show" in t.get_text() for t in empty.axes[0].texts)
    analysis.close(empty)
