"""The paper's figures (entropy curves, α before the peak, output tokens) as matplotlib Figures on an
Agg canvas, returned and never shown: pyplot is not used, so no GUI backend or figure registry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from vreason.analysis.alpha import AlphaSource, alpha_before_peak
from vreason.analysis.curves import Align, mean_curve
from vreason.analysis.per_sample import ema_peak, token_count_distribution
from vreason.analysis.runs import Run, run_labels, traces


def _figure(width: float, height: float, **subplots: Any) -> tuple[Figure, Any]:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(**subplots)


def _colors(n: int) -> list[str]:
    return [f"C{i % 10}" for i in range(n)]


def close(figure: Figure) -> None:
    """Free a figure's artists. Figures here are not registered with pyplot, so nothing else holds
    them; this is for callers that log many figures in a loop."""
    figure.clear()


def plot_entropy_curves(
    runs: Sequence[Run],
    align: Align = "step",
    n_points: int = 100,
    confidence: float = 0.95,
    min_count: int = 1,
) -> Figure:
    """Mean raw entropy (thin) and mean EMA (thick) per run with their t-interval bands, and a marker
    at the peak of the mean EMA (Fig. 1a/b, Fig. 2b: "lower and delayed" peaks). With
    ``align="step"`` a lower panel shows how many samples are still generating at each step."""
    step = align == "step"
    figure, axes = _figure(
        7.5,
        5.5 if step else 4.5,
        nrows=2 if step else 1,
        sharex=True,
        **({"height_ratios": [3, 1]} if step else {}),
        squeeze=False,
    )
    ax = axes[0, 0]
    drawn = False
    for run, label, color in zip(runs, run_labels(runs), _colors(len(runs)), strict=True):
        run_traces = traces(run)
        if not run_traces:
            continue
        options = {"align": align, "n_points": n_points, "confidence": confidence, "min_count": min_count}
        raw = mean_curve([t["entropy"] for t in run_traces], **options)
        ema = mean_curve([t["ema"] for t in run_traces], **options)
        if raw.x.size == 0:  # fewer than min_count samples
            continue
        drawn = True
        ax.plot(
            raw.x, raw.mean, color=color, lw=0.8, alpha=0.6, label=f"{label}: entropy (n={len(run_traces)})"
        )
        ax.fill_between(raw.x, raw.lower, raw.upper, color=color, alpha=0.12, lw=0)
        ax.plot(ema.x, ema.mean, color=color, lw=2.0, label=f"{label}: EMA")
        ax.fill_between(ema.x, ema.lower, ema.upper, color=color, alpha=0.25, lw=0)
        peak, height = ema_peak(ema.mean)
        ax.plot([ema.x[peak]], [height], marker="v", ms=9, color=color, mec="black", ls="none")
        if step:
            axes[1, 0].plot(raw.x, raw.count, color=color, drawstyle="steps-post")
    if not drawn:
        ax.text(
            0.5,
            0.5,
            "no traces (or fewer than min_count samples)",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_ylabel("entropy (nats)")
    ax.set_title(f"Mean entropy and EMA, {100 * confidence:g}% t-interval of the mean; ▼ EMA peak")
    if drawn:
        ax.legend(fontsize="small")
    bottom = axes[-1, 0]
    bottom.set_xlabel(
        "generation step (tokens)" if step else "position in output (fraction of the sample's tokens)"
    )
    if step:
        bottom.set_ylabel("samples\ngenerating")
    return figure


def plot_alpha_histogram(
    runs: Sequence[Run],
    only_optimized: bool = True,
    source: AlphaSource = "recorded",
) -> Figure:
    """Bars of α = +1 (micro-exploration) and α = -1 (micro-exploitation) counts before the EMA
    peak, one bar per run in each group (Fig. 5; see ``alpha_before_peak`` for the options)."""
    figure, ax = _figure(6.0, 4.0)
    labels, colors = run_labels(runs), _colors(len(runs))
    width = 0.8 / max(len(runs), 1)
    for i, (run, label, color) in enumerate(zip(runs, labels, colors, strict=True)):
        counts = alpha_before_peak(traces(run), only_optimized=only_optimized, source=source)
        x = np.arange(2) - 0.4 + width * (i + 0.5)
        bars = ax.bar(
            x,
            [counts.explore, counts.exploit],
            width,
            color=color,
            label=f"{label} ({counts.samples} samples)",
        )
        ax.bar_label(bars, fontsize="small")
    ax.set_xticks([0, 1], ["α = +1\n(micro-exploration)", "α = −1\n(micro-exploitation)"])
    steps = "optimisation steps" if only_optimized else "steps"
    ax.set_ylabel(f"{steps} before EMA peak (count)")
    ax.set_title("α before the EMA peak" + (" (recomputed from EMA)" if source == "ema" else ""))
    if runs:
        ax.legend(fontsize="small")
    return figure


def plot_token_counts(runs: Sequence[Run], by_benchmark: bool = True) -> Figure:
    """Box plots of output tokens per sample, one box per run, grouped by benchmark (Fig. 1d);
    the mean is the white marker. ``by_benchmark=False`` pools each run's samples."""
    frame = token_count_distribution(runs)
    if not by_benchmark:
        frame = frame.assign(benchmark="all")
    benchmarks = sorted(frame["benchmark"].unique())
    labels, colors = run_labels(runs), _colors(len(runs))
    figure, ax = _figure(max(5.0, 1.2 * len(benchmarks) * max(len(runs), 1)), 4.0)
    width = 0.8 / max(len(runs), 1)
    for i, (label, color) in enumerate(zip(labels, colors, strict=True)):
        data, positions = [], []
        for j, bench in enumerate(benchmarks):
            values = frame.loc[
                (frame["run"] == label) & (frame["benchmark"] == bench), "num_tokens"
            ].to_numpy()
            if values.size:
                data.append(values)
                positions.append(j - 0.4 + width * (i + 0.5))
        if data:
            ax.boxplot(
                data,
                positions=positions,
                widths=width * 0.9,
                patch_artist=True,
                showmeans=True,
                boxprops={"facecolor": color, "alpha": 0.6},
                meanprops={"marker": "o", "markerfacecolor": "white", "markeredgecolor": "black"},
                medianprops={"color": "black"},
            )
    if frame.empty:
        ax.text(0.5, 0.5, "no finished samples", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks(range(len(benchmarks)), benchmarks)
    ax.set_xlabel("benchmark")
    ax.set_ylabel("output tokens per sample (tokens)")
    ax.set_title("Output tokens per sample (○ mean)")
    ax.legend(
        handles=[Patch(facecolor=c, alpha=0.6, label=lab) for c, lab in zip(colors, labels, strict=True)],
        fontsize="small",
    )
    return figure
