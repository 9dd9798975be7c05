"""MLflow recording through ``MlflowClient``: config as params, scores and costs as metrics, the mean
entropy/EMA curves as stepped metrics, every trace as a table artifact, and the paper's plots.

Lightning's ``self.log`` does not work in predict hooks and MLflow autolog only covers ``fit``, so
the run is driven explicitly. A restarted run reuses the run id stored in its output directory.

What never happens to the store (``open_store``): a new SQLite store is created and migrated under a
file lock in a temporary file beside it and moved into place with one atomic rename, so a kill at any
moment of creation leaves either no store (the next run creates it) or a complete one, and two first
runs at once create it once. A store that is already broken stops the run with one line saying what
to do. Artifacts of new experiments go beside the store (``mlartifacts/``), not into the working
directory. Final results are logged with a timestamp fixed per set of predictions, so logging them
again (a rerun after a kill in the logging phase) adds nothing: MLflow drops identical metric rows.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import logging
import math
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import SQLAlchemyError

from vreason.data.scoring import paper_averages, summarise
from vreason.errors import ConfigError

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"
ARTIFACTS = "mlartifacts"  # beside a SQLite store, as ``mlflow server`` keeps them
MAX_PARAMS_PER_CALL = 100
MAX_METRICS_PER_CALL = 1000


class StoreError(ConfigError):
    """The tracking store or the run recorded in an output directory cannot be used; says how to recover."""


def sqlite_path(uri: str) -> Path | None:
    """The absolute file of a ``sqlite:///`` URI (relative paths from the working directory), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///") :].split("?", 1)[0]
    if rest in ("", ":memory:"):
        return None
    return Path(os.path.abspath(rest))


def normalized_uri(uri: str) -> str:
    """``uri`` with a SQLite file made absolute, so that the same store compares equal from any folder."""
    path = sqlite_path(uri)
    return f"sqlite:///{path}" if path is not None else uri


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if absent); the kernel drops it if the process dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _latest_schema() -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def store_problem(path: Path) -> str | None:
    """What is wrong with the SQLite store at ``path`` (read-only look), or None if it is complete."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            missing = {"alembic_version", "experiments", "runs", "metrics", "params"} - tables
            if missing:
                return f"tables {sorted(missing)} are missing"
            versions = [row[0] for row in db.execute("SELECT version_num FROM alembic_version")]
    except sqlite3.DatabaseError as err:
        return f"not a readable SQLite database ({err})"
    latest = _latest_schema()
    if versions != [latest]:
        return f"schema version {versions} where this MLflow expects {latest!r}"
    return None


def _create_sqlite_store(path: Path) -> None:
    """Create and migrate a store in a temporary file, then rename it to ``path`` (caller holds the lock)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for stale in path.parent.glob(f".{path.name}.*.creating*"):
        stale.unlink()  # left by a creation that was killed (we hold the lock: nobody else is creating)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.creating")
    tmp_uri = f"sqlite:///{tmp}"
    log.info("creating MLflow store %s", path)
    store = SqlAlchemyStore(tmp_uri, default_artifact_root=str(path.parent / ARTIFACTS))
    store.engine.dispose()
    SqlAlchemyStore._engine_map.pop(tmp_uri, None)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def open_store(uri: str) -> None:
    """Make sure the tracking store at ``uri`` exists and is complete (SQLite; other stores are MLflow's).

    Creation runs under ``<store>.lock`` into a temporary file that one rename moves into place, so a
    kill leaves no half-made store and concurrent first runs create it once. An existing store that is
    incomplete raises StoreError saying how to recover.
    """
    path = sqlite_path(uri)
    if path is None:
        return
    if not (path.exists() and path.stat().st_size > 0):
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path.with_name(path.name + ".lock")):
            if not (path.exists() and path.stat().st_size > 0):  # an empty file is no store
                _create_sqlite_store(path)
    problem = store_problem(path)
    if problem is not None:
        raise StoreError(
            f"tracking store {path} is incomplete or damaged: {problem}. If a run was killed while creating "
            f"it, move it aside (mv {path} {path}.broken) and rerun: a fresh store is created. If it comes "
            f"from another MLflow version, back it up and run `mlflow db upgrade sqlite:///{path}`"
        )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """{"a.b": "v"} for nested dicts/lists (lists are written as JSON)."""
    if isinstance(tree, dict):
        flat: dict[str, str] = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    value = json.dumps(tree) if isinstance(tree, list | tuple) else str(tree)
    return {prefix.rstrip("."): value[:6000]}


def experiment_id(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    """The id of the MLflow experiment ``name``, created if it does not exist yet (safe when two
    processes create it at once)."""
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:
        found = client.get_experiment_by_name(name)  # another process created it first
        if found is None:
            raise
        return found.experiment_id


def _write_json(path: Path, payload: dict) -> None:
    """Replace ``path`` atomically: a kill leaves the old file or the new one, never half of either."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps(payload))
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


class Tracker:
    """One MLflow run for one experiment output directory.

    Opening checks everything that could stop the run later (the store; for a resumed output
    directory, that its run is in this store), so the command stops before any model loads.
    """

    def __init__(self, uri: str, experiment: str, output_dir: Path) -> None:
        self.uri = normalized_uri(uri)
        self.output_dir = output_dir
        self.record = self._read_record()
        recorded = normalized_uri((self.record or {}).get("tracking_uri", self.uri))
        if recorded != self.uri:  # checked before anything is created at the new address
            raise StoreError(
                f"{output_dir / RUN_FILE}: this output_dir's MLflow run {self.record['run_id']} is in "
                f"{recorded}, but tracking.uri is {self.uri}; rerun with tracking.uri={recorded} to "
                f"continue it, or use another output_dir"
            )
        open_store(self.uri)
        store = sqlite_path(self.uri)
        artifacts = str(store.parent / ARTIFACTS / experiment.replace("/", "_")) if store else None
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            self.experiment_id = experiment_id(self.client, experiment, artifacts)
            if self.record is not None:
                self._check_recorded_run()
        except (MlflowException, SQLAlchemyError) as err:
            if isinstance(err, MlflowException) and err.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise StoreError(
                    f"{output_dir / RUN_FILE}: MLflow run {self.record['run_id']} is not in {self.uri} (the "
                    f"store was replaced or the run deleted for good); delete {output_dir / RUN_FILE} to "
                    f"record these predictions in a new run"
                ) from err
            raise StoreError(f"tracking store {self.uri}: {_first_line(err)}") from err
        self.run_id: str | None = None

    def _read_record(self) -> dict | None:
        path = self.output_dir / RUN_FILE
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            record["run_id"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise StoreError(
                f"{path}: not a run record ({_first_line(err)}); delete it to record these predictions in "
                f"a new MLflow run"
            ) from err
        return record

    def _check_recorded_run(self) -> None:
        """The output directory's run must be in this store, and not deleted."""
        path = self.output_dir / RUN_FILE
        run = self.client.get_run(self.record["run_id"])
        if run.info.lifecycle_stage == "deleted":
            raise StoreError(
                f"{path}: MLflow run {self.record['run_id']} is deleted; restore it (mlflow runs restore) or "
                f"delete {path} to record these predictions in a new run"
            )

    def start(self, run_name: str | None, tags: dict[str, str]) -> str:
        """Resume the run recorded in the output directory, or start a new one."""
        if self.record is not None:
            self.run_id = self.record["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return self.run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags))
        self.run_id = run.info.run_id
        self.record = {"run_id": self.run_id, "tracking_uri": self.uri}
        _write_json(self.output_dir / RUN_FILE, self.record)
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

    def results_timestamp(self, digest: str) -> int:
        """The timestamp (ms) of the results with this digest: the first logging attempt's, so that
        logging the same results again writes identical metric rows (which MLflow drops)."""
        results = (self.record or {}).get("results") or {}
        if results.get("digest") == digest:
            return int(results["timestamp"])
        self.record = {
            **(self.record or {}),
            "results": {"digest": digest, "timestamp": int(time.time() * 1000)},
        }
        _write_json(self.output_dir / RUN_FILE, self.record)
        return self.record["results"]["timestamp"]

    def log_metrics(self, metrics: dict[str, float], step: int = 0, timestamp: int | None = None) -> None:
        now = timestamp if timestamp is not None else int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None and math.isfinite(v)
        ]
        self._log_metric_items(items)

    def log_curve(self, key: str, values: Iterable[float], timestamp: int | None = None) -> None:
        now = timestamp if timestamp is not None else int(time.time() * 1000)
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
    metrics["warned"] = sum(1 for p in predictions if p.get("warnings"))
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
    stamp = tracker.results_timestamp(hashlib.sha256(predictions_file.read_bytes()).hexdigest())
    tracker.log_metrics(metrics, timestamp=stamp)
    done = [p for p in predictions if not p["failed"]]
    tracker.log_curve("curve/entropy_mean", mean_by_step([p["trace"]["entropy"] for p in done]), stamp)
    tracker.log_curve("curve/ema_mean", mean_by_step([p["trace"]["ema"] for p in done]), stamp)
    tracker.log_artifact(predictions_file)  # artifacts and figures overwrite their earlier copies
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
