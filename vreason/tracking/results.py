"""What a finished run logs: summary and per-token metrics, the trace table, the description, and
``log_results``, which writes them once per set of predictions."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from vreason.data.scoring import paper_averages, summarise
from vreason.tracking.naming import NONE
from vreason.tracking.tracker import Tracker


def summary_metrics(predictions: list[dict]) -> dict[str, float]:
    """Accuracy per benchmark, the paper's averages, failures, tokens, time and memory, and what the
    traces say over the whole run (``trace_metrics``)."""
    per_benchmark = summarise(predictions)
    metrics: dict[str, float] = {}
    for bench, stats in per_benchmark.items():
        for key in ("acc", "mra"):
            if stats.get(key) is not None:
                metrics[f"{bench}/{key}"] = stats[key]
        metrics[f"{bench}/n"] = stats["n"]
        metrics[f"{bench}/failed"] = stats["failed"]
    averages = paper_averages(per_benchmark)
    for key, value in (averages or {}).items():
        if value is not None:
            metrics[key] = value
    done = [p for p in predictions if not p["failed"]]
    metrics["samples"] = len(predictions)
    metrics["failed"] = len(predictions) - len(done)
    metrics["warned"] = sum(1 for p in predictions if p.get("warnings"))
    metrics["score"] = sum(p["score"] for p in predictions) / max(len(predictions), 1)
    if done:
        metrics["mean_output_tokens"] = sum(p["num_tokens"] for p in done) / len(done)
        metrics["seconds_per_sample"] = sum(p["seconds"] / p.get("batch_size", 1) for p in done) / len(done)
        metrics["peak_memory_mb"] = max(p["peak_memory_mb"] for p in done)
        metrics["optimization_steps_per_sample"] = sum(sum(p["trace"]["optimized"]) for p in done) / len(done)
    metrics.update(trace_metrics(done))
    return metrics


def _mean(values: Iterable[float]) -> float:
    values = [v for v in values if math.isfinite(v)]
    return sum(values) / len(values) if values else math.nan


def trace_metrics(done: list[dict]) -> dict[str, float]:
    """Run-level numbers read off the traces of finished samples (nats; steps are 1-based tokens):
    ``entropy_mean`` over every generated token, and per-sample means of the final EMA, the EMA peak's
    step and height (Sec. 3: "lower and delayed" peaks) and the final |ΔV|."""
    traces = [p["trace"] for p in done if p.get("trace") and p["trace"]["entropy"]]
    if not traces:
        return {}
    from vreason.analysis.per_sample import ema_peak

    peaks = [ema_peak(t["ema"]) for t in traces]
    return {
        "entropy_mean": _mean(h for t in traces for h in t["entropy"]),
        "ema_final_mean": _mean(t["ema"][-1] for t in traces),
        "ema_peak_step_mean": _mean(index + 1 for index, _ in peaks),
        "ema_peak_mean": _mean(height for _, height in peaks),
        "delta_v_norm_final_mean": _mean(t["controller_norm"][-1] for t in traces),
    }


def mean_by_step(curves: list[list[float]]) -> list[float]:
    """Mean over the samples still generating at each step."""
    length = max((len(c) for c in curves), default=0)
    means = []
    for step in range(length):
        values = [c[step] for c in curves if step < len(c)]
        means.append(sum(values) / len(values))
    return means


def token_curves(done: list[dict]) -> dict[str, list[float]]:
    """The metric histories of a run, one value per generated-token index (the first is step 1), each
    a mean over the samples still generating at that token: raw entropy, its EMA, alpha (+1 explore,
    -1 exploit), the share of samples that took an optimisation step there, and |ΔV|; plus how many
    samples are still generating. The entropy history comes first (``log_results`` logs in this order)."""
    traces = [p["trace"] for p in done if p.get("trace")]
    return {
        "per_token/entropy_mean": mean_by_step([t["entropy"] for t in traces]),
        "per_token/ema_mean": mean_by_step([t["ema"] for t in traces]),
        "per_token/alpha_mean": mean_by_step([[float(a) for a in t["alpha"]] for t in traces]),
        "per_token/optimizing_share": mean_by_step([[float(o) for o in t["optimized"]] for t in traces]),
        "per_token/delta_v_norm_mean": mean_by_step([t["controller_norm"] for t in traces]),
        "per_token/samples_generating": [
            float(n) for n in _counts_by_step([len(t["entropy"]) for t in traces])
        ],
    }


def _counts_by_step(lengths: list[int]) -> list[int]:
    return [sum(1 for n in lengths if n > step) for step in range(max(lengths, default=0))]


TokenText = Callable[[int], str]


def write_trace_table(predictions: list[dict], path: Path, token_text: TokenText | None = None) -> Path:
    """One row per generated token of every sample: the full per-token trace as CSV (``step`` from 1;
    ``text`` is the token decoded alone, when a tokenizer is at hand)."""
    columns = [
        "sample_id",
        "step",
        "token_id",
        "text",
        "entropy",
        "ema",
        "alpha",
        "optimized",
        "controller_norm",
    ]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for p in predictions:
            trace = p.get("trace")
            if not trace:
                continue
            rows = zip(
                trace["token_ids"],
                trace["entropy"],
                trace["ema"],
                trace["alpha"],
                trace["optimized"],
                trace["controller_norm"],
                strict=True,
            )
            for step, (token, h, ema, alpha, optimized, norm) in enumerate(rows, start=1):
                text = token_text(token) if token_text is not None else ""
                writer.writerow([p["sample_id"], step, token, text, h, ema, alpha, int(optimized), norm])
    return path


def run_description(name: str, params: dict[str, str], metrics: dict[str, float]) -> str:
    """The run's description (Markdown): what ran and its result table, with what the artifacts hold."""
    from vreason.report import markdown, table_rows

    method = params.get("method.name", "?")
    if params.get("method.controller.name", NONE) != NONE:
        method += (
            f" (controller {params['method.controller.name']}, objective {params['method.objective.name']}, "
            f"k = {params['method.schedule.step_size']}, lr = {params['method.optimizer.lr']}"
            + (
                f", pruner {params['method.pruner.name']}"
                if params.get("method.pruner.name", NONE) != NONE
                else ""
            )
            + ")"
        )
    return (
        f"**{name}**: {method}, on {', '.join(json.loads(params.get('data.benchmarks', '[]')))} with model "
        f"{params.get('model.path') if params.get('model.path') not in (None, 'None') else params.get('model.kind', '?')}"
        f", seed {params.get('seed', '?')}, at most {params.get('sampling.max_new_tokens', '?')} new tokens.\n\n"
        + markdown(*table_rows([(name, metrics)], only_present=True))
        + "\n\nArtifacts: `trace_view.html` (each sample's text coloured by entropy, optimisation steps and "
        "the EMA peak marked), `traces.csv` (every generated token), `predictions.jsonl`, `plots/`. "
        "Metric histories `per_token/*` are stepped by generated token (from 1)."
    )


def log_results(
    tracker: Tracker,
    predictions: list[dict],
    predictions_file: Path,
    run_name: str | None = None,
    params: dict[str, str] | None = None,
    token_text: TokenText | None = None,
) -> dict[str, float]:
    """Everything a finished (or resumed-and-finished) run records. Returns the summary metrics.

    Args:
        params: the run's params (``experiment_params``): the plots read the method (is it a baseline?)
            and ``sampling.max_new_tokens`` from them.
        token_text: decodes one token id, for the trace table and the trace view.
    """
    from vreason import analysis

    params = dict(params or {})
    metrics = summary_metrics(predictions)
    stamp = tracker.results_timestamp(hashlib.sha256(predictions_file.read_bytes()).hexdigest())
    tracker.log_metrics(metrics, timestamp=stamp)
    done = [p for p in predictions if not p["failed"]]
    for key, values in token_curves(done).items():
        tracker.log_curve(key, values, stamp)
    tracker.log_artifact(predictions_file)  # artifacts and figures overwrite their earlier copies
    run = analysis.Run(run_id=tracker.run_id, name=run_name, params=params, predictions=predictions)
    with tempfile.TemporaryDirectory() as tmp:
        tracker.log_artifact(write_trace_table(predictions, Path(tmp) / "traces.csv", token_text))
        view = Path(tmp) / "trace_view.html"
        view.write_text(analysis.trace_view_html(run, token_text=token_text), encoding="utf-8")
        tracker.log_artifact(view)
    if done:
        figures = {
            "plots/entropy_curve.png": analysis.plot_entropy_curves([run]),
            "plots/alpha_before_peak.png": analysis.plot_alpha_histogram([run]),
            "plots/output_tokens.png": analysis.plot_token_counts([run]),
        }
        for name, figure in figures.items():
            tracker.log_figure(figure, name)
            analysis.close(figure)
    tracker.set_description(run_description(run_name or "run", params, metrics))
    return metrics
