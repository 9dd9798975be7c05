"""The short-answer arithmetic benchmark of the SmolLM2 study (docs/studies/smollm2.md): its prompt, the
extraction of the model's stated result from hand-written outputs (most of them SmolLM2-135M's own
phrasings), its score, the generator, and the run and re-scoring paths that must use them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vreason.cli import main
from vreason.config import load_config
from vreason.data.arithmetic import (
    SHORT_BENCHMARK,
    SHORT_DEFAULT,
    SHORT_OPERATIONS,
    arithmetic_problems,
    short_arithmetic_problems,
)
from vreason.data.prompts import QUESTION_TEMPLATE, TYPE_TEMPLATE, build_prompt
from vreason.data.scoring import (
    SHORT_ANSWER_BENCHMARKS,
    extract_answer,
    extract_final_number,
    final_number_score,
    score,
)
from vreason.engine import SampleTrace
from vreason.lightning import make_prediction
from vreason.run import load_experiment_records


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("7 + 6 = 13", "13"),
        ("The answer is 16.", "16"),  # the full stop ends the sentence, not a decimal
        ("the answer is: 42", "42"),
        ("2 * 9 = 18", "18"),
        # the first cue wins over the numbers of the ramble after it
        ("74 + 24 = 14\n\nThis is a classic example of how math can be used in 3 ways", "14"),
        ("Fatima buys 2 boxes with 9 stickers each, so she buys 2 * 9 = 18 stickers.\nShe also buys 2", "18"),
        ("To solve this problem, we need the product of 8 and 7.\n\nThe answer is 54.", "54"),
        ("1. 5 + 1 - 2 = 5 + 2 = 7", "5"),  # a chained equation: its first result
        ("56", "56"),  # the number only, as asked
        ("2 - 1 is 2.", "2"),  # no cue: the last number
        ("We add 12 and 9, which gives us 21", "21"),
        ("9 - 3 leaves 6", "6"),  # the minus of "9 - 3" is an operator, not a sign
        ("9-3", "3"),
        ("x = -3", "-3"),
        ("= 1,024 apples", "1024"),  # thousands comma removed
        ("= 12.5", "12.5"),
        ("ANSWER IS 8", "8"),
        ("To solve this, we need to find the sum", ""),  # no number at all
        ("", ""),
    ],
)
def test_extract_final_number_reads_the_stated_result(output: str, expected: str) -> None:
    assert extract_final_number(output) == expected


@pytest.mark.parametrize(
    ("output", "solution", "expected"),
    [
        ("8 * 7 = 56", "<answer>56</answer>", 1.0),
        ("8 * 7 = 54", "<answer>56</answer>", 0.0),
        ("The answer is 56.0", "<answer>56</answer>", 1.0),  # equal as numbers
        ("8 * 7 = 56", "56", 1.0),  # a prediction file holds the already-extracted solution
        ("We multiply 8 and 7 to get", "<answer>56</answer>", 0.0),  # truncated before any number
        ("<answer>56</answer>", "<answer>56</answer>", 1.0),  # a tag holds one number: still read
        ("The answer is 56 and 3 * 2 = 6", "<answer>56</answer>", 1.0),  # the first cue is "answer is"
        ("3 * 2 = 6 so the answer is 56", "<answer>56</answer>", 0.0),  # ... and here it is "="
    ],
)
def test_short_answer_score(output: str, solution: str, expected: float) -> None:
    assert score("numerical", output, solution, SHORT_BENCHMARK) == expected


def test_final_number_score_needs_two_numbers() -> None:
    assert final_number_score("", "56") == 0.0
    assert final_number_score("56", "") == 0.0
    assert final_number_score("56", "56") == 1.0


def test_other_benchmarks_keep_video_r1_scoring() -> None:
    # The same output scores 0 under Video-R1's rules (no tag: the whole text is not a number) ...
    assert score("numerical", "8 * 7 = 56", "<answer>56</answer>") == 0.0
    assert score("numerical", "8 * 7 = 56", "<answer>56</answer>", "arithmetic") == 0.0
    assert extract_answer("x <answer>56</answer>") == "56"
    # ... and 1 here; the short format also ignores the tag-first rule.
    assert score("numerical", "8 * 7 = 56", "<answer>56</answer>", SHORT_BENCHMARK) == 1.0
    assert extract_answer("8 * 7 = 56", SHORT_BENCHMARK) == "56"


def test_short_benchmark_prompt_asks_for_the_number_only() -> None:
    record = short_arithmetic_problems(1, seed=0, operations=("multiply_1digit",))[0]
    assert re.fullmatch(r"What is \d \* \d\? Answer with the number only\.", build_prompt(record))
    assert "<answer>" not in build_prompt(record)
    # The other text benchmark keeps Video-R1's template.
    other = arithmetic_problems(1, seed=0)[0]
    assert (
        build_prompt(other) == QUESTION_TEMPLATE.format(Question=other.problem) + TYPE_TEMPLATE["numerical"]
    )


def _solve(problem: str) -> int:
    """Answer the short templates independently of the generator."""
    numbers = [int(n) for n in re.findall(r"\d+", problem)]
    if "boxes" in problem:
        return numbers[0] * numbers[1]
    terms = problem.removeprefix("What is ").removesuffix("?").split()  # "a op b [op c]", left to right
    value = int(terms[0])
    for op, term in zip(terms[1::2], terms[2::2], strict=True):
        value = {"+": value + int(term), "-": value - int(term), "*": value * int(term)}[op]
    return value


@pytest.mark.parametrize("operation", list(SHORT_OPERATIONS))
def test_short_problems_have_correct_answers(operation: str) -> None:
    records = short_arithmetic_problems(30, seed=5, operations=(operation,))
    assert records == short_arithmetic_problems(30, seed=5, operations=(operation,))
    assert records != short_arithmetic_problems(30, seed=6, operations=(operation,))
    for record in records:
        assert (record.benchmark, record.problem_type, record.data_type, record.error) == (
            SHORT_BENCHMARK,
            "numerical",
            "text",
            None,
        )
        answer = int(extract_answer(record.solution))
        assert answer == _solve(record.problem) and answer >= 0
    assert len({r.sample_id for r in records}) == 30


def test_short_benchmark_defaults_and_names() -> None:
    assert SHORT_BENCHMARK in SHORT_ANSWER_BENCHMARKS
    assert SHORT_DEFAULT == ("multiply_word",)
    assert all("boxes" in r.problem for r in short_arithmetic_problems(10, seed=0))
    with pytest.raises(ValueError, match="unknown operations \\['divide'\\]"):
        short_arithmetic_problems(3, operations=("divide",))
    with pytest.raises(ValueError, match="unknown operations"):
        short_arithmetic_problems(3, operations=())


def test_run_loads_the_short_benchmark_by_name_and_seed() -> None:
    def records(seed: int):
        cfg = load_config(
            overrides=[f"data.benchmarks=[{SHORT_BENCHMARK}]", "data.synthetic_size=6", f"seed={seed}"]
        )
        return load_experiment_records(cfg)

    assert records(1) == short_arithmetic_problems(6, seed=1)
    assert records(1) != records(2)  # a seed is a draw of problems


def test_prediction_is_scored_by_the_short_rules() -> None:
    record = short_arithmetic_problems(1, seed=0)[0]
    truth = extract_answer(record.solution)
    text = f"So the total is 3 * 4 = {truth} items.\nThen 5 more"
    prediction = make_prediction(record, SampleTrace(), text)
    assert (prediction["answer"], prediction["solution"], prediction["score"]) == (truth, truth, 1.0)
    wrong = make_prediction(record, SampleTrace(), f"= {int(truth) + 1}")
    assert wrong["score"] == 0.0


def test_vreason_score_rescores_with_the_short_rules(tmp_path: Path, capsys) -> None:
    record = short_arithmetic_problems(2, seed=0)
    rows = [
        make_prediction(record[0], SampleTrace(), f"= {extract_answer(record[0].solution)}"),
        make_prediction(record[1], SampleTrace(), "no number"),
    ]
    for row in rows:
        row["score"] = 0.5  # stale: the command must recompute it
    path = tmp_path / "run" / "predictions.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["score", str(path)]) == 0
    assert "50.0" in capsys.readouterr().out  # one of two right
