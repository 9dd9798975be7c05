"""Sweep tables and plots: the runs of a grid of config values times seeds, each paired with the
baseline run of its seed, as one row per run (``sweep_runs_table``), one row per point with mean and
standard deviation over seeds (``sweep_summary``, ``sweep_markdown``), and one figure per swept key
(``plot_sweep``). ``vreason sweep`` builds them; the numbers are those of ``comparison_table`` (what
``vreason compare`` prints) and ``divergence_summary``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from vreason.analysis.divergence import DIVERGENCE_COLUMNS, divergence_summary
from vreason.analysis.plots import _figure, _nothing
from vreason.analysis.runs import Run, traces
from vreason.analysis.tables import comparison_table, run_summary

PAIRED_COLUMNS = ("pairs", "diff", "ci_low", "ci_high", "mcnemar_p", "token_diff", "wilcoxon_p")
# Columns of ``sweep_summary`` that get a mean and a standard deviation over seeds.
SWEEP_SEED_COLUMNS = (
    "accuracy",
    "mean_tokens",
    "diff",
    "token_diff",
    "changed_fraction",
    "first_div_mean",
    "abs_dH_mean",
    "dH_mean",
)


@dataclass
class SweepEntry:
    """One run of a sweep: its point (the same ``point`` label for every seed), seed, swept ``values``
    (a baseline point holds only the keys outside ``method``), and its ``run`` (None when it failed,
    with ``error``). ``reference`` is the label of the baseline point it is paired with."""

    point: str
    seed: int
    values: dict[str, Any] = field(default_factory=dict)
    baseline: bool = False
    run: Run | None = None
    error: str | None = None
    reference: str | None = None


FAULT_COLUMNS = ("faults", "nonfinite_entropy")


def run_faults(run: Run) -> dict[str, int]:
    """Whether a run still behaves: ``faults``, the optimisation steps the engine skipped for a
    non-finite logit, entropy or gradient (each sample's trace ``faults``), and ``nonfinite_entropy``,
    generated tokens whose recorded entropy is NaN or infinite, over the run's finished samples."""
    finished_traces = traces(run)
    return {
        "faults": sum(len(t.get("faults") or []) for t in finished_traces),
        "nonfinite_entropy": sum(
            int(np.sum(~np.isfinite(np.asarray(t["entropy"], float)))) for t in finished_traces
        ),
    }


def sweep_runs_table(
    entries: Sequence[SweepEntry], keys: Sequence[str], n_boot: int = 2000, confidence: float = 0.95
) -> pd.DataFrame:
    """One row per entry: ``point``, ``seed``, ``role`` (baseline/point), ``status`` (finished/failed),
    ``run``, ``run_id``, ``error``, the swept ``keys``, ``run_summary``'s ``n``, ``failed``, ``accuracy``,
    ``mean_tokens``, ``mean_seconds``, ``run_faults``' columns, and against the baseline of the same seed (its ``reference``)
    the paired columns of ``comparison_table`` and the ``DIVERGENCE_COLUMNS``; NaN where there is no
    finished baseline to pair with (and on the baseline rows)."""
    baselines = {(e.point, e.seed): e.run for e in entries if e.baseline and e.run is not None}
    rows = []
    for entry in entries:
        row: dict[str, Any] = {
            "point": entry.point,
            "seed": entry.seed,
            "role": "baseline" if entry.baseline else "point",
            "status": "finished" if entry.run is not None else "failed",
            "run": entry.run.label if entry.run is not None else None,
            "run_id": entry.run.run_id if entry.run is not None else None,
            "error": entry.error,
            **{key: entry.values.get(key) for key in keys},
        }
        summary = run_summary(entry.run) if entry.run is not None else {}
        for column in ("n", "failed", "accuracy", "mean_tokens", "mean_seconds"):
            row[column] = summary.get(column, math.nan)
        row.update(run_faults(entry.run) if entry.run is not None else dict.fromkeys(FAULT_COLUMNS, math.nan))
        row.update(dict.fromkeys((*PAIRED_COLUMNS, *DIVERGENCE_COLUMNS), math.nan))
        reference = baselines.get((entry.reference, entry.seed))
        if entry.run is not None and reference is not None and not entry.baseline:
            paired = comparison_table([reference, entry.run], n_boot=n_boot, confidence=confidence).iloc[1]
            row.update({column: paired[column] for column in PAIRED_COLUMNS})
            divergence = divergence_summary(reference, entry.run)
            row.update({column: getattr(divergence, column) for column in DIVERGENCE_COLUMNS})
        rows.append(row)
    return pd.DataFrame(rows)


def sweep_summary(runs_table: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """One row per point, in the order of ``runs_table``: ``point``, ``role``, the swept ``keys``,
    ``seeds`` (finished runs), ``failed_runs``, ``FAULT_COLUMNS`` summed over seeds, and for each of ``SWEEP_SEED_COLUMNS`` its ``_mean`` and
    ``_std`` over the finished seeds (sample standard deviation, ddof=1: NaN for a single seed; NaN
    values, e.g. no changed sample to place a first divergence, are left out)."""
    rows = []
    for point, group in runs_table.groupby("point", sort=False):
        done = group[group["status"] == "finished"]
        row: dict[str, Any] = {"point": point, "role": group["role"].iloc[0]}
        row.update({key: group[key].iloc[0] for key in keys})
        row["seeds"] = len(done)
        row["failed_runs"] = int((group["status"] != "finished").sum())
        for column in FAULT_COLUMNS:  # summed over seeds
            row[column] = int(pd.to_numeric(done[column], errors="coerce").fillna(0).sum())
        for column in SWEEP_SEED_COLUMNS:
            values = pd.to_numeric(done[column], errors="coerce").dropna()
            row[f"{column}_mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{column}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _plus_minus(mean: float, std: float, digits: int = 3) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = f"{mean:.{digits}g}"
    return text if std is None or math.isnan(std) else f"{text} ± {std:.{digits}g}"


def sweep_markdown(summary: pd.DataFrame, keys: Sequence[str]) -> str:
    """``sweep_summary`` as a GitHub-Markdown table with "mean ± std" cells (std over seeds)."""
    from vreason.analysis.tables import markdown_table

    shown = pd.DataFrame(
        {
            "point": summary["point"],
            **{key: summary[key] for key in keys},
            "seeds": summary["seeds"],
            "failed": summary["failed_runs"],
            "faults": summary["faults"] + summary["nonfinite_entropy"],
            **{
                name: [
                    _plus_minus(m, s)
                    for m, s in zip(summary[f"{column}_mean"], summary[f"{column}_std"], strict=True)
                ]
                for name, column in (
                    ("accuracy", "accuracy"),
                    ("tokens", "mean_tokens"),
                    ("diff", "diff"),
                    ("token_diff", "token_diff"),
                    ("changed", "changed_fraction"),
                    ("first_div", "first_div_mean"),
                    ("abs_dH", "abs_dH_mean"),
                )
            },
        }
    )
    return markdown_table(shown)


def sweep_legend() -> str:
    """What the summary's columns mean."""
    return (
        "failed = runs that raised; faults = skipped optimisation steps (non-finite values) plus "
        "non-finite entropies, summed over seeds. Each other cell is the mean ± standard deviation over "
        "seeds. accuracy = mean score; tokens = mean "
        "output tokens; against the baseline run of the same seed: diff = paired score difference "
        "(run − baseline), token_diff = paired difference in output tokens, changed = fraction of samples "
        "whose output differs from the baseline's, first_div = mean 0-based index of the first differing "
        "token over the changed samples, abs_dH = mean |H_run − H_baseline| (nats) over the tokens both "
        "generated identically. Per-run rows with intervals and p-values: runs.csv."
    )


def _shown(value: Any) -> str:
    """A swept value in a legend: 4 rather than the 4.0 a column with gaps (NaN) turns it into."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


_PANELS = (
    ("accuracy", "accuracy (mean score)"),
    ("mean_tokens", "mean output tokens"),
    ("changed_fraction", "samples changed vs baseline (fraction)"),
)


def plot_sweep(summary: pd.DataFrame, key: str, keys: Sequence[str]) -> Figure:
    """Accuracy, mean output tokens and the fraction of samples whose output left the baseline's,
    against the values of ``key`` (error bars: standard deviation over seeds), one line per
    combination of the other swept keys; baselines as dashed lines (a band of ± std) or, where ``key``
    is outside ``method`` (so the baseline has it too), as a series of their own."""
    figure, axes = _figure(13.0, 4.0, ncols=len(_PANELS))
    points = summary[summary["role"] == "point"]
    baselines = summary[summary["role"] == "baseline"]
    others = [k for k in keys if k != key]
    on_baseline = [k for k in keys if len(baselines) and baselines[k].notna().any()]  # keys outside method
    values = [v for v in points[key].tolist() if pd.notna(v)]
    numeric = bool(values) and _numeric(values)
    order = sorted(set(values)) if numeric else list(dict.fromkeys(map(str, values)))

    def x_of(value: Any) -> float:
        return float(value) if numeric else float(order.index(str(value)))

    def series(frame: pd.DataFrame, by: Sequence[str]) -> list[tuple[str, pd.DataFrame]]:
        if not by:
            return [("", frame)]
        grouped = frame.groupby([frame[k].map(_shown) for k in by], sort=False)
        return [
            (
                ", ".join(
                    f"{k}={v}" for k, v in zip(by, name if isinstance(name, tuple) else (name,), strict=True)
                ),
                g,
            )
            for name, g in grouped
        ]

    for ax, (column, ylabel) in zip(axes, _PANELS, strict=True):
        drawn = False
        for index, (name, frame) in enumerate(series(points, others)):
            frame = frame[frame[key].notna()].copy()
            frame["_x"] = [x_of(v) for v in frame[key]]
            frame = frame.sort_values("_x")
            y, err = frame[f"{column}_mean"].to_numpy(float), frame[f"{column}_std"].to_numpy(float)
            if np.all(np.isnan(y)):
                continue
            drawn = True
            ax.errorbar(
                frame["_x"],
                y,
                yerr=np.nan_to_num(err),
                marker="o",
                capsize=3,
                color=f"C{index + 1}",
                label=name or "V-Reason",
            )
        if column != "changed_fraction":
            for name, frame in series(baselines, [k for k in others if k in on_baseline]):
                label = "baseline" + (f" ({name})" if name else "")
                mean, std = frame[f"{column}_mean"].to_numpy(float), frame[f"{column}_std"].to_numpy(float)
                if key in on_baseline:
                    xs = [x_of(v) for v in frame[key]]
                    ax.errorbar(
                        xs,
                        mean,
                        yerr=np.nan_to_num(std),
                        color="C0",
                        ls="--",
                        marker="s",
                        capsize=3,
                        label=label,
                    )
                    drawn = True
                elif len(mean) and not np.isnan(mean[0]):
                    ax.axhline(mean[0], color="C0", ls="--", lw=1.2, label=label, zorder=3)
                    if not np.isnan(std[0]):
                        ax.axhspan(mean[0] - std[0], mean[0] + std[0], color="C0", alpha=0.12, lw=0)
                    drawn = True
        ax.set_xlabel(key)
        ax.set_ylabel(ylabel)
        if numeric and values and min(values) > 0 and max(values) / min(values) >= 10:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(order)), order)
        if drawn:
            ax.legend(fontsize="small")
        else:
            _nothing(ax, "no finished run" if column != "changed_fraction" else "no baseline to compare with")
    seeds = int(summary["seeds"].max()) if len(summary) else 0
    figure.suptitle(f"sweep over {key}: mean ± std over seeds (up to {seeds} per point)")
    return figure
