"""The scaling benchmark's plots: each variant's time over generate's against video tokens and against batch,
whole call and decode step side by side, with the 1.0 line and the targets; PNGs drawn on an Agg canvas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.report import limit_text
from bench.scaling_report import ran_in_lockstep

# (the row's key, the target metric drawn with it, the panel's title)
PANELS = (
    ("call_ratio_vs_generate", "call_ratio", "whole call per generated token"),
    ("step_ratio_vs_generate", "step_ratio", "decode step"),
)
AXES = {"video_tokens": "video tokens per sample", "batch": "batch size (samples)"}
WHERE = {"video_tokens": "{} video tokens", "batch": "batch {}"}  # one value of an axis, in words
LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _target_label(target: dict[str, Any]) -> str:
    """``full_k4 target <= 1.1 at 2048 video tokens``: the limit and where it applies."""
    where = [WHERE[key].format(target[key]) for key in WHERE if target.get(key) is not None]
    return f"{target['variant']} target {limit_text(target)}" + (" at " + ", ".join(where) if where else "")


def ratio_figure(report: dict[str, Any], x_key: str, row_key: str) -> Figure:
    """One row of panels per value of ``row_key`` (batch or video tokens), ``x_key`` on a log2 axis; a line
    per variant (colour) and generated-token count (line style). A target that names one ``x_key`` value is
    a bar at that value; one that names none is a dotted line across."""
    points = report["points"]
    variants = [v for v in points[0]["variants"] if v != "generate"]
    rows = sorted({p[row_key] for p in points})
    xs = sorted({p[x_key] for p in points})
    new_tokens = sorted({p["new_tokens"] for p in points})
    figure = Figure(figsize=(11, 1.4 + 3.2 * len(rows)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(nrows=len(rows), ncols=len(PANELS), squeeze=False)
    for ax_row, row_value in zip(axes, rows, strict=True):
        for ax, (key, metric, title) in zip(ax_row, PANELS, strict=True):
            ax.axhline(1.0, color="black", lw=1, ls="--", label="model.generate (= 1)")
            for i, variant in enumerate(variants):
                color, marker = f"C{i}", MARKERS[i % len(MARKERS)]
                for style, n in zip(LINE_STYLES, new_tokens, strict=False):
                    series = sorted(
                        (p[x_key], p["variants"][variant][key])
                        for p in points
                        if p[row_key] == row_value and p["new_tokens"] == n
                    )
                    if series:
                        ax.plot(
                            *zip(*series, strict=True),
                            color=color,
                            ls=style,
                            marker=marker,
                            ms=7,
                            alpha=0.85,
                            label=f"{variant}, {n} new tokens",
                        )
                for target in report["config"]["targets"]:
                    if target["variant"] != variant or target["metric"] != metric:
                        continue
                    if target.get(row_key) not in (None, row_value) or target.get(x_key) not in (None, *xs):
                        continue  # not in this row, or at a value this axis does not show
                    label = _target_label(target)
                    if target.get(x_key) is None:
                        ax.axhline(target["limit"], color=color, ls=":", lw=1.5, label=label)
                    else:
                        ax.plot(
                            [target[x_key]],
                            [target["limit"]],
                            color=color,
                            marker="_",
                            ms=22,
                            mew=2.5,
                            ls="none",
                            label=label,
                        )
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.set_xlim(xs[0] / 1.4, xs[-1] * 1.4)  # the same range in every panel
            ax.minorticks_off()
            ax.set_xlabel(AXES[x_key])
            ax.set_ylabel("time / model.generate's time (x)")
            ax.set_title(f"{title}, {WHERE[row_key].format(row_value)}", fontsize=10)
            ax.grid(alpha=0.3)
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    figure.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=3, fontsize=9)
    machine, foreign = report["machine"], report.get("foreign_load")
    load = (
        f"; other processes {100 * foreign['other_processes_share']:.0f}% of the machine" if foreign else ""
    )
    repeats = _plural(points[0]["repeats"], "repeat")
    how = (
        f"medians of the paired ratios over {repeats}, variants in lockstep"
        if ran_in_lockstep(points)
        else f"medians over {repeats}, variants alternating"
    )
    figure.suptitle(
        f"{report['benchmark']}: each variant's time over model.generate's, against "
        f"{AXES[x_key]}\n({how}; {machine['device']}, {_plural(machine['torch_threads'], 'thread')}{load})"
    )
    return figure


def write_plots(report: dict[str, Any], out_dir: Path) -> list[str]:
    """``ratio_vs_video_tokens.png`` and ``ratio_vs_batch.png`` in ``out_dir``; their file names."""
    if not report["points"]:
        return []
    names = []
    for x_key, row_key in (("video_tokens", "batch"), ("batch", "video_tokens")):
        name = f"ratio_vs_{x_key}.png"
        figure = ratio_figure(report, x_key, row_key)
        figure.savefig(out_dir / name, dpi=110)
        figure.clear()
        names.append(name)
    return names
