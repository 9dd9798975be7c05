"""Divergence from the baseline: where, and how often, a run's output leaves the baseline's on the same
sample, and how far its entropy moved while the two outputs were still the same.

V-Reason changes a token only once ΔV has moved the distribution far enough to flip a sampled token;
before that the two runs emit the same tokens with different entropies. Per sample (a run against the
baseline run over the same sample id, both finished):

- ``first_divergence``: the 0-based index of the first generated token whose id differs (where one
  output is a strict prefix of the other, the index where the shorter one stopped); None when the two
  outputs are the same token for token;
- ``shared_tokens``: the tokens both generated identically before it (the whole output when unchanged);
- ``mean_abs_entropy_diff`` and ``mean_entropy_diff``: the mean of |H_run − H_baseline| and of
  H_run − H_baseline (nats) over those shared tokens, index 0 to ``shared_tokens`` − 1. The entropy at
  the divergence index itself is also computed on a shared context, but it is left out: the prefix is
  the tokens both runs emitted alike. Index 0 comes from the prefill, before any optimisation, so
  its difference is 0 for every controller that starts at zero.

Over a run (``divergence_summary``, ``divergence_table``): the number and fraction of samples whose
output changed, the mean and smallest first-divergence index over the changed ones, and the means over
samples of the per-sample entropy differences (samples with at least one shared token)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from vreason.analysis.paired import pair_predictions
from vreason.analysis.runs import Predictions, Run, run_labels

# The per-run divergence columns of ``divergence_table`` (and the metric names ``vreason compare`` logs).
DIVERGENCE_COLUMNS = (
    "changed",
    "changed_fraction",
    "first_div_mean",
    "first_div_min",
    "abs_dH_mean",
    "dH_mean",
)


def divergence_legend() -> str:
    """What the divergence columns mean (one line, printed under the table)."""
    return (
        "Divergence columns, over the samples both runs finished (pairs): changed = samples whose "
        "generated tokens differ from the baseline's (changed_fraction: as a share of pairs); "
        "first_div_mean/first_div_min = mean and smallest 0-based index of the first differing token over "
        "the changed samples; abs_dH_mean/dH_mean = mean over samples of the mean |H_run − H_baseline| and "
        "H_run − H_baseline (nats) over the tokens both generated identically before it (the whole output "
        "when unchanged)."
    )


def first_divergence(baseline_tokens: Sequence[int], other_tokens: Sequence[int]) -> int | None:
    """0-based index of the first token where the two outputs differ; where one is a strict prefix of
    the other, its length (the index where the shorter stopped); None when they are identical."""
    for index, (a, b) in enumerate(zip(baseline_tokens, other_tokens, strict=False)):
        if a != b:
            return index
    if len(baseline_tokens) != len(other_tokens):
        return min(len(baseline_tokens), len(other_tokens))
    return None


@dataclass(frozen=True)
class SampleDivergence:
    """One sample: ``other`` against ``baseline``; entropy differences are other − baseline, in nats,
    over the ``shared_tokens`` identical leading tokens (NaN when there is none)."""

    sample_id: str
    first_divergence: int | None
    shared_tokens: int
    tokens_baseline: int
    tokens_other: int
    mean_abs_entropy_diff: float
    mean_entropy_diff: float

    @property
    def changed(self) -> bool:
        return self.first_divergence is not None


def _prefix_entropy_diff(baseline_trace: Mapping[str, Any], other_trace: Mapping[str, Any]) -> np.ndarray:
    """H_other − H_baseline at each shared leading token [shared_tokens]."""
    split = first_divergence(baseline_trace["token_ids"], other_trace["token_ids"])
    shared = len(baseline_trace["token_ids"]) if split is None else split
    a = np.asarray(baseline_trace["entropy"][:shared], dtype=float)
    b = np.asarray(other_trace["entropy"][:shared], dtype=float)
    return b - a


def sample_divergence(
    baseline_trace: Mapping[str, Any], other_trace: Mapping[str, Any], sample_id: str = ""
) -> SampleDivergence:
    """The divergence of one sample's trace (``token_ids``, ``entropy``) from the baseline's trace."""
    split = first_divergence(baseline_trace["token_ids"], other_trace["token_ids"])
    diff = _prefix_entropy_diff(baseline_trace, other_trace)
    return SampleDivergence(
        sample_id=str(sample_id),
        first_divergence=split,
        shared_tokens=int(diff.size),
        tokens_baseline=len(baseline_trace["token_ids"]),
        tokens_other=len(other_trace["token_ids"]),
        mean_abs_entropy_diff=float(np.abs(diff).mean()) if diff.size else math.nan,
        mean_entropy_diff=float(diff.mean()) if diff.size else math.nan,
    )


def _traced_pairs(baseline: Predictions, other: Predictions) -> list[tuple[Mapping, Mapping]]:
    """Pairs (same sample id) where neither prediction failed and both have a trace."""
    pairs, _, _ = pair_predictions(baseline, other)
    return [
        (a, b)
        for a, b in pairs
        if not a.get("failed", False) and not b.get("failed", False) and a.get("trace") and b.get("trace")
    ]


def divergence_by_sample(baseline: Predictions, other: Predictions) -> pd.DataFrame:
    """One row per sample both runs finished (sorted by id): ``sample_id``, ``changed``,
    ``first_divergence`` (None when unchanged), ``shared_tokens``, ``tokens_baseline``, ``tokens_other``,
    ``mean_abs_entropy_diff``, ``mean_entropy_diff``."""
    rows = []
    for a, b in _traced_pairs(baseline, other):
        d = sample_divergence(a["trace"], b["trace"], a["sample_id"])
        rows.append({"sample_id": d.sample_id, "changed": d.changed, **_fields(d)})
    columns = ["sample_id", "changed", "first_divergence", "shared_tokens", "tokens_baseline"]
    columns += ["tokens_other", "mean_abs_entropy_diff", "mean_entropy_diff"]
    return pd.DataFrame(rows, columns=columns).astype({"first_divergence": object})


def _fields(d: SampleDivergence) -> dict[str, Any]:
    return {
        "first_divergence": d.first_divergence,
        "shared_tokens": d.shared_tokens,
        "tokens_baseline": d.tokens_baseline,
        "tokens_other": d.tokens_other,
        "mean_abs_entropy_diff": d.mean_abs_entropy_diff,
        "mean_entropy_diff": d.mean_entropy_diff,
    }


@dataclass(frozen=True)
class DivergenceSummary:
    """``other`` against ``baseline`` over the ``pairs`` samples both finished. ``first_div_*`` are over
    the changed samples (NaN when none changed); the entropy means are over samples with a shared token."""

    baseline: str
    other: str
    pairs: int
    changed: int
    changed_fraction: float
    first_div_mean: float
    first_div_min: float
    abs_dH_mean: float
    dH_mean: float


def _label(run: Predictions, default: str) -> str:
    return run.label if isinstance(run, Run) else default


def divergence_summary(baseline: Predictions, other: Predictions) -> DivergenceSummary:
    """How often and where ``other``'s outputs leave ``baseline``'s, and the entropy difference before."""
    samples = [
        sample_divergence(a["trace"], b["trace"], a["sample_id"]) for a, b in _traced_pairs(baseline, other)
    ]
    splits = [d.first_divergence for d in samples if d.changed]
    with_prefix = [d for d in samples if d.shared_tokens > 0]
    return DivergenceSummary(
        baseline=_label(baseline, "baseline"),
        other=_label(other, "other"),
        pairs=len(samples),
        changed=len(splits),
        changed_fraction=len(splits) / len(samples) if samples else math.nan,
        first_div_mean=float(np.mean(splits)) if splits else math.nan,
        first_div_min=float(min(splits)) if splits else math.nan,
        abs_dH_mean=float(np.mean([d.mean_abs_entropy_diff for d in with_prefix]))
        if with_prefix
        else math.nan,
        dH_mean=float(np.mean([d.mean_entropy_diff for d in with_prefix])) if with_prefix else math.nan,
    )


def divergence_table(runs: Sequence[Run], baseline: int = 0) -> pd.DataFrame:
    """One row per run other than the baseline (``runs[baseline]``): ``run``, ``pairs`` and the
    ``DIVERGENCE_COLUMNS`` of ``divergence_summary`` against the baseline."""
    labels = run_labels(runs)
    rows = []
    for index, (run, label) in enumerate(zip(runs, labels, strict=True)):
        if index == baseline:
            continue
        s = divergence_summary(runs[baseline], run)
        rows.append({"run": label, "pairs": s.pairs, **{c: getattr(s, c) for c in DIVERGENCE_COLUMNS}})
    return pd.DataFrame(rows, columns=["run", "pairs", *DIVERGENCE_COLUMNS])


def entropy_difference_by_step(baseline: Predictions, other: Predictions) -> pd.DataFrame:
    """Along the shared prefix, per 0-based token index: ``mean_diff`` and ``mean_abs_diff`` of
    H_other − H_baseline over the samples whose outputs are still identical there, and that number of
    ``samples``."""
    diffs = [_prefix_entropy_diff(a["trace"], b["trace"]) for a, b in _traced_pairs(baseline, other)]
    length = max((d.size for d in diffs), default=0)
    grid = np.full((len(diffs), length), np.nan)  # [samples, longest shared prefix]
    for row, d in enumerate(diffs):
        grid[row, : d.size] = d
    count = np.sum(~np.isnan(grid), axis=0) if length else np.zeros(0, dtype=int)
    with np.errstate(invalid="ignore"):
        mean = np.nansum(grid, axis=0) / np.maximum(count, 1)
        mean_abs = np.nansum(np.abs(grid), axis=0) / np.maximum(count, 1)
    return pd.DataFrame(
        {"index": np.arange(length), "mean_diff": mean, "mean_abs_diff": mean_abs, "samples": count}
    )
