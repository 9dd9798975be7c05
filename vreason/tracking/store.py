"""The tracking store: creating a SQLite store safely under a lock, opening it, and the experiment
and run-file helpers every MLflow writer here shares."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from vreason.errors import ConfigError

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"
ARTIFACTS = "mlartifacts"  # beside a SQLite store, as ``mlflow server`` keeps them
MAX_PARAMS_PER_CALL = 100
MAX_METRICS_PER_CALL = 1000
# MLflow 3's experiment tag for "classic ML runs" (the UI's "Machine learning" kind, not GenAI traces).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


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
    processes create it at once), tagged as a classic ML experiment (``mlflow.experimentKind``:
    ``custom_model_development``) so that MLflow 3's UI shows it as runs, not as GenAI traces."""
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(
                name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except MlflowException:
            found = client.get_experiment_by_name(name)  # another process created it first
            if found is None:
                raise
    if EXPERIMENT_KIND_TAG not in found.tags:  # made by an older version: mark it for the runs view
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return found.experiment_id


def _write_json(path: Path, payload: dict) -> None:
    """Replace ``path`` atomically: a kill leaves the old file or the new one, never half of either."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps(payload))
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
