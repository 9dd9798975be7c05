"""Peak memory of a run: on CPU a probe in a fresh Python process per variant (a peak one variant reached
would hide the next one's), glibc returning freed blocks; on CUDA the allocator's peaks of the timed runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from bench.builders import PromptConfig, build_model, make_inputs, setting_name, settings
from bench.config import REPO, BenchConfig, VideoSetting, require_device
from bench.measure import Run, run_variant
from bench.variants import Variant, parse_variant
from vreason.memory import proc_status_kib, reset_peak_memory


def _reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; returns the current RSS in bytes."""
    reset_peak_memory(torch.device("cpu"))
    return proc_status_kib("VmRSS") * 1024


def probe_peak(
    model, variant: Variant, inputs: Mapping[str, Tensor], new_tokens: int, positions: str
) -> dict[str, Any]:
    """In this (fresh) process: peak RSS growth of one run, over the whole call and over decoding alone.

    A first run of the same variant (long enough for one optimisation step) loads the code pages the
    run touches and starts the thread pools, so that the measured run counts tensors, not libraries.
    ``run_probes`` starts this process with a fixed glibc mmap threshold, so what the first run
    freed goes back to the system and cannot hide the measured run's peak.
    """
    run_variant(model, variant, inputs, (variant.step_size or 1) + 1, positions)
    marks: dict[str, int] = {}

    def decode_started() -> None:
        marks["prefill_peak"] = proc_status_kib("VmHWM") * 1024
        marks["decode_base"] = _reset_peak_rss()

    file_before = proc_status_kib("RssFile")
    base = _reset_peak_rss()
    run = run_variant(model, variant, inputs, new_tokens, positions, on_decode_start=decode_started)
    decode_peak = proc_status_kib("VmHWM") * 1024
    return {
        "method": "peak RSS (VmHWM) growth in a fresh process, after a warm-up run",
        "peak_delta_mib": max(0, max(marks["prefill_peak"], decode_peak) - base) / 2**20,
        "peak_total_mib": max(base, marks["prefill_peak"], decode_peak) / 2**20,  # the process's whole RSS
        # RSS counters are batched per CPU by the kernel: differences below ~0.5 MiB are noise
        "decode_peak_delta_mib": max(0, decode_peak - marks["decode_base"]) / 2**20,
        "file_pages_loaded_mib": (proc_status_kib("RssFile") - file_before) / 2**10,
        "kv_cache_mib": run.kv_cache_bytes / 2**20,
        "new_tokens": new_tokens,
    }


class ProbeConfig(PromptConfig, Protocol):
    """What a probe reads of a config (``BenchConfig``, ``ScalingConfig``)."""

    threads: int | None
    lite_keep_ratio: float
    positions: str


def probe_in_fresh_process(
    cfg: ProbeConfig, setting: VideoSetting | None, batch: int, variant_name: str, new_tokens: int
) -> dict[str, Any]:
    """``probe_peak`` of one variant on a batch of ``setting``, with the model built in this process."""
    require_device(cfg.model.device)
    torch.set_num_threads(cfg.threads or torch.get_num_threads())  # this process exists for the probe
    model, tokenizer = build_model(cfg.model)
    inputs = make_inputs(cfg, tokenizer, setting, batch)
    variant = parse_variant(variant_name, cfg.lite_keep_ratio)
    return probe_peak(model, variant, inputs, new_tokens, cfg.positions)


def memory_probe(cfg: BenchConfig, variant_name: str, setting_label: str) -> dict[str, Any]:
    """The overhead benchmark's probe (``python -m bench.overhead --memory-probe``): one variant on one
    setting, batch 1, ``memory.max_new_tokens`` tokens."""
    setting = next(s for s in settings(cfg) if setting_name(s) == setting_label)
    return probe_in_fresh_process(cfg, setting, 1, variant_name, cfg.memory.max_new_tokens)


def probe_command(module: str, config_path: str | Path, overrides: list[str], *args: str) -> list[str]:
    """``python -m <module> --config <path> <args> <overrides>``: the entry point that runs one probe and
    prints its result as the last line of its output."""
    return [sys.executable, "-m", module, "--config", str(Path(config_path).resolve()), *args, *overrides]


def run_probes(commands: Mapping[str, list[str]], parallel: int = 1) -> dict[str, dict[str, Any]]:
    """Run each probe command in its own fresh Python process, ``parallel`` at a time (each process's RSS
    is its own, so running side by side changes nothing but the wall time); results by the commands' keys."""
    env = {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(REPO),
        # A fixed threshold (no dynamic raising) makes glibc return every freed block of 64 KiB or more,
        # so RSS follows the live tensors instead of the allocator's high-water mark.
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "MALLOC_TRIM_THRESHOLD_": "0",
    }
    results: dict[str, dict[str, Any]] = {}
    pending = list(commands)
    running: dict[str, subprocess.Popen] = {}
    while pending or running:
        while pending and len(running) < max(1, parallel):
            key = pending.pop(0)
            running[key] = subprocess.Popen(
                commands[key], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        key = next(iter(running))
        process = running.pop(key)
        stdout, stderr = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"bench: memory probe for {key} failed:\n{stderr[-3000:]}")
        results[key] = json.loads(stdout.strip().splitlines()[-1])
    return {key: results[key] for key in commands}


def measure_memory(
    config_path: Path, overrides: list[str], variants: list[str], setting_label: str, parallel: int = 1
) -> dict[str, dict[str, float]]:
    """``memory_probe`` for each variant, each in a fresh process started through ``bench.overhead``."""
    return run_probes(
        {
            variant: probe_command(
                "bench.overhead",
                config_path,
                overrides,
                "--memory-probe",
                variant,
                "--setting",
                setting_label,
            )
            for variant in variants
        },
        parallel,
    )


def cuda_memory(runs: list[Run]) -> dict[str, Any] | None:
    """Peak memory of the timed runs of one variant on CUDA (largest over the runs); None on CPU."""
    if runs[0].peak_delta_bytes is None:
        return None
    return {
        "method": "torch.cuda.max_memory_allocated growth",
        "peak_delta_mib": max(r.peak_delta_bytes for r in runs) / 2**20,
        "peak_total_mib": max(r.base_bytes + r.peak_delta_bytes for r in runs) / 2**20,
        "decode_peak_delta_mib": max(r.decode_peak_delta_bytes for r in runs) / 2**20,
        "kv_cache_mib": runs[0].kv_cache_bytes / 2**20,
    }
