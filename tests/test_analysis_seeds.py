"""Specification of ``vreason.analysis.seeds``: runs grouped by configuration, and the mean and
spread over the seeds of each."""

from __future__ import annotations

import math

import pytest
from test_analysis import run_with_outcomes

from vreason import analysis


def test_seed_summary_gives_mean_and_std_over_seeds_of_one_config():
    runs = [
        run_with_outcomes("lr1-s0", [True, False], seed=0, **{"method.lr": "1e-3"}),
        run_with_outcomes("lr1-s1", [True, True], seed=1, **{"method.lr": "1e-3"}),
        run_with_outcomes("lr2-s0", [False, False], seed=0, **{"method.lr": "1e-2"}),
    ]
    groups = analysis.group_by_config(runs)
    assert {k: [r.name for r in v] for k, v in groups.items()} == {
        "method.lr=1e-3": ["lr1-s0", "lr1-s1"],
        "method.lr=1e-2": ["lr2-s0"],
    }
    summary = analysis.seed_summary(groups).set_index("config")
    assert summary.loc["method.lr=1e-3", "accuracy_mean"] == pytest.approx(0.75)
    assert summary.loc["method.lr=1e-3", "accuracy_std"] == pytest.approx(math.sqrt(0.125))
    assert summary.loc["method.lr=1e-3", "seeds"] == "0,1"
    assert math.isnan(summary.loc["method.lr=1e-2", "accuracy_std"])
