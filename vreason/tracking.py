"""MLflow recording through ``MlflowClient``: config as params, scores and costs as metrics, what the
method did per generated token as metric histories, every trace as a table artifact, the paper's plots
and a per-sample trace view.

What a run says about itself: its name is built from the config and the method (``smoke/baseline``,
``smoke/vreason-k4-lr3e-4``; ``run_label``), its tags name the method, model, benchmarks, seed, package
version and git commit (``run_tags``), its description is the result table, and every method logs the
same ``method.*`` keys (``method_params``: a baseline logs controller ``none``), so runs group, filter and
line up in the UI. Metric histories are stepped by generated-token index from 1, as the plots are.
Experiments are created as classic ML experiments (``mlflow.experimentKind``), so the UI opens on runs.

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
import inspect
import json
import logging
import math
import os
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from sqlalchemy.exc import SQLAlchemyError

from vreason.data.scoring import paper_averages, summarise
from vreason.errors import ConfigError

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"
ARTIFACTS = "mlartifacts"  # beside a SQLite store, as ``mlflow server`` keeps them
MAX_PARAMS_PER_CALL = 100
MAX_METRICS_PER_CALL = 1000
# MLflow 3's experiment tag for "classic ML runs" (the UI's "Machine learning" kind, not GenAI traces).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
UI_PORT = 5000  # ``mlflow ui``'s default
NONE = "none"
# Every method logs these ``method.*`` params (a baseline as ``none``); components add their own.
CORE_METHOD_PARAMS = (
    "name",
    "controller.name",
    "objective.name",
    "schedule.name",
    "schedule.step_size",
    "schedule.ema_beta",
    "pruner.name",
    "pruner.keep_ratio",
    "positions",
    "optimizer.lr",
    "optimizer.weight_decay",
    "optimizer.grad_clip",
)


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


def _number(value: float) -> str:
    """3e-4 as ``3e-4``, 0.01 as ``1e-2``, 2 as ``2``: short and unambiguous in a run name."""
    if value == 0 or (abs(value) >= 1 and float(value).is_integer()):
        return f"{value:g}"
    mantissa, exponent = f"{value:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _steered(block: Any) -> bool:
    return block is not None and block != "baseline"


def _component_name(block: Any) -> str | None:
    if block is None:
        return None
    return block if isinstance(block, str) else block.get("name")


def method_params(block: Any) -> dict[str, str]:
    """The ``method.*`` params of a run, one schema for every method: the keys of ``CORE_METHOD_PARAMS``
    always (``none`` where a method has no such thing: a baseline's controller, a run without a pruner),
    plus each component's own parameters with the constructor's defaults filled in, so that two runs
    of the same component log the same keys whatever their YAML spelled out."""
    from vreason.config import COMPONENTS, check_method
    from vreason.engine import OptimizerConfig

    container = OmegaConf.to_container(block, resolve=True) if isinstance(block, DictConfig) else block
    params: dict[str, Any] = {}
    spec = check_method(container)
    if spec is None:  # every key the default V-Reason method logs, as none: runs line up in the UI
        params = dict.fromkeys(method_params({"controller": {"name": "value_cache"}}), NONE)
        params = {key.removeprefix("method."): value for key, value in params.items()}
        params["name"] = "baseline"
    else:
        params["name"] = container.get("name") or "vreason"
        for key, (_, default) in COMPONENTS.items():
            found = spec.components[key]
            if found is None:
                continue
            cls, given = found
            defaults = {
                name: p.default
                for name, p in inspect.signature(cls).parameters.items()
                if p.default is not inspect.Parameter.empty
            }
            params[f"{key}.name"] = _component_name(container.get(key) or default)
            params.update({f"{key}.{name}": value for name, value in {**defaults, **given}.items()})
        params["positions"] = spec.positions
        optimizer = asdict(OptimizerConfig(**spec.optimizer))
        params.update({f"optimizer.{name}": value for name, value in optimizer.items()})
    for key in CORE_METHOD_PARAMS:
        params.setdefault(key, None)
    return {f"method.{key}": _param_value(value) for key, value in sorted(params.items())}


def _param_value(value: Any) -> str:
    if value is None:
        return NONE
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    return str(value)


def experiment_params(cfg: DictConfig) -> dict[str, str]:
    """Every config value as a flat param, the method through ``method_params``."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    tree.pop("method", None)
    return {**flatten(tree), **method_params(cfg.method)}


def method_label(block: Any) -> str:
    """A short name for a method: ``baseline``, or the method's name with what sets it apart from the
    paper's default and its step size and learning rate, e.g. ``vreason-k4-lr3e-4``,
    ``vreason-lite-k4-lr3e-4``, ``vreason-min_entropy-prompt-k2-lr1e-3``."""
    params = method_params(block)
    if params["method.name"] == "baseline" and params["method.controller.name"] == NONE:
        return "baseline"
    parts = [params["method.name"]]
    if params["method.pruner.name"] != NONE and "lite" not in parts[0]:
        ratio = params.get("method.pruner.keep_ratio", NONE)
        parts.append("lite" if ratio in ("0.5", NONE) else f"lite{ratio}")
    for key, usual in (("controller", "value_cache"), ("objective", "switching")):
        name = params[f"method.{key}.name"]
        if name not in (usual, NONE):
            parts.append(name.rsplit(".", 1)[-1])
    if params["method.controller.name"] == NONE:
        parts.append("no_controller")
    if params["method.positions"] not in ("video", NONE):
        parts.append(params["method.positions"])
    if params["method.schedule.step_size"] != NONE:
        parts.append(f"k{params['method.schedule.step_size']}")
    if params["method.optimizer.lr"] != NONE:
        parts.append(f"lr{_number(float(params['method.optimizer.lr']))}")
    return "-".join(parts)


def run_label(cfg: DictConfig) -> str:
    """The MLflow run name: ``tracking.run_name`` if set, else ``<config name>/<method label>``."""
    return cfg.tracking.run_name or f"{cfg.name}/{method_label(cfg.method)}"


def model_label(model: DictConfig) -> str:
    """The model as a person names it: a checkpoint's folder or file name, else the built-in kind."""
    if model.get("path"):
        return Path(str(model.path)).name
    return str(model.family or model.kind) if model.kind == "tiny" else str(model.kind)


def git_commit() -> tuple[str | None, bool]:
    """(HEAD commit of the checkout this package runs from, whether it has uncommitted changes);
    (None, False) outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None, False
        status = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None, False
    return head.stdout.strip(), bool(status.stdout.strip())


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vreason")
    except PackageNotFoundError:
        return "unknown"


def run_tags(cfg: DictConfig) -> dict[str, str]:
    """What the runs table can filter on: method, model, benchmarks, seed, package version, git commit
    (also as MLflow's own ``mlflow.source.git.commit``), plus the user's ``tracking.tags``."""
    commit, dirty = git_commit()
    tags = {
        "method": method_label(cfg.method),
        "model": model_label(cfg.model),
        "benchmarks": ",".join(cfg.data.benchmarks),
        "seed": str(cfg.seed),
        "config": str(cfg.name),
        "vreason_version": package_version(),
        "mlflow.source.name": "vreason run",
        "mlflow.source.type": "LOCAL",
    }
    if commit is not None:
        tags["git_commit"] = commit + ("-dirty" if dirty else "")
        tags["mlflow.source.git.commit"] = commit
    return {**tags, **{str(k): str(v) for k, v in (cfg.tracking.tags or {}).items()}}


def ui_base(port: int = UI_PORT) -> str:
    return f"http://127.0.0.1:{port}"


# ``workflowType=machine_learning``: MLflow 3.17's UI shows an experiment as GenAI (traces overview,
# "Evaluation runs") unless the URL or the user's toggle says "Model training", whatever the
# experiment's kind tag says; the tag is what earlier 3.x versions read.
ML_VIEW = "workflowType=machine_learning"
RUNS_VIEW = "vreason"  # the shared view (experiment tag) the printed links open: useful columns shown
RUNS_VIEW_COLUMNS = (
    "metrics.`score`",
    "metrics.`mean_output_tokens`",
    "metrics.`entropy_mean`",
    "metrics.`ema_peak_step_mean`",
    "metrics.`optimization_steps_per_sample`",
    "metrics.`failed`",
    "params.`method.name`",
    "params.`method.controller.name`",
    "params.`method.schedule.step_size`",
    "params.`method.optimizer.lr`",
    "tags.`model`",
    "tags.`benchmarks`",
    "tags.`seed`",
)


def set_runs_view(client: MlflowClient, experiment: str, columns: Iterable[str] = RUNS_VIEW_COLUMNS) -> None:
    """Store the runs-table view the printed links open (newest first, these columns) as the MLflow UI
    stores a shared view: an experiment tag ``mlflow.sharedViewState.<key>`` read via
    ``viewStateShareKey=<key>``. Without it MLflow 3 shows no metric or param column by default."""
    state = {"orderByKey": "attributes.start_time", "orderByAsc": False, "selectedColumns": list(columns)}
    client.set_experiment_tag(experiment, f"mlflow.sharedViewState.{RUNS_VIEW}", json.dumps(state))


def run_url(experiment: str, run_id: str, port: int = UI_PORT) -> str:
    """The run's page in ``mlflow ui`` (MLflow 3 routes in the URL fragment)."""
    return f"{ui_base(port)}/#/experiments/{experiment}/runs/{run_id}?{ML_VIEW}"


def experiment_url(experiment: str, port: int = UI_PORT, charts: bool = False) -> str:
    """The experiment's runs table with the columns of ``set_runs_view`` (``charts``: its chart view,
    every metric history of the runs overlaid)."""
    mode = "&compareRunsMode=CHART" if charts else ""
    return f"{ui_base(port)}/#/experiments/{experiment}/runs?{ML_VIEW}&viewStateShareKey={RUNS_VIEW}{mode}"


def ui_command(uri: str, port: int = UI_PORT) -> str:
    """The one command that serves this store's UI on ``port`` (loopback only)."""
    import shlex
    import shutil
    import sys

    mlflow_bin = "mlflow"
    if shutil.which("mlflow") is None:  # not on PATH: the one beside this interpreter (.venv/bin)
        mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    uri = normalized_uri(uri)
    return (
        f"{shlex.quote(mlflow_bin)} ui --backend-store-uri {shlex.quote(uri)} --host 127.0.0.1 --port {port}"
    )


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
