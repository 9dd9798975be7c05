"""Per-sample statistics: what the paper reads off one trace (EMA peak, final entropy, micro-cycles,
Fig. 2c), one row per sample, and the output tokens of every sample (Fig. 1d)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import signal

from vreason.analysis.runs import Predictions, Run, _required, _score, finished, run_labels


def ema_peak(ema: Sequence[float]) -> tuple[int, float]:
    """(index, height) of the global maximum of the EMA: the end of macro-exploration (Sec. 3,
    "Once the EMA reaches a global maximum, α becomes -1"). The first index on ties; NaN ignored."""
    values = np.asarray(ema, dtype=float)
    if values.size == 0 or np.all(np.isnan(values)):
        raise ValueError("ema_peak needs a non-empty EMA curve with at least one number")
    index = int(np.nanargmax(values))
    return index, float(values[index])


def final_entropy(entropy: Sequence[float], last_n: int = 32) -> float:
    """Mean raw entropy of the last ``last_n`` tokens (all of them if fewer): the "final entropy"
    that better models bring lower during macro-exploitation (Fig. 1a inset). The paper gives no
    window; 32 tokens smooths single-token spikes without reaching far into the reasoning."""
    values = np.asarray(entropy, dtype=float)
    if values.size == 0:
        raise ValueError("final_entropy needs at least one entropy value")
    if last_n < 1:
        raise ValueError(f"last_n must be >= 1, got {last_n}")
    return float(np.nanmean(values[-last_n:]))


class MicroCycles(NamedTuple):
    """Numbers of local maxima (micro-exploration tops) and minima (micro-exploitation bottoms)."""

    maxima: int
    minima: int


def micro_cycles(ema: Sequence[float], prominence: float) -> MicroCycles:
    """Count the micro-exploration/exploitation cycles of an EMA curve (Fig. 2c) as its local maxima
    and minima with at least ``prominence`` (nats), via ``scipy.signal.find_peaks`` on the curve and
    on its negation. The paper counts them by eye; the prominence is the knob that decides which
    wiggles are cycles. Endpoints are never extrema (``find_peaks`` needs a neighbour on each side)."""
    values = np.asarray(ema, dtype=float)
    maxima, _ = signal.find_peaks(values, prominence=prominence)
    minima, _ = signal.find_peaks(-values, prominence=prominence)
    return MicroCycles(int(maxima.size), int(minima.size))


def trace_summary(run: Predictions, prominence: float, last_n: int = 32) -> pd.DataFrame:
    """One row per finished sample with the quantities the paper reads off a trace: EMA peak step
    and height (and its position as a fraction of the output), final entropy, micro-cycle counts,
    and the number of optimisation steps."""
    rows = []
    for p in finished(run):
        trace = p.get("trace")
        if not trace or len(trace["entropy"]) == 0:
            continue
        index, height = ema_peak(trace["ema"])
        cycles = micro_cycles(trace["ema"], prominence)
        length = len(trace["entropy"])
        rows.append(
            {
                "sample_id": p["sample_id"],
                "benchmark": p.get("benchmark"),
                "score": _score(p),
                "num_tokens": length,
                "ema_peak_step": index + 1,
                "ema_peak_position": (index + 1) / length,
                "ema_peak_height": height,
                "final_entropy": final_entropy(trace["entropy"], last_n),
                "maxima": cycles.maxima,
                "minima": cycles.minima,
                "optimization_steps": int(np.sum(trace["optimized"])),
            }
        )
    return pd.DataFrame(rows)


def token_count_distribution(runs: Sequence[Run]) -> pd.DataFrame:
    """Output tokens of every finished sample of every run, long format (Fig. 1d): columns ``run``
    (``run_labels``), ``benchmark``, ``sample_id``, ``num_tokens``. Summaries are one ``groupby``
    away, e.g. ``frame.groupby(["run", "benchmark"]).num_tokens.describe()``."""
    rows = [
        {
            "run": label,
            "benchmark": p.get("benchmark", ""),
            "sample_id": p["sample_id"],
            "num_tokens": int(_required(p, "num_tokens")),
        }
        for run, label in zip(runs, run_labels(runs), strict=True)
        for p in finished(run)
    ]
    return pd.DataFrame(rows, columns=["run", "benchmark", "sample_id", "num_tokens"])
