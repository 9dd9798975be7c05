"""The paper's figures (entropy curves, α before the peak, output tokens) and the divergence from a
baseline as matplotlib Figures on an Agg canvas, returned and never shown: pyplot is not used, so no
GUI backend or figure registry.

Every figure says "nothing to show" (and why) where it has no data, labels a baseline run (controller
``none`` in its params) as such, and token plots mark ``sampling.max_new_tokens`` (read from the runs'
params, or given): outputs that stop there were cut off, not finished."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from vreason.analysis.alpha import AlphaSource, alpha_before_peak
from vreason.analysis.curves import Align, mean_curve
from vreason.analysis.divergence import divergence_by_sample, entropy_difference_by_step
from vreason.analysis.per_sample import ema_peak, token_count_distribution
from vreason.analysis.runs import Run, run_labels, traces


def _figure(width: float, height: float, **subplots: Any) -> tuple[Figure, Any]:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(**subplots)


def _colors(n: int) -> list[str]:
    return [f"C{i % 10}" for i in range(n)]


def _is_baseline(run: Run) -> bool:
    """A run without a controller: ``method.controller.name`` none (or an older run's ``method`` param)."""
    return run.params.get("method.controller.name") == "none" or run.params.get("method") == "baseline"


def _labels(runs: Sequence[Run]) -> list[str]:
    """Legend labels: ``run_labels``, with " (baseline)" where a baseline's name does not say so."""
    return [
        f"{label} (baseline)" if _is_baseline(run) and "baseline" not in label else label
        for run, label in zip(runs, run_labels(runs), strict=True)
    ]


def _max_new_tokens(runs: Sequence[Run], given: int | None) -> int | None:
    """``given``, else the runs' ``sampling.max_new_tokens`` param when they all have the same one."""
    if given is not None:
        return given
    values = {run.params.get("sampling.max_new_tokens") for run in runs}
    value = values.pop() if len(values) == 1 else None
    return int(value) if value is not None and str(value).isdigit() else None


def _title(runs: Sequence[Run], text: str) -> str:
    """A one-run figure names its run (logged per run, it must say which run and whether a baseline)."""
    return f"{_labels(runs)[0]}: {text}" if len(runs) == 1 else text


def _nothing(ax: Any, why: str) -> None:
    ax.text(
        0.5, 0.5, f"nothing to show:\n{why}", ha="center", va="center", transform=ax.transAxes, color="0.3"
    )


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
    max_new_tokens: int | None = None,
) -> Figure:
    """Mean raw entropy (thin) and mean EMA (thick) per run with their t-interval bands, and a marker
    at the peak of the mean EMA (Fig. 1a/b, Fig. 2b: "lower and delayed" peaks). With
    ``align="step"`` a lower panel shows how many samples are still generating at each step, and a
    dotted line marks ``max_new_tokens`` (default: the runs' ``sampling.max_new_tokens``)."""
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
    for run, label, color in zip(runs, _labels(runs), _colors(len(runs)), strict=True):
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
    limit = _max_new_tokens(runs, max_new_tokens)
    if drawn and step and limit is not None:
        for axis in axes[:, 0]:
            axis.axvline(limit, color="0.4", ls=":", lw=1.2)
        ax.plot([], [], color="0.4", ls=":", label=f"max_new_tokens = {limit}")
    if not drawn:
        _nothing(
            ax,
            "no finished sample generated a token"
            + (f" (or fewer than {min_count})" if min_count > 1 else ""),
        )
    ax.set_ylabel("entropy (nats)")
    ax.set_title(
        _title(runs, f"mean entropy and EMA, {100 * confidence:g}% t-interval of the mean; ▼ EMA peak")
    )
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
    labels, colors = _labels(runs), _colors(len(runs))
    width = 0.8 / max(len(runs), 1)
    counted = [alpha_before_peak(traces(run), only_optimized=only_optimized, source=source) for run in runs]
    steps = "optimisation steps" if only_optimized else "steps"
    ax.set_xticks([0, 1], ["α = +1\n(micro-exploration)", "α = −1\n(micro-exploitation)"])
    ax.set_ylabel(f"{steps} before EMA peak (count)")
    ax.set_title(
        _title(runs, "α before the EMA peak" + (" (recomputed from EMA)" if source == "ema" else ""))
    )
    if not any(c.steps for c in counted):
        why = f"no {steps} before any sample's EMA peak"
        if only_optimized and runs and all(_is_baseline(r) for r in runs):
            why += "\n(a baseline never optimises: read it with only_optimized=False)"
        _nothing(ax, why)
        return figure
    for i, (counts, label, color) in enumerate(zip(counted, labels, colors, strict=True)):
        x = np.arange(2) - 0.4 + width * (i + 0.5)
        bars = ax.bar(
            x,
            [counts.explore, counts.exploit],
            width,
            color=color,
            label=f"{label} ({counts.samples} samples)",
        )
        ax.bar_label(bars, fontsize="small")
    ax.legend(fontsize="small")
    return figure


def plot_token_counts(
    runs: Sequence[Run], by_benchmark: bool = True, max_new_tokens: int | None = None
) -> Figure:
    """Box plots of output tokens per sample, one box per run, grouped by benchmark (Fig. 1d); the
    mean is the white diamond, samples beyond the whiskers are grey crosses, and a dashed line marks
    ``max_new_tokens`` (default: the runs' ``sampling.max_new_tokens``). ``by_benchmark=False`` pools
    each run's samples."""
    frame = token_count_distribution(runs)
    if not by_benchmark:
        frame = frame.assign(benchmark="all")
    benchmarks = sorted(frame["benchmark"].unique())
    labels, colors = _labels(runs), _colors(len(runs))
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
                meanprops={
                    "marker": "D",
                    "markersize": 7,
                    "markerfacecolor": "white",
                    "markeredgecolor": "black",
                },
                flierprops={"marker": "x", "markersize": 5, "markeredgecolor": "0.45"},
                medianprops={"color": "black"},
            )
    ax.set_xlabel("benchmark")
    ax.set_ylabel("output tokens per sample (tokens)")
    ax.set_title(_title(runs, "output tokens per sample"))
    if frame.empty:
        _nothing(ax, "no finished samples")
        return figure
    ax.set_xticks(range(len(benchmarks)), benchmarks)
    handles = [Patch(facecolor=c, alpha=0.6, label=lab) for c, lab in zip(colors, labels, strict=True)]
    handles += [
        Line2D([], [], color="black", label="median"),
        Line2D([], [], marker="D", ls="none", mfc="white", mec="black", label="mean"),
        Line2D([], [], marker="x", ls="none", mec="0.45", label="beyond 1.5 IQR"),
    ]
    limit = _max_new_tokens(runs, max_new_tokens)
    if limit is not None:
        ax.axhline(limit, color="0.3", ls="--", lw=1)
        handles.append(Line2D([], [], color="0.3", ls="--", label=f"max_new_tokens = {limit}"))
    ax.legend(handles=handles, fontsize="small")
    return figure


def plot_divergence(baseline: Run, runs: Sequence[Run]) -> Figure:
    """Where each run's outputs leave the baseline's (left: histogram of the first differing token's
    0-based index over the changed samples; the legend counts the unchanged ones) and what its entropy
    did before (right: mean H_run − H_baseline, solid, and mean |H_run − H_baseline|, dashed, per token
    index over the samples still identical there)."""
    figure, (left, right) = _figure(11.0, 4.2, ncols=2)
    labels, colors = _labels(runs), _colors(len(runs) + 1)[1:]  # C0 stays the baseline's colour
    splits = {label: divergence_by_sample(baseline, run) for run, label in zip(runs, labels, strict=True)}
    changed = [
        frame.loc[frame["changed"], "first_divergence"].astype(int).to_numpy() for frame in splits.values()
    ]
    longest = max((int(c.max()) for c in changed if c.size), default=0)
    bins = np.arange(0, longest + 2) - 0.5 if longest < 60 else 30
    for (label, frame), values, color in zip(splits.items(), changed, colors, strict=True):
        unchanged = int((~frame["changed"]).sum())
        text = f"{label}: {values.size} changed, {unchanged} unchanged of {len(frame)}"
        if values.size:
            left.hist(values, bins=bins, color=color, alpha=0.6, label=text)
        else:
            left.plot([], [], color=color, label=text)
    left.set_xlabel("first differing token (0-based index)")
    left.set_ylabel("samples")
    left.set_title(f"first divergence from {_labels([baseline])[0]}")
    if any(len(frame) for frame in splits.values()):
        left.legend(fontsize="small")
    else:
        _nothing(left, "no sample finished in both runs")
    drawn = False
    for run, label, color in zip(runs, labels, colors, strict=True):
        steps = entropy_difference_by_step(baseline, run)
        if steps.empty:
            continue
        drawn = True
        right.plot(steps["index"], steps["mean_diff"], color=color, lw=1.5, label=f"{label}: mean ΔH")
        right.plot(
            steps["index"], steps["mean_abs_diff"], color=color, lw=1.0, ls="--", label=f"{label}: mean |ΔH|"
        )
    right.axhline(0.0, color="0.5", lw=0.8)
    right.set_xlabel("token index (0-based) within the shared prefix")
    right.set_ylabel("H_run − H_baseline (nats)")
    right.set_title("entropy difference while the outputs are identical")
    if drawn:
        right.legend(fontsize="small")
    else:
        _nothing(right, "no shared tokens")
    return figure
