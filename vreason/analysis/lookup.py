"""Finding a run the way a person names it: by id, or by a name exactly one run has. A name several
runs share is refused with the candidates listed (id, start time, method), never resolved to the
newest one; a missing store, experiment or run is named together with what does exist.

``vreason compare``, ``vreason report`` and the notebooks resolve every run they are given here."""

from __future__ import annotations

import datetime as dt
from typing import Any

from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

_LISTED = 10  # how many existing runs or experiments an error lists


class RunLookupError(LookupError):
    """A store, experiment or run that was asked for is not there; the message says what is."""


class AmbiguousRunName(RunLookupError):
    """Several runs have the name that was given; the message lists them."""


def _store_label(tracking_uri: str | None) -> str:
    """The store as the user should read it: a SQLite file as an absolute path."""
    from mlflow.tracking import get_tracking_uri

    from vreason.tracking import normalized_uri

    return normalized_uri(tracking_uri or get_tracking_uri())


def check_store(tracking_uri: str | None) -> None:
    """A SQLite store that does not exist is an error naming it (MLflow would create an empty one,
    e.g. a relative ``sqlite:///mlflow.db`` given from another folder)."""
    from mlflow.tracking import get_tracking_uri

    from vreason.tracking import sqlite_path

    path = sqlite_path(tracking_uri or get_tracking_uri())
    if path is not None and not path.exists():
        raise RunLookupError(
            f"no MLflow store at {path} (tracking URI {tracking_uri!r}; a relative sqlite:/// path is read "
            f"from the current folder); pass the store that `vreason run` printed, e.g. "
            f"--tracking-uri sqlite:////absolute/path/mlflow.db"
        )


def _started(run: Any) -> str:
    return dt.datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _describe(run: Any) -> str:
    """One line per run for error messages: id, start time, method, name, status."""
    method = run.data.tags.get("method") or run.data.params.get("method.name") or "?"
    return f"{run.info.run_id}  started {_started(run)}  method {method}  {run.info.run_name!r}  {run.info.status}"


def _experiments(client: MlflowClient, experiment: str | None, store: str) -> list[Any]:
    every = client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
    if experiment is None:
        return every
    found = [e for e in every if e.name == experiment or e.experiment_id == experiment]
    if not found:
        names = ", ".join(repr(e.name) for e in every[:_LISTED]) or "none"
        raise RunLookupError(
            f"no MLflow experiment {experiment!r} in store {store}; experiments there: {names}"
        )
    return found


def _not_an_id(error: MlflowException) -> bool:
    """No run has this id, or it cannot be one (a name such as ``smoke/baseline``)."""
    return error.error_code in (
        ErrorCode.Name(RESOURCE_DOES_NOT_EXIST),
        ErrorCode.Name(INVALID_PARAMETER_VALUE),
    )


def find_run(ref: str, tracking_uri: str | None = None, experiment: str | None = None) -> Any:
    """The MLflow run with id ``ref``, else the one run named ``ref`` in ``experiment`` (name or id;
    every experiment when None). Raises ``AmbiguousRunName`` when several runs have that name and
    ``RunLookupError`` when none has, both saying which store was searched and what is in it."""
    check_store(tracking_uri)
    store = _store_label(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        return client.get_run(ref)
    except MlflowException as error:
        if not _not_an_id(error):
            raise
    experiments = _experiments(client, experiment, store)
    ids = [e.experiment_id for e in experiments]
    where = f"experiment {experiment!r}" if experiment else "any experiment"
    quoted = f'"{ref}"' if "'" in ref else f"'{ref}'"
    found = client.search_runs(
        ids, filter_string=f"attributes.run_name = {quoted}", order_by=["attributes.start_time DESC"]
    )
    if len(found) == 1:
        return found[0]
    if found:
        raise AmbiguousRunName(
            f"{len(found)} runs are named {ref!r} in {where} of store {store}; give one by its id:\n"
            + "\n".join(f"  {_describe(run)}" for run in found[:_LISTED])
        )
    existing = client.search_runs(ids, order_by=["attributes.start_time DESC"], max_results=_LISTED)
    listing = "\n".join(f"  {_describe(run)}" for run in existing) or "  (no runs)"
    raise RunLookupError(
        f"no MLflow run with id or name {ref!r} in {where} of store {store}; runs there:\n{listing}"
    )


def resolve_run_id(ref: str, tracking_uri: str | None = None, experiment: str | None = None) -> str:
    """The id of the run ``ref`` names (see ``find_run``)."""
    return find_run(ref, tracking_uri=tracking_uri, experiment=experiment).info.run_id
