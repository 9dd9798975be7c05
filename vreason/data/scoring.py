"""Answer extraction, per-sample scores and per-benchmark summaries (PROTOCOL.md, "Scoring").

The rules are Video-R1's (``src/eval_bench.py``), re-implemented; where they are subtle the docstring
says which way we went.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from vreason.data.text_similarity import mean_rouge_f1, word_error_rate

PROBLEM_TYPES = ("multiple choice", "numerical", "regression", "OCR", "free-form")

# The six benchmark numbers the paper averages; VSI-Bench contributes accuracy and MRA separately.
PAPER_BENCHMARKS = ("vsibench", "videommmu", "mmvu", "mvbench", "tempcompass", "videomme")
VSI_BENCH = "vsibench"

_ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
# Benchmarks whose prompt asks for the number only (``prompts.SHORT_ANSWER_TEMPLATE``), for small
# instruct models that never write <answer> tags: their outputs are read by ``extract_final_number``.
SHORT_ANSWER_BENCHMARKS = ("arithmetic_short",)
_NUMBER = r"-?\d+(?:,\d{3})*(?:\.\d+)?"
_CUED_NUMBER = re.compile(rf"(?:=|answer is:?)\s*({_NUMBER})", re.IGNORECASE)
_ANY_NUMBER = re.compile(rf"(?<![\d.])({_NUMBER})")
# MRA thresholds 0.50, 0.55, ..., 0.95, as float32 like Video-R1's torch.arange (see mean_relative_accuracy).
_MRA_THRESHOLDS = np.array([0.5 + 0.05 * i for i in range(10)], dtype=np.float32)


def extract_answer(text: str, benchmark: str | None = None) -> str:
    """The first ``<answer>...</answer>`` content, stripped; the whole (stripped) text if there is none.

    An empty tag (``<answer> </answer>``) also falls back to the whole text: Video-R1's ``reward_fn``
    tests ``output_ans == ''``, which cannot tell "no tag" from "empty tag". For a benchmark in
    ``SHORT_ANSWER_BENCHMARKS`` a model output is read by ``extract_final_number`` instead (a solution,
    written ``<answer>k</answer>`` or already extracted, has no cue and yields its one number).
    """
    if benchmark in SHORT_ANSWER_BENCHMARKS:
        return extract_final_number(text)
    match = _ANSWER.search(text)
    answer = match.group(1).strip() if match else ""
    return answer if answer else text.strip()


def extract_final_number(text: str) -> str:
    """The model's stated result in a short answer: the number right after the first ``=`` or
    ``answer is`` / ``answer is:`` (case-insensitive), else the last number in the text; "" if there
    is no number.

    Small instruct models asked for "the number only" mostly write ``7 * 8 = 56`` or ``The answer is
    56.``, and then often ramble on (more equations, unrelated numbers) until the token budget ends: the
    first cue is what they answered, the last number of a rambling output is not. Thousands commas are
    removed (``1,024`` -> ``1024``); a trailing full stop is not part of the number (``56.`` -> ``56``);
    a minus sign counts only when it touches the digits (``= -3`` -> ``-3``, ``9 - 3`` has no ``-3``).
    """
    cued = _CUED_NUMBER.search(text)
    if cued:
        return cued.group(1).replace(",", "")
    numbers = _ANY_NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else ""


def final_number_score(prediction: str, truth: str) -> float:
    """1 if both parse as numbers and are equal (``56.0`` equals ``56``), else 0."""
    pred, gt = parse_number(prediction), parse_number(truth)
    return float(pred is not None and gt is not None and pred == gt)


def parse_number(text: str) -> float | None:
    """``float`` after removing thousands commas; None where that fails."""
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def _has_decimal_mark(text: str) -> bool:
    return "." in text or "," in text


def numerical_score(prediction: str, truth: str) -> float:
    """1 if both parse and agree to 2 decimals; 0 if exactly one side has a "." or "," (PROTOCOL)."""
    if _has_decimal_mark(prediction) != _has_decimal_mark(truth):
        return 0.0
    pred, gt = parse_number(prediction), parse_number(truth)
    if pred is None or gt is None:
        return 0.0
    return float(round(pred, 2) == round(gt, 2))


def mean_relative_accuracy(prediction: float, truth: float) -> float:
    """MRA: the share of thresholds θ in {0.50, ..., 0.95} with ``|pred - gt| / (|gt| + 1e-8) < 1 - θ``.

    Computed in float32 as Video-R1 does, because that decides the boundary cases: 11 vs 10 passes
    θ = 0.90 (0.1 < 1 - 0.9 in float32, not in exact arithmetic) and 5 vs 4 fails θ = 0.75.
    """
    pred, gt = np.float32(prediction), np.float32(truth)
    relative_error = np.abs(pred - gt) / (np.abs(gt) + np.float32(1e-8))
    passed = relative_error < (np.float32(1.0) - _MRA_THRESHOLDS)
    return int(passed.sum()) / len(_MRA_THRESHOLDS)


def regression_score(prediction: str, truth: str) -> float:
    pred, gt = parse_number(prediction), parse_number(truth)
    if pred is None or gt is None:
        return 0.0
    return mean_relative_accuracy(pred, gt)


def score(problem_type: str, output: str, solution: str, benchmark: str | None = None) -> float:
    """Score one model output against the record's solution (both raw, tags included), in [0, 1].

    A benchmark in ``SHORT_ANSWER_BENCHMARKS`` is scored by ``final_number_score`` on
    ``extract_final_number(output)``, whatever its problem type."""
    if benchmark in SHORT_ANSWER_BENCHMARKS:
        return final_number_score(extract_final_number(output), extract_answer(solution))
    pred, gt = extract_answer(output), extract_answer(solution)
    if problem_type == "multiple choice":
        return float(pred == gt)  # exact and case-sensitive: "A." and "(A)" score 0
    if problem_type == "numerical":
        return numerical_score(pred, gt)
    if problem_type == "regression":
        return regression_score(pred, gt)
    if problem_type == "OCR":
        return min(1.0, max(0.0, 1.0 - word_error_rate(gt, pred)))
    if problem_type == "free-form":
        return min(1.0, max(0.0, mean_rouge_f1(gt, pred)))
    raise ValueError(f"problem_type {problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}")


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(predictions: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per benchmark: ``acc`` (mean over non-regression items), ``mra`` (mean over regression items),
    ``n``, ``failed`` and ``reported`` (the benchmark's number in the paper's table).

    Each prediction needs the keys ``benchmark``, ``problem_type``, ``score`` and ``failed``. A failed
    prediction (video did not load, bad record, ...) counts as score 0 and stays in the denominator.
    ``acc`` / ``mra`` are None where a benchmark has no item of that kind. Scores are fractions in [0, 1].
    """
    groups: dict[str, dict[str, Any]] = {}
    for i, prediction in enumerate(predictions):
        missing = [key for key in ("benchmark", "problem_type", "score", "failed") if key not in prediction]
        if missing:
            raise KeyError(f"prediction {i} lacks {', '.join(missing)}")
        group = groups.setdefault(prediction["benchmark"], {"acc": [], "mra": [], "failed": 0})
        value = 0.0 if prediction["failed"] else float(prediction["score"])
        group["mra" if prediction["problem_type"] == "regression" else "acc"].append(value)
        group["failed"] += bool(prediction["failed"])
    summary = {}
    for name, group in sorted(groups.items()):
        acc, mra = _mean(group["acc"]), _mean(group["mra"])
        summary[name] = {
            "acc": acc,
            "mra": mra,
            "n": len(group["acc"]) + len(group["mra"]),
            "failed": group["failed"],
            "reported": reported_number(name, acc, mra),
        }
    return summary


def reported_number(benchmark: str, acc: float | None, mra: float | None) -> float | None:
    """VSI-Bench reports ``(acc + mra) / 2``; every other benchmark reports ``acc``."""
    if benchmark != VSI_BENCH:
        return acc
    if acc is None or mra is None:
        return None
    return (acc + mra) / 2


def paper_averages(per_benchmark: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """The V-Reason paper's two averages over the six benchmarks (None unless all six are present).

    ``avg``: the five accuracies plus VSI-Bench accuracy and VSI-Bench MRA counted separately, over 7.
    ``avg_wo_mra``: the five accuracies plus VSI-Bench accuracy, over 6.
    """
    others = [per_benchmark.get(name, {}).get("acc") for name in PAPER_BENCHMARKS if name != VSI_BENCH]
    vsi = per_benchmark.get(VSI_BENCH, {})
    vsi_acc, vsi_mra = vsi.get("acc"), vsi.get("mra")
    if any(value is None for value in [*others, vsi_acc, vsi_mra]):
        return {"avg": None, "avg_wo_mra": None}
    return {"avg": (sum(others) + vsi_acc + vsi_mra) / 7, "avg_wo_mra": (sum(others) + vsi_acc) / 6}
