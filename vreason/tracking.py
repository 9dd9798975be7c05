"""MLflow recording through ``MlflowClient``: config as params, scores and costs as metrics, the mean
entropy/EMA curves as stepped metrics, every trace as a table artifact, and the paper's plots.

Lightning's ``self.log`` does not work in predict hooks and MLflow autolog only covers ``fit``, so
the run is driven explicitly. A restarted run reuses the run id stored in its output directory.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from vreason.data.scoring import paper_averages, summarise

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"
MAX_PARAMS_PER_CALL = 100
MAX_METRICS_PER_CALL = 1000


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """{"a.b": "v"} for nested dicts/lists (lists are written as JSON)."""
    if isinstance(tree, dict):
        flat: dict[str, str] = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    value = json.dumps(tree) if isinstance(tree, list | tuple) else str(tree)
    return {prefix.rstrip("."): value[:6000]}


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of the MLflow experiment ``name``, created if it does not exist yet."""
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)


class Tracker:
    """One MLflow run for one experiment output directory."""

    def __init__(self, uri: str, experiment: str, output_dir: Path) -> None:
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        self.output_dir = output_dir
        self.experiment_id = experiment_id(self.client, experiment)
        self.run_id: str | None = None

    def start(self, run_name: str | None, tags: dict[str, str]) -> str:
        """Resume the run recorded in the output directory, or start a new one."""
        record = self.output_dir / RUN_FILE
        if record.exists():
            run_id = json.loads(record.read_text())["run_id"]
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags))
        self.run_id = run.info.run_id
        record.write_text(json.dumps({"run_id": self.run_id, "tracking_uri": self.uri}))
        return self.run_id

    def log_params(self, params: dict[str, str]) -> None:
        """Log the config. On a resumed run, params MLflow already holds are kept (it forbids changing
        them); a value that differs now is recorded as a ``resumed.<key>`` tag instead."""
        logged = self.client.get_run(self.run_id).data.params
        changed = {k: v for k, v in params.items() if k in logged and logged[k] != v}
        for key, value in changed.items():
            log.warning(
                "resumed run: %s was %r, now %r (recorded as tag resumed.%s)", key, logged[key], value, key
            )
            self.client.set_tag(self.run_id, f"resumed.{key}", value)
        items = [Param(k, v) for k, v in sorted(params.items()) if k not in logged]
        for i in range(0, len(items), MAX_PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=items[i : i + MAX_PARAMS_PER_CALL])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None and math.isfinite(v)
        ]
        self._log_metric_items(items)

    def log_curve(self, key: str, values: Iterable[float]) -> None:
        now = int(time.time() * 1000)
        self._log_metric_items(
            [Metric(key, float(v), now, step) for step, v in enumerate(values) if math.isfinite(v)]
        )

    def _log_metric_items(self, items: list[Metric]) -> None:
        for i in range(0, len(items), MAX_METRICS_PER_CALL):
            self.client.log_batch(self.run_id, metrics=items[i : i + MAX_METRICS_PER_CALL])

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=folder)

    def log_figure(self, figure: Any, name: str) -> None:
        self.client.log_figure(self.run_id, figure, name)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def summary_metrics(predictions: list[dict]) -> dict[str, float]:
    """Accuracy per benchmark, the paper's averages, failures, tokens, time and memory."""
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
    metrics["score"] = sum(p["score"] for p in predictions) / max(len(predictions), 1)
    if done:
        metrics["mean_output_tokens"] = sum(p["num_tokens"] for p in done) / len(done)
        metrics["seconds_per_sample"] = sum(p["seconds"] / p.get("batch_size", 1) for p in done) / len(done)
        metrics["peak_memory_mb"] = max(p["peak_memory_mb"] for p in done)
        metrics["optimization_steps_per_sample"] = sum(sum(p["trace"]["optimized"]) for p in done) / len(done)
    return metrics


def mean_by_step(curves: list[list[float]]) -> list[float]:
    """Mean over the samples still generating at each step."""
    length = max((len(c) for c in curves), default=0)
    means = []
    for step in range(length):
        values = [c[step] for c in curves if step < len(c)]
        means.append(sum(values) / len(values))
    return means


def write_trace_table(predictions: list[dict], path: Path) -> Path:
    """One row per generated token of every sample: the full per-token trace as CSV."""
    columns = ["sample_id", "step", "token_id", "entropy", "ema", "alpha", "optimized", "controller_norm"]
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
                writer.writerow([p["sample_id"], step, token, h, ema, alpha, int(optimized), norm])
    return path


def log_results(
    tracker: Tracker, predictions: list[dict], predictions_file: Path, run_name: str | None = None
) -> dict[str, float]:
    """Everything a finished (or resumed-and-finished) run records. Returns the summary metrics."""
    from vreason import analysis

    metrics = summary_metrics(predictions)
    tracker.log_metrics(metrics)
    done = [p for p in predictions if not p["failed"]]
    tracker.log_curve("curve/entropy_mean", mean_by_step([p["trace"]["entropy"] for p in done]))
    tracker.log_curve("curve/ema_mean", mean_by_step([p["trace"]["ema"] for p in done]))
    tracker.log_artifact(predictions_file)
    with tempfile.TemporaryDirectory() as tmp:
        tracker.log_artifact(write_trace_table(predictions, Path(tmp) / "traces.csv"))
    if done:
        run = analysis.Run(run_id=tracker.run_id, name=run_name, params={}, predictions=predictions)
        figures = {
            "plots/entropy_curve.png": analysis.plot_entropy_curves([run]),
            "plots/alpha_before_peak.png": analysis.plot_alpha_histogram([run]),
            "plots/output_tokens.png": analysis.plot_token_counts([run]),
        }
        for name, figure in figures.items():
            tracker.log_figure(figure, name)
            analysis.close(figure)
    return metrics
