"""Specification of ``vreason.analysis.sweeps`` on hand-made runs: each run paired with the baseline of
its seed, mean and standard deviation over seeds per point, and one figure per swept key."""

from __future__ import annotations

import math

import pytest
from test_analysis_divergence import traced
from test_analysis_plots import png_bytes

from vreason import analysis
from vreason.analysis import Run, SweepEntry

KEYS = ["method.optimizer.lr", "method.schedule.step_size"]


def run(name: str, outputs: list[list[int]], scores: list[float]) -> Run:
    predictions = [traced(f"s{i}", tokens, [1.0] * len(tokens)) for i, tokens in enumerate(outputs)]
    for p, score in zip(predictions, scores, strict=True):
        p.update(score=score, seconds=1.0)
    return Run(f"id-{name}", name, predictions=predictions)


def entries() -> list[SweepEntry]:
    same = [[1, 2, 3], [1, 2, 3]]
    found = [
        SweepEntry("baseline", seed, baseline=True, run=run(f"b{seed}", same, [0.0, 1.0])) for seed in (0, 1)
    ]
    values = {"method.optimizer.lr": 0.1, "method.schedule.step_size": 4}
    # seed 0: the first sample changes at token 1 and becomes right; seed 1: nothing changes
    found.append(
        SweepEntry(
            "lr=0.1,k=4", 0, values, run=run("p0", [[1, 9, 3], [1, 2, 3]], [1.0, 1.0]), reference="baseline"
        )
    )
    found.append(SweepEntry("lr=0.1,k=4", 1, values, run=run("p1", same, [0.0, 1.0]), reference="baseline"))
    found.append(SweepEntry("lr=1,k=4", 0, {**values, "method.optimizer.lr": 1.0}, error="ValueError: boom"))
    return found


def test_runs_are_paired_with_the_baseline_of_their_seed_and_summarised_over_seeds():
    table = analysis.sweep_runs_table(entries(), KEYS, n_boot=200)
    by = {(r["point"], r["seed"]): r for r in table.to_dict("records")}
    assert by[("lr=0.1,k=4", 0)]["diff"] == 0.5 and by[("lr=0.1,k=4", 0)]["changed"] == 1
    assert by[("lr=0.1,k=4", 0)]["first_div_min"] == 1.0
    assert by[("lr=0.1,k=4", 1)]["diff"] == 0.0 and by[("lr=0.1,k=4", 1)]["changed"] == 0
    assert by[("lr=1,k=4", 0)]["status"] == "failed" and by[("lr=1,k=4", 0)]["error"] == "ValueError: boom"
    assert math.isnan(by[("baseline", 0)]["diff"]) and by[("baseline", 0)]["faults"] == 0

    summary = {r["point"]: r for r in analysis.sweep_summary(table, KEYS).to_dict("records")}
    point = summary["lr=0.1,k=4"]
    assert point["seeds"] == 2 and point["failed_runs"] == 0
    assert point["accuracy_mean"] == pytest.approx(0.75) and point["accuracy_std"] == pytest.approx(
        0.25 * 2**0.5
    )
    assert point["changed_fraction_mean"] == pytest.approx(0.25)
    assert point["first_div_mean_mean"] == 1.0 and math.isnan(point["first_div_mean_std"])  # one seed changed
    assert summary["lr=1,k=4"]["seeds"] == 0 and summary["lr=1,k=4"]["failed_runs"] == 1
    text = analysis.sweep_markdown(analysis.sweep_summary(table, KEYS), KEYS)
    assert "| lr=0.1,k=4 | 0.1 | 4 | 2 | 0 | 0 | 0.75 ± 0.354 |" in text


def test_plot_sweep_draws_each_panel_against_the_key_with_a_line_per_other_value_and_the_baseline():
    summary = analysis.sweep_summary(analysis.sweep_runs_table(entries(), KEYS, n_boot=200), KEYS)
    figure = analysis.plot_sweep(summary, "method.optimizer.lr", KEYS)
    accuracy, tokens, changed = figure.axes
    assert [ax.get_xlabel() for ax in figure.axes] == ["method.optimizer.lr"] * 3
    assert accuracy.get_xscale() == "log"  # 0.1 to 1: a decade
    labels = [t.get_text() for t in accuracy.get_legend().get_texts()]
    assert "method.schedule.step_size=4" in labels and "baseline" in labels  # 4, not 4.0
    assert changed.get_ylabel() == "samples changed vs baseline (fraction)"
    assert png_bytes(figure).startswith(b"\x89PNG")
    analysis.close(figure)
