"""Specification of ``vreason.analysis.plots``: every figure draws on an Agg canvas with labelled
axes, one series per run, and does not fail on runs without traces."""

from __future__ import annotations

import io

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from test_analysis import prediction

from vreason import analysis
from vreason.analysis import Run


def plotted_runs() -> list[Run]:
    a = Run("id-a", "base", predictions=[prediction(f"s{i}", num_tokens=5 + 3 * i) for i in range(4)])
    b = Run("id-b", "vreason", predictions=[prediction(f"s{i}", num_tokens=4 + i) for i in range(4)])
    b.predictions.append(prediction("failed", failed=True))
    return [a, b]


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


@pytest.mark.parametrize("align", ["step", "normalized"])
def test_plot_entropy_curves_labels_axes_with_units(align):
    figure = analysis.plot_entropy_curves(plotted_runs(), align=align)
    assert isinstance(figure.canvas, FigureCanvasAgg)
    assert figure.axes[0].get_ylabel() == "entropy (nats)"
    xlabel = figure.axes[-1].get_xlabel()
    assert xlabel == "generation step (tokens)" if align == "step" else "fraction" in xlabel
    assert len(figure.axes) == (2 if align == "step" else 1)  # the step plot shows samples still generating
    assert png_bytes(figure).startswith(b"\x89PNG")
    analysis.close(figure)


def test_plot_alpha_histogram_and_token_counts_draw_one_series_per_run():
    runs = plotted_runs()
    alpha = analysis.plot_alpha_histogram(runs)
    assert [t.get_text() for t in alpha.axes[0].get_legend().get_texts()] == [
        "base (4 samples)",
        "vreason (4 samples)",
    ]
    tokens = analysis.plot_token_counts(runs)
    assert tokens.axes[0].get_ylabel() == "output tokens per sample (tokens)"
    assert png_bytes(alpha).startswith(b"\x89PNG") and png_bytes(tokens).startswith(b"\x89PNG")


def test_plots_of_runs_without_traces_do_not_fail():
    empty = [Run("id-x", "x", predictions=[prediction("a", failed=True)])]
    for figure in (
        analysis.plot_entropy_curves(empty),
        analysis.plot_alpha_histogram(empty),
        analysis.plot_token_counts(empty),
    ):
        assert png_bytes(figure).startswith(b"\x89PNG")


def texts(figure: Figure) -> str:
    return " ".join(t.get_text() for ax in figure.axes for t in ax.texts)


def test_a_plot_without_data_says_nothing_to_show_and_why():
    baseline = Run(
        "id-b",
        "smoke/plain",
        params={"method.controller.name": "none"},
        predictions=plotted_runs()[0].predictions,
    )
    for p in baseline.predictions:
        p["trace"]["optimized"] = [False] * len(p["trace"]["optimized"])
    alpha = analysis.plot_alpha_histogram([baseline])  # a baseline has no optimisation step to count
    assert "nothing to show" in texts(alpha) and "a baseline never optimises" in texts(alpha)
    assert not [p for p in alpha.axes[0].patches]  # no empty bars pretending to be data
    empty = [Run("id-x", "x", predictions=[prediction("a", failed=True)])]
    assert "nothing to show" in texts(analysis.plot_token_counts(empty))
    assert "nothing to show" in texts(analysis.plot_entropy_curves(empty))


def test_baselines_are_labelled_and_token_plots_mark_max_new_tokens():
    base, steered = plotted_runs()
    base.params.update({"method.controller.name": "none", "sampling.max_new_tokens": "16"})
    steered.params["sampling.max_new_tokens"] = "16"
    tokens = analysis.plot_token_counts([base, steered])
    legend = [t.get_text() for t in tokens.axes[0].get_legend().get_texts()]
    assert (
        legend[:2] == ["base (baseline)", "vreason"] and "max_new_tokens = 16" in legend and "mean" in legend
    )
    assert any(
        line.get_ydata()[0] == 16 for line in tokens.axes[0].get_lines() if line.get_linestyle() == "--"
    )
    curves = analysis.plot_entropy_curves([base, steered])
    labels = [t.get_text() for t in curves.axes[0].get_legend().get_texts()]
    assert labels[0].startswith("base (baseline): entropy") and "max_new_tokens = 16" in labels
    single = analysis.plot_entropy_curves([base])
    assert single.axes[0].get_title().startswith("base (baseline):")  # a per-run plot names its run
