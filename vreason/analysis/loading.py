"""Loading runs from MLflow: one run by id or name, or an experiment's latest runs, each with its
params and its ``predictions.jsonl`` artifact, as a ``Run``."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow.artifacts
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from vreason.analysis.lookup import find_run
from vreason.analysis.runs import Run

PREDICTIONS_ARTIFACT = "predictions.jsonl"


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
    """Load one run by id, or by a run name only one run has (searched in ``experiment``, or in every
    experiment when None); a shared name is refused with the candidates listed (``lookup.find_run``).
    ``tracking_uri`` None uses MLflow's default (``MLFLOW_TRACKING_URI`` or ``mlflow.set_tracking_uri``)."""
    return _to_run(find_run(run_id_or_name, tracking_uri=tracking_uri, experiment=experiment), tracking_uri)


def load_runs(
    runs: Sequence[str] | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    latest: int | None = None,
    status: str | None = "FINISHED",
) -> list[Run]:
    """Load the given run ids/names in order (see ``load_run``), or, when ``runs`` is None, the
    ``latest`` most recently started runs of ``experiment`` (newest first) with ``status``
    (None: any status; the default skips running and failed runs, which have no predictions yet).
    A sweep's parent run (tag ``vreason.kind=sweep``) holds no predictions and is left out."""
    if runs:
        return [load_run(r, tracking_uri=tracking_uri, experiment=experiment) for r in runs]
    if experiment is None or latest is None:
        raise ValueError("load_runs needs run ids/names, or an experiment and latest=N")
    client = MlflowClient(tracking_uri=tracking_uri)
    found, token = [], None
    while len(found) < latest:
        page = client.search_runs(
            _experiment_ids(client, experiment),
            filter_string=f"attributes.status = '{status}'" if status else "",
            order_by=["attributes.start_time DESC"],
            max_results=latest,
            page_token=token,
        )
        found += [r for r in page if r.data.tags.get("vreason.kind") != "sweep"]
        token = page.token
        if not token:
            break
    found = found[:latest]
    return [_to_run(r, tracking_uri) for r in found]
