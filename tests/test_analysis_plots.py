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
