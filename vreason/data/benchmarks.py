"""The six evaluation benchmarks and where their Video-R1 files live.

Video-R1 (``src/eval_bench.py``) reads ``src/r1-v/Evaluation/eval_<name>.json`` for the names below, and
resolves each record's ``path`` (``./...``) against that same folder. Our ``root`` plays the
role of ``src/r1-v/Evaluation``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DOWNLOAD_URL = "https://huggingface.co/datasets/Video-R1/Video-R1-eval"


@dataclass(frozen=True)
class BenchmarkSpec:
    """``name`` is the short name used in configs and predictions; ``file`` is Video-R1's file name."""

    name: str
    file: str
    display_name: str


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        BenchmarkSpec("vsibench", "eval_vsibench.json", "VSI-Bench"),
        BenchmarkSpec("videommmu", "eval_videommmu.json", "VideoMMMU"),
        BenchmarkSpec("mmvu", "eval_mmvu.json", "MMVU"),
        BenchmarkSpec("mvbench", "eval_mvbench.json", "MVBench"),
        BenchmarkSpec("tempcompass", "eval_tempcompass.json", "TempCompass"),
        BenchmarkSpec("videomme", "eval_videomme.json", "VideoMME"),
    )
}


def benchmark_spec(name: str) -> BenchmarkSpec:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def resolve_benchmark_file(root: str | Path, name: str) -> Path:
    """``<root>/<file>`` for benchmark ``name``; FileNotFoundError with what to download if absent."""
    spec = benchmark_spec(name)
    path = Path(root) / spec.file
    if not path.is_file():
        where = "does not exist" if not Path(root).is_dir() else f"has no {spec.file}"
        raise FileNotFoundError(
            f"{spec.display_name}: {root} {where}; download Video-R1's evaluation JSON files from "
            f"{DOWNLOAD_URL} into {path} and the benchmark's videos from its official site to the paths "
            f"its records name, relative to {root}"
        )
    return path
