"""Scoring follows PROTOCOL.md ("Scoring"): hand-computed cases, malformed outputs, the paper's averages."""

from __future__ import annotations

import random

import pytest
import torch

from vreason.data.scoring import (
    extract_answer,
    mean_relative_accuracy,
    paper_averages,
    reported_number,
    score,
    summarise,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>hmm</think><answer>B</answer>", "B"),
        ("<answer>\n  12.5 \n</answer>", "12.5"),
        ("<answer>A</answer> then <answer>C</answer>", "A"),  # the first tag wins
        ("<answer>two\nlines</answer>", "two\nlines"),  # DOTALL
        ("  no tags at all ", "no tags at all"),  # whole output
        ("<answer>unclosed", "<answer>unclosed"),
        ("", ""),
        ("<answer> </answer>", "<answer> </answer>"),  # empty tag: Video-R1 falls back to the output
    ],
)
def test_extract_answer(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("<answer>B</answer>", 1.0),
        ("<think>A or B?</think>\n<answer> B </answer>", 1.0),
        ("B", 1.0),  # no tag: the whole output is the answer
        ("<answer>B.</answer>", 0.0),
        ("<answer>(B)</answer>", 0.0),
        ("<answer>b</answer>", 0.0),  # case-sensitive
        ("The answer is B", 0.0),
        ("<answer>A</answer><answer>B</answer>", 0.0),  # only the first tag counts
        ("", 0.0),
    ],
)
def test_multiple_choice_is_exact_match(output: str, expected: float) -> None:
    assert score("multiple choice", output, "<answer>B</answer>") == expected


@pytest.mark.parametrize(
    ("output", "solution", "expected"),
    [
        ("<answer>42</answer>", "<answer>42</answer>", 1.0),
        ("<answer>3.141</answer>", "<answer>3.14</answer>", 1.0),  # equal at 2 decimals
        ("<answer>3.15</answer>", "<answer>3.14</answer>", 0.0),
        ("<answer>42.0</answer>", "<answer>42</answer>", 0.0),  # only one side has "."
        ("<answer>1,000</answer>", "<answer>1000</answer>", 0.0),  # only one side has ","
        ("<answer>1,000</answer>", "<answer>1,000</answer>", 1.0),
        ("<answer>1,234.5</answer>", "<answer>1234.50</answer>", 1.0),  # both have a mark; commas stripped
        ("<answer>forty-two</answer>", "<answer>42</answer>", 0.0),
        ("<answer></answer>", "<answer>42</answer>", 0.0),
    ],
)
def test_numerical(output: str, solution: str, expected: float) -> None:
    assert score("numerical", output, solution) == expected


@pytest.mark.parametrize(
    ("prediction", "truth", "expected"),
    [
        ("10", "10", 1.0),
        ("0", "0", 1.0),
        ("1", "0", 0.0),
        ("15", "10", 0.0),  # rel 0.5 is not < 0.5 (strict)
        ("14.5", "10", 0.1),  # rel 0.45 passes only θ = 0.50
        ("5", "4", 0.5),  # rel 0.25 passes θ = 0.50 ... 0.70, not 0.75
        ("3", "4", 0.5),
        ("11", "10", 0.9),  # rel 0.1 < 1 - 0.9 in float32, as in Video-R1
        ("1,000", "1000", 1.0),  # regression strips commas; no decimal-mark rule
        ("about 10", "10", 0.0),  # parse failure
        ("", "10", 0.0),
    ],
)
def test_regression_mra(prediction: str, truth: str, expected: float) -> None:
    result = score("regression", f"<answer>{prediction}</answer>", f"<answer>{truth}</answer>")
    assert result == pytest.approx(expected, abs=1e-9)


def _video_r1_mra(prediction: float, truth: float) -> float:
    """PROTOCOL's MRA computed the way Video-R1 computes it: torch float32 throughout."""
    pred, gt = torch.tensor(prediction, dtype=torch.float32), torch.tensor(truth, dtype=torch.float32)
    thresholds = torch.arange(0.5, 0.95 + 0.025, 0.05, dtype=torch.float32)
    relative = torch.abs(pred - gt) / (torch.abs(gt) + 1e-8)
    return (relative < (1 - thresholds)).float().mean().item()


def test_mra_agrees_with_float32_reference_on_boundaries_and_random_values() -> None:
    rng = random.Random(0)
    truths = [1, 2, 3, 4, 5, 7, 10, 12.5, 20, 100, 0.3]
    cases = [(t * (1 + k * 0.05), t) for t in truths for k in range(-12, 13)]  # exactly on thresholds
    cases += [(rng.uniform(0, 50), rng.uniform(0.1, 50)) for _ in range(300)]
    for prediction, truth in cases:
        assert mean_relative_accuracy(prediction, truth) == pytest.approx(
            _video_r1_mra(prediction, truth), abs=1e-6
        )


@pytest.mark.parametrize(
    ("output", "solution", "expected"),
    [
        ("<answer>hello world</answer>", "<answer>hello world</answer>", 1.0),
        ("<answer>hello</answer>", "<answer>hello world</answer>", 0.5),  # one deletion in two words
        ("<answer>Hello world</answer>", "<answer>hello world</answer>", 0.5),  # case-sensitive
        ("<answer>a b c d e</answer>", "<answer>x</answer>", 0.0),  # WER 5, clipped
    ],
)
def test_ocr_is_one_minus_word_error_rate(output: str, solution: str, expected: float) -> None:
    assert score("OCR", output, solution) == pytest.approx(expected)


def test_free_form_is_mean_of_rouge_1_2_l_f1() -> None:
    # reference "the cat sat", hypothesis "The cat": R1 F1 0.8, R2 F1 2/3, RL F1 0.8
    expected = (0.8 + 2 / 3 + 0.8) / 3
    assert score("free-form", "<answer>The cat</answer>", "<answer>the cat sat</answer>") == pytest.approx(
        expected
    )
    assert score("free-form", "<answer>dog</answer>", "<answer>the cat sat</answer>") == 0.0
    assert score("free-form", "<answer>The cat, sat.</answer>", "<answer>the cat sat</answer>") == 1.0


def test_unknown_problem_type_is_named() -> None:
    with pytest.raises(ValueError, match="'essay'"):
        score("essay", "<answer>x</answer>", "<answer>x</answer>")


def _prediction(benchmark: str, problem_type: str, value: float, failed: bool = False) -> dict:
    return {"benchmark": benchmark, "problem_type": problem_type, "score": value, "failed": failed}


def test_summarise_separates_accuracy_and_mra_and_counts_failures_as_zero() -> None:
    predictions = [
        _prediction("vsibench", "multiple choice", 1.0),
        _prediction("vsibench", "multiple choice", 0.0),
        _prediction("vsibench", "multiple choice", 1.0, failed=True),  # a failure scores 0 whatever it says
        _prediction("vsibench", "regression", 0.6),
        _prediction("vsibench", "regression", 0.2),
        _prediction("mvbench", "multiple choice", 1.0),
        _prediction("mvbench", "multiple choice", 0.0, failed=True),
    ]
    summary = summarise(predictions)
    assert summary["vsibench"]["acc"] == pytest.approx(1 / 3)
    assert summary["vsibench"]["mra"] == pytest.approx(0.4)
    assert summary["vsibench"]["n"] == 5 and summary["vsibench"]["failed"] == 1
    assert summary["vsibench"]["reported"] == pytest.approx((1 / 3 + 0.4) / 2)
    assert summary["mvbench"] == {"acc": 0.5, "mra": None, "n": 2, "failed": 1, "reported": 0.5}


def test_summarise_names_missing_keys() -> None:
    with pytest.raises(KeyError, match="failed"):
        summarise([{"benchmark": "mmvu", "problem_type": "multiple choice", "score": 1.0}])


def test_vsi_bench_reports_mean_of_accuracy_and_mra() -> None:
    assert reported_number("vsibench", 0.3, 0.2) == pytest.approx(0.25)
    assert reported_number("mmvu", 0.3, None) == 0.3
    assert reported_number("vsibench", 0.3, None) is None


def test_paper_averages_count_vsi_accuracy_and_mra_separately() -> None:
    per_benchmark = {
        "vsibench": {"acc": 0.3, "mra": 0.2},
        "videommmu": {"acc": 0.4},
        "mmvu": {"acc": 0.5},
        "mvbench": {"acc": 0.6},
        "tempcompass": {"acc": 0.7},
        "videomme": {"acc": 0.8},
    }
    averages = paper_averages(per_benchmark)
    assert averages["avg"] == pytest.approx((0.3 + 0.2 + 0.4 + 0.5 + 0.6 + 0.7 + 0.8) / 7)  # 0.5
    assert averages["avg_wo_mra"] == pytest.approx((0.3 + 0.4 + 0.5 + 0.6 + 0.7 + 0.8) / 6)  # 0.55


def test_paper_averages_need_all_six_benchmarks() -> None:
    partial = {"vsibench": {"acc": 0.3, "mra": 0.2}, "mmvu": {"acc": 0.5}}
    assert paper_averages(partial) == {"avg": None, "avg_wo_mra": None}
