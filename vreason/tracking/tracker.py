"""``Tracker``: one MLflow run driven explicitly (start, params, curves, batches, end), resumed from
the run id stored in the output directory."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import SQLAlchemyError

from vreason.tracking.naming import set_runs_view
from vreason.tracking.store import (
    ARTIFACTS,
    MAX_METRICS_PER_CALL,
    MAX_PARAMS_PER_CALL,
    RUN_FILE,
    StoreError,
    _first_line,
    _write_json,
    experiment_id,
    normalized_uri,
    open_store,
    sqlite_path,
)

log = logging.getLogger(__name__)


class Tracker:
    """One MLflow run for one experiment output directory.

    Opening checks everything that could stop the run later (the store; for a resumed output
    directory, that its run is in this store), so the command stops before any model loads.
    """

    def __init__(self, uri: str, experiment: str, output_dir: Path, run_name: str | None = None) -> None:
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
            set_runs_view(self.client, self.experiment_id)
            if self.record is not None:
                self._check_recorded_run(run_name)
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

    def _check_recorded_run(self, run_name: str | None) -> None:
        """The output directory's run must be in this store, not deleted, and (when ``run_name`` is
        given) be that run: another method in the same folder would be answered from its predictions."""
        path = self.output_dir / RUN_FILE
        run = self.client.get_run(self.record["run_id"])
        if run.info.lifecycle_stage == "deleted":
            raise StoreError(
                f"{path}: MLflow run {self.record['run_id']} is deleted; restore it (mlflow runs restore) or "
                f"delete {path} to record these predictions in a new run"
            )
        if run_name is not None and run.info.run_name != run_name:
            raise StoreError(
                f"output_dir {self.output_dir} holds the predictions of MLflow run {run.info.run_name!r} "
                f"({run.info.run_id}); this config is run {run_name!r}: give it its own output_dir "
                f"(e.g. output_dir={self.output_dir.parent / run_name.rsplit('/', 1)[-1]}), or set "
                f"tracking.run_name={run.info.run_name} to continue that run"
            )

    def start(self, run_name: str | None, tags: dict[str, str]) -> str:
        """Resume the run recorded in the output directory, or start a new one."""
        if self.record is not None:
            self.run_id = self.record["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            if tags:  # a resumed run keeps its name; its tags follow this code and config
                self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
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
        """A metric history stepped by generated-token index: the first value is step 1."""
        now = timestamp if timestamp is not None else int(time.time() * 1000)
        self._log_metric_items(
            [Metric(key, float(v), now, step) for step, v in enumerate(values, start=1) if math.isfinite(v)]
        )

    def _log_metric_items(self, items: list[Metric]) -> None:
        for i in range(0, len(items), MAX_METRICS_PER_CALL):
            self.client.log_batch(self.run_id, metrics=items[i : i + MAX_METRICS_PER_CALL])

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=folder)

    def log_figure(self, figure: Any, name: str) -> None:
        self.client.log_figure(self.run_id, figure, name)

    def set_description(self, text: str) -> None:
        """The run's description in the UI (Markdown)."""
        self.client.set_tag(self.run_id, "mlflow.note.content", text)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


# --- what a run says about itself: name, method params, tags, where to see it --------------------------
