"""Curves over generation (Fig. 1a/b, Fig. 2b): the mean of per-sample curves of unequal length,
aligned by generation step or by position in the output, with a Student-t band."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple

import numpy as np
from scipy import stats

Align = Literal["step", "normalized"]


class MeanCurve(NamedTuple):
    """Mean of several curves on a common x, with a confidence band and the number of curves at each x.

    ``lower``/``upper`` are NaN where fewer than two curves contribute (no spread to estimate)."""

    x: np.ndarray
    mean: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray


def _resample(curve: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``curve`` read at normalised positions ``x`` in [0, 1] (its first token at 0, its last at 1)."""
    if curve.size == 1:
        return np.full(x.shape, curve[0])
    return np.interp(x, np.linspace(0.0, 1.0, curve.size), curve)


def _pad(curves: list[np.ndarray]) -> np.ndarray:
    """[n_curves, longest] with NaN after each curve's end."""
    grid = np.full((len(curves), max(c.size for c in curves)), np.nan)
    for row, curve in enumerate(curves):
        grid[row, : curve.size] = curve
    return grid


def _t_interval(grid: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Column-wise mean, Student-t interval of the mean, and count of non-NaN values of ``grid``."""
    count = np.sum(~np.isnan(grid), axis=0)
    total = np.nansum(grid, axis=0)
    mean = np.divide(total, count, out=np.full(count.shape, np.nan), where=count > 0)
    squares = np.nansum((grid - mean) ** 2, axis=0)
    var = np.divide(squares, count - 1, out=np.full(count.shape, np.nan), where=count > 1)
    df = np.where(count > 1, count - 1, 1)
    quantile = np.where(count > 1, stats.t.ppf((1 + confidence) / 2, df), np.nan)
    half = quantile * np.sqrt(var / np.maximum(count, 1))
    return mean, mean - half, mean + half, count


def mean_curve(
    curves: Iterable[Sequence[float]],
    align: Align = "step",
    n_points: int = 100,
    confidence: float = 0.95,
    min_count: int = 1,
) -> MeanCurve:
    """Mean of per-sample curves of unequal length, as in the averaged entropy plots (Fig. 1a, 2b).

    ``align="step"``: x is the generation step 1..T_max; the mean at step t is over the samples still
    generating at t, and ``count`` says how many that is (it drops as samples stop). Steps where fewer
    than ``min_count`` samples remain are cut off the end. The paper does not say how it averaged
    curves of different lengths; this is the plain reading of "averaged over the dataset".

    ``align="normalized"``: each curve is linearly interpolated onto ``n_points`` positions 0..1 of
    its own length, so every sample contributes at every x (``count`` is constant).

    The band is the two-sided Student-t confidence interval of the mean at each x
    (mean ± t_{(1+confidence)/2, n-1} · s / √n), NaN where n < 2. NaN values in a curve are missing.
    """
    arrays = [np.asarray(c, dtype=float) for c in curves]
    arrays = [a for a in arrays if a.size > 0]
    if not arrays:
        raise ValueError("mean_curve needs at least one non-empty curve")
    if align == "step":
        grid = _pad(arrays)
        x = np.arange(1, grid.shape[1] + 1, dtype=float)
    elif align == "normalized":
        x = np.linspace(0.0, 1.0, n_points)
        grid = np.stack([_resample(a, x) for a in arrays])
    else:
        raise ValueError(f"align must be 'step' or 'normalized', got {align!r}")
    mean, lower, upper, count = _t_interval(grid, confidence)
    keep = count >= min_count
    if align == "step" and not keep.all():
        keep = np.arange(x.size) < int(np.argmax(~keep))  # cut at the first step below min_count
    return MeanCurve(x[keep], mean[keep], lower[keep], upper[keep], count[keep])
