"""Benchmark records, prompts, answer extraction and scoring, video inputs, and synthetic data sets.

The light modules are re-exported here; the ones that decode or encode video (``vreason.data.video``,
``vreason.data.video_reader``, ``vreason.data.synthetic``) are imported by name, so that scoring a
predictions file does not load the video stack.
"""

from vreason.data.arithmetic import arithmetic_problems
from vreason.data.benchmarks import BENCHMARKS, BenchmarkSpec, benchmark_spec, resolve_benchmark_file
from vreason.data.prompts import build_messages, build_prompt, build_question, build_text_messages
from vreason.data.records import Record, load_records, records_from_items
from vreason.data.scoring import extract_answer, paper_averages, score, summarise

__all__ = [
    "BENCHMARKS",
    "BenchmarkSpec",
    "Record",
    "arithmetic_problems",
    "benchmark_spec",
    "build_messages",
    "build_prompt",
    "build_question",
    "build_text_messages",
    "extract_answer",
    "load_records",
    "paper_averages",
    "records_from_items",
    "resolve_benchmark_file",
    "score",
    "summarise",
]
