"""Specification of ``vreason.analysis.tables``: the comparison table against a baseline run, and
writing tables as Markdown and CSV."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from test_analysis import seven_versus_two

from vreason import analysis
from vreason.analysis import Run


def test_comparison_table_has_one_row_per_run_against_the_baseline():
    base, vreason = seven_versus_two()
    same = Run("id-same", "same", predictions=base.predictions)
    table = analysis.comparison_table([base, vreason, same], baseline=0, n_boot=200)
    assert table["run"].tolist() == ["base", "vreason", "same"]
    assert table["n"].tolist() == [23, 21, 23]
    assert table.loc[0, "accuracy"] == pytest.approx(11 / 23)
    assert table[["diff", "mcnemar_p", "wilcoxon_p"]].iloc[0].isna().all()  # baseline vs itself: empty
    assert table.loc[1, "diff"] == pytest.approx(0.25)
    assert table.loc[1, "ci_low"] < 0.25 < table.loc[1, "ci_high"]
    assert table.loc[1, "mcnemar_p"] == pytest.approx(92 / 512)
    assert table.loc[2, "diff"] == 0.0 and table.loc[2, "mcnemar_p"] == 1.0


def test_comparison_table_baseline_by_name():
    base, vreason = seven_versus_two()
    table = analysis.comparison_table([vreason, base], baseline="base", n_boot=100)
    assert math.isnan(table.loc[1, "diff"]) and table.loc[0, "diff"] == pytest.approx(0.25)


def test_markdown_table_renders_header_alignment_and_missing_values():
    frame = pd.DataFrame({"run": ["base", "v|r"], "n": [10, 12], "diff": [math.nan, 0.123456]})
    assert analysis.markdown_table(frame, digits=3).splitlines() == [
        "| run | n | diff |",
        "|---|---:|---:|",
        "| base | 10 | – |",
        "| v\\|r | 12 | 0.123 |",
    ]


def test_write_table_writes_markdown_and_csv(tmp_path):
    frame = pd.DataFrame({"run": ["a"], "accuracy": [0.5]})
    assert analysis.write_table(frame, tmp_path / "t.md").read_text().startswith("| run | accuracy |")
    pd.testing.assert_frame_equal(pd.read_csv(analysis.write_table(frame, tmp_path / "t.csv")), frame)
    with pytest.raises(ValueError, match="md or .csv"):
        analysis.write_table(frame, tmp_path / "t.txt")
