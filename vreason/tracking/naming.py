"""What a run says about itself: its params (one schema for every method), its name, tags, and the
links and command that open it in the MLflow UI."""

from __future__ import annotations

import inspect
import json
import subprocess
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from vreason.tracking.store import flatten, normalized_uri

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
    """Every config value as a flat param, the method through ``method_params``; the ``sweep`` block is
    not a run's (a sweep logs its grid on its parent run)."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    tree.pop("method", None)
    tree.pop("sweep", None)
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
