"""Clocks and peak memory that mean the same on CPU and CUDA (for traces and the benchmark).

CUDA: the caching allocator's peak of allocated memory. CPU (Linux): the process's peak resident set
(``VmHWM``), which the kernel resets to the current RSS when "5" is written to
``/proc/self/clear_refs``. Without /proc, the peak over the process's life (``ru_maxrss``).

Both marks are process-wide, and ``Decoder.generate`` resets the one of its device at the start of
each call: a measurement around a call reads the peak after it and compares it with what it saw
before the call (as the benchmark's memory probe does), never with a peak taken earlier.
"""

from __future__ import annotations

import resource
from contextlib import suppress
from pathlib import Path

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a clock read after it means what it says."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def proc_status_kib(field_name: str) -> int:
    """A ``kB`` field of /proc/self/status (``VmRSS``, ``VmHWM``, ``RssFile``, ...)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory mark (CUDA allocator peak; on CPU the process's peak RSS)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_bytes(device: torch.device) -> int:
    """The peak since ``reset_peak_memory`` (see the module docstring for what it counts)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    with suppress(OSError, RuntimeError):
        return proc_status_kib("VmHWM") * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
