"""Analysis of V-Reason runs: the paper's entropy figures and the statistics to compare runs.

What the paper reads off a run, and where it lives here:

- mean entropy and EMA over generation (Fig. 1a/b, Fig. 2b): ``mean_curve``, ``plot_entropy_curves``;
- the EMA peak ("lower and delayed"), the final entropy ("lower final entropy") and micro-cycles
  (Fig. 2c): ``ema_peak``, ``final_entropy``, ``micro_cycles``, per sample in ``trace_summary``;
- the alpha values at optimisation steps before the EMA peak (Fig. 5, Appendix E):
  ``alpha_before_peak``, ``plot_alpha_histogram``;
- output tokens per run (Fig. 1d): ``token_count_distribution``, ``plot_token_counts``;
- paired comparison of two runs on the same samples, seed spread, and a result table:
  ``paired_comparison``, ``seed_summary``, ``comparison_table``, ``markdown_table``.

Three layers, in this order: pure functions on lists/arrays; plots, which return matplotlib Figures
drawn on an Agg canvas (pyplot is never used, so no GUI backend or global figure registry is
involved); MLflow loaders, which return ``Run`` objects.

A prediction is one line of ``predictions.jsonl``: ``sample_id``, ``benchmark``, ``score`` in [0, 1],
``failed``, ``num_tokens``, ``seconds`` and ``trace`` (per generated token: ``entropy``, ``ema``,
``alpha``, ``optimized``, ``controller_norm``). Conventions used throughout:

- a failed prediction scores 0 and stays in every accuracy denominator (as ``data.scoring`` does);
  it has no trace and no token count, so curves, token and time statistics use finished ones only;
- "accuracy" of a run is its mean score, the number the paper reports (MRA for regression items);
- trace indices are 0-based; "generation step" on a plot axis is 1-based (index + 1).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import mlflow.artifacts
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient
from scipy import signal, stats

PREDICTIONS_ARTIFACT = "predictions.jsonl"
Align = Literal["step", "normalized"]
AlphaSource = Literal["recorded", "ema"]


# ---------------------------------------------------------------------------------------------------
# Runs and their predictions
# ---------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One run: its MLflow id and name (None for runs not from MLflow), params, and predictions."""

    run_id: str | None
    name: str | None
    params: dict[str, str] = field(default_factory=dict)
    predictions: list[dict] = field(default_factory=list)

    @property
    def label(self) -> str:
        """Name for legends and tables: the run name, else the first 8 characters of the id."""
        if self.name:
            return self.name
        return self.run_id[:8] if self.run_id else "run"


Predictions = Run | Sequence[Mapping[str, Any]]


def _predictions(run: Predictions) -> list[Mapping[str, Any]]:
    return list(run.predictions) if isinstance(run, Run) else list(run)


def run_labels(runs: Sequence[Run]) -> list[str]:
    """``Run.label`` of each run, with " (2)", " (3)", ... appended where labels repeat."""
    labels: list[str] = []
    for run in runs:
        label, k = run.label, 2
        while label in labels:
            label, k = f"{run.label} ({k})", k + 1
        labels.append(label)
    return labels


def finished(run: Predictions) -> list[Mapping[str, Any]]:
    """Predictions that did not fail (the ones with a trace, a token count and a time)."""
    return [p for p in _predictions(run) if not p.get("failed", False)]


def traces(run: Predictions) -> list[Mapping[str, Any]]:
    """The per-token traces of the finished predictions that generated at least one token."""
    return [p["trace"] for p in finished(run) if p.get("trace") and len(p["trace"]["entropy"]) > 0]


def _score(prediction: Mapping[str, Any]) -> float:
    """Score in [0, 1]; a failed prediction counts as 0."""
    return 0.0 if prediction.get("failed", False) else float(prediction["score"])


def _required(prediction: Mapping[str, Any], key: str) -> Any:
    if key not in prediction:
        raise KeyError(f"prediction {prediction.get('sample_id')!r} lacks {key!r}")
    return prediction[key]


def _seconds(prediction: Mapping[str, Any]) -> float:
    """Wall-clock seconds per sample: a batch's time divided by its size, as ``tracking`` does."""
    return float(_required(prediction, "seconds")) / prediction.get("batch_size", 1)


# ---------------------------------------------------------------------------------------------------
# Curves over generation (Fig. 1a/b, Fig. 2b)
# ---------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------
# One trace: EMA peak, final entropy, micro-cycles (Fig. 2c), alpha (Eq. 4, Fig. 5)
# ---------------------------------------------------------------------------------------------------


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


def alpha_from_ema(ema: Sequence[float]) -> np.ndarray:
    """α_t of Eq. 4 recomputed from an EMA curve: +1 where the EMA is at its running peak
    (H_t^ema ≥ max of the EMA so far), -1 below it. The engine already records, at every token, the α
    the run's objective gives (a baseline records what the switching rule would have used), so this
    is for traces from elsewhere, or to check a recorded α against Eq. 4."""
    values = np.asarray(ema, dtype=float)
    if values.size == 0:
        return np.zeros(0, dtype=int)
    return np.where(values >= np.maximum.accumulate(values), 1, -1)


@dataclass(frozen=True)
class AlphaCounts:
    """α values counted over steps before the EMA peak (Fig. 5), summed over ``samples`` traces."""

    explore: int  # α = +1, micro-exploration
    exploit: int  # α = -1, micro-exploitation
    samples: int

    @property
    def steps(self) -> int:
        return self.explore + self.exploit


def alpha_before_peak(
    traces: Iterable[Mapping[str, Sequence]],
    only_optimized: bool = True,
    source: AlphaSource = "recorded",
) -> AlphaCounts:
    """How often α was +1 and -1 before each sample's EMA peak, summed over samples (Fig. 5, App. E:
    "V-Reason sacrifices a few micro-exploration steps (α = 1) for a substantially larger number of
    micro-exploitation steps (α = -1)").

    "Before the peak" is the steps strictly before ``ema_peak``'s index (the peak step itself has
    α = +1 by Eq. 4 and is not counted). With ``only_optimized`` only steps that ran an optimisation
    step count (the α that acted on the controller); otherwise every step. ``source="recorded"`` reads
    the trace's α (recorded at every token, optimised or not; α = 0 from the thresholded objective is
    not counted), so a baseline is read with ``only_optimized=False``; ``"ema"`` recomputes α from the
    EMA (``alpha_from_ema``).
    """
    if source not in ("recorded", "ema"):
        raise ValueError(f"source must be 'recorded' or 'ema', got {source!r}")
    explore = exploit = samples = 0
    for trace in traces:
        ema = np.asarray(trace["ema"], dtype=float)
        alpha = np.asarray(trace["alpha"]) if source == "recorded" else alpha_from_ema(ema)
        optimized = np.asarray(trace["optimized"], dtype=bool)
        if not (ema.size == alpha.size == optimized.size):
            raise ValueError(
                f"trace lengths differ: ema {ema.size}, alpha {alpha.size}, optimized {optimized.size}"
            )
        if ema.size == 0:
            continue
        peak, _ = ema_peak(ema)
        before = alpha[:peak][optimized[:peak]] if only_optimized else alpha[:peak]
        explore += int(np.sum(before == 1))
        exploit += int(np.sum(before == -1))
        samples += 1
    return AlphaCounts(explore=explore, exploit=exploit, samples=samples)


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


# ---------------------------------------------------------------------------------------------------
# Output tokens (Fig. 1d)
# ---------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------
# Paired comparison of two runs on the same samples
# ---------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------
# Tables: one row per run, seeds, Markdown/CSV
# ---------------------------------------------------------------------------------------------------


def run_summary(run: Predictions) -> dict[str, float]:
    """n, failed, accuracy (mean score, failures as 0), mean output tokens and mean seconds per sample
    (finished samples only)."""
    predictions = _predictions(run)
    done = finished(predictions)
    return {
        "n": len(predictions),
        "failed": len(predictions) - len(done),
        "accuracy": float(np.mean([_score(p) for p in predictions])) if predictions else math.nan,
        "mean_tokens": float(np.mean([_required(p, "num_tokens") for p in done])) if done else math.nan,
        "mean_seconds": float(np.mean([_seconds(p) for p in done])) if done else math.nan,
    }


def comparison_table(
    runs: Sequence[Run],
    baseline: int | str = 0,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """One row per run: ``run``, ``n``, ``failed``, ``accuracy``, ``mean_tokens``, ``mean_seconds``,
    and against the baseline run (index into ``runs`` or its label): ``pairs`` (shared sample ids),
    ``diff`` (paired mean score difference) with its bootstrap ``ci_low``/``ci_high``, ``mcnemar_p``,
    ``token_diff`` and ``wilcoxon_p``. The baseline's own comparison columns are NaN."""
    labels = run_labels(runs)
    if isinstance(baseline, str):
        if baseline not in labels:
            raise ValueError(f"baseline {baseline!r} is not one of the runs: {labels}")
        baseline = labels.index(baseline)
    reference = runs[baseline]
    rows = []
    for index, (run, label) in enumerate(zip(runs, labels, strict=True)):
        row: dict[str, Any] = {"run": label, **run_summary(run)}
        vs = dict.fromkeys(
            ["pairs", "diff", "ci_low", "ci_high", "mcnemar_p", "token_diff", "wilcoxon_p"], math.nan
        )
        if index != baseline:
            c = paired_comparison(reference, run, n_boot=n_boot, seed=seed, confidence=confidence)
            vs = {
                "pairs": c.n_pairs,
                "diff": c.score_diff,
                "ci_low": c.score_ci[0],
                "ci_high": c.score_ci[1],
                "mcnemar_p": c.mcnemar_p,
                "token_diff": c.token_diff,
                "wilcoxon_p": c.wilcoxon_p,
            }
        rows.append(row | vs)
    return pd.DataFrame(rows)


# Params that differ between seeds of one configuration (``model.seed`` is not one: it picks the weights
# of the random tiny models, so it changes the model).
SEED_INDEPENDENT = ("seed", "name", "output_dir", "tracking")


def group_by_config(runs: Sequence[Run], ignore: Sequence[str] = SEED_INDEPENDENT) -> dict[str, list[Run]]:
    """Runs grouped by their params minus ``ignore`` (a key is ignored if it equals an entry or starts
    with it followed by "."), i.e. the seeds of one configuration together. Each group is named by
    the params that tell the groups apart ("all" when there is one group)."""

    def config(run: Run) -> tuple[tuple[str, str], ...]:
        kept = {
            k: v for k, v in run.params.items() if not any(k == i or k.startswith(f"{i}.") for i in ignore)
        }
        return tuple(sorted(kept.items()))

    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(config(run), []).append(run)
    if len(groups) == 1:
        return {"all": next(iter(groups.values()))}
    dicts = [dict(key) for key in groups]
    differing = sorted({k for d in dicts for k in d if len({d.get(k) for d in dicts}) > 1})
    return {
        ", ".join(f"{k}={d.get(k)}" for k in differing): members
        for d, members in zip(dicts, groups.values(), strict=True)
    }


def seed_summary(runs_by_config: Mapping[str, Sequence[Run]]) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof=1; NaN for a single run) of accuracy, mean tokens and
    mean seconds over the runs of each configuration (runs differing only in seed, e.g. from
    ``group_by_config``). Columns: ``config``, ``runs``, ``seeds`` (the ``seed`` params), then
    ``<metric>_mean`` and ``<metric>_std``."""
    rows = []
    for config, runs in runs_by_config.items():
        summaries = pd.DataFrame([run_summary(run) for run in runs])
        row: dict[str, Any] = {
            "config": config,
            "runs": len(runs),
            "seeds": ",".join(str(run.params.get("seed", "?")) for run in runs),
        }
        for metric in ("accuracy", "mean_tokens", "mean_seconds"):
            row[f"{metric}_mean"] = float(summaries[metric].mean())
            row[f"{metric}_std"] = float(summaries[metric].std(ddof=1)) if len(runs) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return f"{float(value):.{digits}g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub-Markdown table of ``frame`` (columns as header, no index): floats with ``digits``
    significant digits, NaN as "–", numeric columns right-aligned. Written here so that no optional
    dependency (``tabulate``) is needed."""
    header = [str(c) for c in frame.columns]
    numeric = [
        pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
        for c in frame.columns
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, digits) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_table(frame: pd.DataFrame, path: str | Path, digits: int = 4) -> Path:
    """Write ``frame`` as Markdown (``.md``) or CSV (``.csv``, full precision), chosen by suffix."""
    path = Path(path)
    if path.suffix == ".md":
        path.write_text(markdown_table(frame, digits), encoding="utf-8")
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        raise ValueError(f"write_table writes .md or .csv, not {path.name!r}")
    return path


# ---------------------------------------------------------------------------------------------------
# Plots (Agg canvas, returned, never shown)
# ---------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------
# MLflow loaders
# ---------------------------------------------------------------------------------------------------


def read_predictions(path: str | Path) -> list[dict]:
    """Parse a merged ``predictions.jsonl``. Unlike the shard reader in ``vreason.predictions`` (which
    skips a line torn by a kill), a bad line here is an error: a logged artifact is complete."""
    path = Path(path)
    rows = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not a JSON line: {error}") from error
    return rows


def _not_found(error: MlflowException) -> bool:
    return error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


def _experiment_ids(client: MlflowClient, experiment: str | None) -> list[str]:
    """The named (or numbered) experiment, or every experiment when ``experiment`` is None."""
    if experiment is None:
        return [e.experiment_id for e in client.search_experiments()]
    found = client.get_experiment_by_name(experiment)
    if found is None and experiment.isdigit():
        try:
            found = client.get_experiment(experiment)
        except MlflowException as error:
            if not _not_found(error):
                raise
    if found is None:
        raise LookupError(f"no MLflow experiment named {experiment!r}")
    return [found.experiment_id]


def _quoted(value: str) -> str:
    """A string literal for an MLflow filter."""
    return f'"{value}"' if "'" in value else f"'{value}'"


def _find_run(client: MlflowClient, run_id_or_name: str, experiment: str | None) -> Any:
    """The run with this id; else the latest-started run with this name in ``experiment`` (or in
    any experiment when None)."""
    try:
        return client.get_run(run_id_or_name)
    except MlflowException as error:
        if not _not_found(error):
            raise
    found = client.search_runs(
        _experiment_ids(client, experiment),
        filter_string=f"attributes.run_name = {_quoted(run_id_or_name)}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not found:
        where = f"experiment {experiment!r}" if experiment else "any experiment"
        raise LookupError(f"no MLflow run with id or name {run_id_or_name!r} in {where}")
    return found[0]


def _to_run(mlflow_run: Any, tracking_uri: str | None) -> Run:
    """Params and the ``predictions.jsonl`` artifact (at the artifact root) of an MLflow run."""
    run_id = mlflow_run.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=PREDICTIONS_ARTIFACT, dst_path=tmp, tracking_uri=tracking_uri
            )
        except MlflowException as error:
            if not _not_found(error):
                raise
            raise FileNotFoundError(f"MLflow run {run_id} has no {PREDICTIONS_ARTIFACT} artifact") from error
        predictions = read_predictions(local)
    return Run(
        run_id=run_id,
        name=mlflow_run.info.run_name,
        params=dict(mlflow_run.data.params),
        predictions=predictions,
    )


def load_run(run_id_or_name: str, tracking_uri: str | None = None, experiment: str | None = None) -> Run:
    """Load one run by id, or by run name (the latest-started run with that name, searched in
    ``experiment``, or in every experiment when None). ``tracking_uri`` None uses MLflow's default
    (``MLFLOW_TRACKING_URI`` or ``mlflow.set_tracking_uri``)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    return _to_run(_find_run(client, run_id_or_name, experiment), tracking_uri)


def load_runs(
    runs: Sequence[str] | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    latest: int | None = None,
    status: str | None = "FINISHED",
) -> list[Run]:
    """Load the given run ids/names in order (see ``load_run``), or, when ``runs`` is None, the
    ``latest`` most recently started runs of ``experiment`` (newest first) with ``status``
    (None: any status; the default skips running and failed runs, which have no predictions yet)."""
    if runs:
        return [load_run(r, tracking_uri=tracking_uri, experiment=experiment) for r in runs]
    if experiment is None or latest is None:
        raise ValueError("load_runs needs run ids/names, or an experiment and latest=N")
    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.search_runs(
        _experiment_ids(client, experiment),
        filter_string=f"attributes.status = '{status}'" if status else "",
        order_by=["attributes.start_time DESC"],
        max_results=latest,
    )
    return [_to_run(r, tracking_uri) for r in found]
