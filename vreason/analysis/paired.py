"""Paired comparison of two runs on the samples both ran: score and accuracy difference with a paired
bootstrap interval, the exact McNemar test, and a Wilcoxon signed-rank test on output tokens."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from vreason.analysis.runs import Predictions, Run, _predictions, _required, _score


def pair_predictions(
    baseline: Predictions, other: Predictions
) -> tuple[list[tuple[Mapping[str, Any], Mapping[str, Any]]], list[str], list[str]]:
    """Inner join on ``sample_id``: (pairs sorted by id, ids only in ``baseline``, ids only in ``other``).
    A sample id that appears twice in one run is an error (the pairing would be ambiguous)."""
    indexed = []
    for name, run in (("baseline", baseline), ("other", other)):
        by_id: dict[str, Mapping[str, Any]] = {}
        for p in _predictions(run):
            sample_id = str(_required(p, "sample_id"))
            if sample_id in by_id:
                raise ValueError(f"sample_id {sample_id!r} appears twice in the {name} run")
            by_id[sample_id] = p
        indexed.append(by_id)
    a, b = indexed
    common = sorted(a.keys() & b.keys())
    return [(a[i], b[i]) for i in common], sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())


def paired_bootstrap_ci(
    differences: Sequence[float], n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-sample paired differences: samples (pairs)
    are resampled with replacement, so the correlation between the two runs is kept. Deterministic
    for a given ``seed``."""
    d = np.asarray(differences, dtype=float)
    if d.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // d.size)  # bound the [chunk, n] index matrix
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        means[start : start + rows] = d[rng.integers(0, d.size, size=(rows, d.size))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def mcnemar_exact(only_baseline_correct: int, only_other_correct: int) -> float:
    """Exact (binomial) two-sided McNemar p-value: under "the runs are equally accurate" each of the
    discordant pairs is equally likely to favour either run. 1.0 when there is no discordant pair."""
    discordant = only_baseline_correct + only_other_correct
    if discordant == 0:
        return 1.0
    return float(stats.binomtest(only_other_correct, discordant, 0.5).pvalue)


def wilcoxon_signed_rank(differences: Sequence[float]) -> tuple[float, str | None]:
    """(two-sided p, note) of the Wilcoxon signed-rank test on paired differences. Zero differences
    are dropped (scipy's ``zero_method="wilcox"``). When every difference is zero the test is
    undefined; p is then 1.0 (no evidence of a shift) and the note says so."""
    d = np.asarray(differences, dtype=float)
    if d.size == 0:
        return math.nan, "no pairs to test"
    zeros = int(np.sum(d == 0))
    if zeros == d.size:
        return 1.0, "all differences are zero: Wilcoxon test undefined, p set to 1.0"
    p = float(stats.wilcoxon(d, zero_method="wilcox").pvalue)
    return p, (f"{zeros} zero differences dropped" if zeros else None)


@dataclass(frozen=True)
class PairedComparison:
    """``other`` against ``baseline`` on the samples both ran; every difference is other − baseline.

    ``score_*`` use the raw score (accuracy for 0/1 items, MRA for regression items); ``accuracy_*``
    and McNemar use correctness, score ≥ ``threshold``; the two agree when all scores are 0/1
    (``binary_scores``). Token statistics use pairs where neither prediction failed."""

    baseline: str
    other: str
    n_pairs: int
    only_in_baseline: int  # sample ids without a partner, left out
    only_in_other: int
    binary_scores: bool
    threshold: float
    score_baseline: float
    score_other: float
    score_diff: float
    score_ci: tuple[float, float]
    accuracy_baseline: float
    accuracy_other: float
    accuracy_diff: float
    accuracy_ci: tuple[float, float]
    only_baseline_correct: int  # discordant pairs
    only_other_correct: int
    mcnemar_p: float
    token_pairs: int
    tokens_baseline: float  # mean over token pairs
    tokens_other: float
    token_diff: float
    wilcoxon_p: float
    wilcoxon_note: str | None
    confidence: float
    n_boot: int
    seed: int


def paired_comparison(
    baseline: Predictions,
    other: Predictions,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    threshold: float = 0.5,
) -> PairedComparison:
    """Paired statistics of two runs over the sample ids they share (inner join; the unmatched are
    counted, not used): score and accuracy difference with a paired bootstrap CI, the exact McNemar
    test on correctness, and the output-token difference with a Wilcoxon signed-rank test (Fig. 1c/d
    compare runs by accuracy and by tokens)."""
    pairs, only_a, only_b = pair_predictions(baseline, other)
    if not pairs:
        raise ValueError(f"the runs share no sample_id ({len(only_a)} and {len(only_b)} samples)")
    scores = np.array([[_score(a), _score(b)] for a, b in pairs])  # [n_pairs, 2]
    correct = scores >= threshold
    only_a_correct = int(np.sum(correct[:, 0] & ~correct[:, 1]))
    only_b_correct = int(np.sum(~correct[:, 0] & correct[:, 1]))
    token_rows = [
        (_required(a, "num_tokens"), _required(b, "num_tokens"))
        for a, b in pairs
        if not a.get("failed", False) and not b.get("failed", False)
    ]
    tokens = np.array(token_rows, dtype=float).reshape(-1, 2)  # [token_pairs, 2]
    wilcoxon_p, note = wilcoxon_signed_rank(tokens[:, 1] - tokens[:, 0])
    boot = {"n_boot": n_boot, "seed": seed, "confidence": confidence}
    names = [
        run.label if isinstance(run, Run) else name
        for run, name in ((baseline, "baseline"), (other, "other"))
    ]
    return PairedComparison(
        baseline=names[0],
        other=names[1],
        n_pairs=len(pairs),
        only_in_baseline=len(only_a),
        only_in_other=len(only_b),
        binary_scores=bool(np.all((scores == 0) | (scores == 1))),
        threshold=threshold,
        score_baseline=float(scores[:, 0].mean()),
        score_other=float(scores[:, 1].mean()),
        score_diff=float((scores[:, 1] - scores[:, 0]).mean()),
        score_ci=paired_bootstrap_ci(scores[:, 1] - scores[:, 0], **boot),
        accuracy_baseline=float(correct[:, 0].mean()),
        accuracy_other=float(correct[:, 1].mean()),
        accuracy_diff=float((correct[:, 1].astype(float) - correct[:, 0]).mean()),
        accuracy_ci=paired_bootstrap_ci(correct[:, 1].astype(float) - correct[:, 0], **boot),
        only_baseline_correct=only_a_correct,
        only_other_correct=only_b_correct,
        mcnemar_p=mcnemar_exact(only_a_correct, only_b_correct),
        token_pairs=len(tokens),
        tokens_baseline=float(tokens[:, 0].mean()) if len(tokens) else math.nan,
        tokens_other=float(tokens[:, 1].mean()) if len(tokens) else math.nan,
        token_diff=float((tokens[:, 1] - tokens[:, 0]).mean()) if len(tokens) else math.nan,
        wilcoxon_p=wilcoxon_p,
        wilcoxon_note=note,
        **boot,
    )
