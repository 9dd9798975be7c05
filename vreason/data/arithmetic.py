"""Small arithmetic word problems with known integer answers, for the text-only (SmolLM2) example.

Records use the benchmark schema with ``problem_type="numerical"`` and ``data_type="text"`` (no video),
so the same prompt template and scoring apply. Deterministic given ``seed``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from vreason.data.records import Record

BENCHMARK = "arithmetic"
NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana")
ITEMS = ("apples", "marbles", "stickers", "books", "coins", "pencils")


def _add(rng: random.Random) -> tuple[str, int]:
    name, item, a, b = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(2, 30), rng.randint(2, 30)
    return f"{name} has {a} {item} and is given {b} more. How many {item} does {name} have now?", a + b


def _subtract(rng: random.Random) -> tuple[str, int]:
    name, item, a = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(10, 40)
    b = rng.randint(1, a - 1)
    return f"{name} had {a} {item} and gave away {b}. How many {item} are left?", a - b


def _multiply(rng: random.Random) -> tuple[str, int]:
    name, item, a, b = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(2, 9), rng.randint(2, 9)
    return f"{name} buys {a} boxes with {b} {item} in each box. How many {item} does {name} buy?", a * b


def _share(rng: random.Random) -> tuple[str, int]:
    item, people, each = rng.choice(ITEMS), rng.randint(2, 6), rng.randint(2, 9)
    return (
        f"{people * each} {item} are shared equally among {people} friends. How many does each friend get?",
        each,
    )


PROBLEM_MAKERS: tuple[Callable[[random.Random], tuple[str, int]], ...] = (_add, _subtract, _multiply, _share)


def arithmetic_problems(n: int, seed: int = 0) -> list[Record]:
    """``n`` text records whose solutions are ``<answer>k</answer>`` for an integer k."""
    rng = random.Random(seed)
    made = [rng.choice(PROBLEM_MAKERS)(rng) for _ in range(n)]
    return _records(made, BENCHMARK)


def _records(made: list[tuple[str, int]], benchmark: str) -> list[Record]:
    """Numerical text records of ``benchmark`` from (problem, answer) pairs, numbered from 0."""
    return [
        Record(
            problem_id=i,
            problem=problem,
            problem_type="numerical",
            options=None,
            data_type="text",
            path=None,
            solution=f"<answer>{answer}</answer>",
            data_source=f"synthetic/{benchmark}",
            benchmark=benchmark,
        )
        for i, (problem, answer) in enumerate(made)
    ]


# Short-answer arithmetic for small instruct models (the SmolLM2 study, docs/studies/smollm2.md): the
# prompt asks for the number only (``prompts.SHORT_ANSWER_TEMPLATE``) and the output is scored on the
# model's stated result (``scoring.extract_final_number``). ``SHORT_OPERATIONS`` are the difficulty
# levels measured there; the benchmark draws from ``SHORT_DEFAULT``, the word-problem multiplication
# above, which SmolLM2-135M-Instruct (greedy) gets right about two times in three (87 of 128).
SHORT_BENCHMARK = "arithmetic_short"


def _add_1digit(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return f"What is {a} + {b}?", a + b


def _add_upto20(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(1, 20), rng.randint(1, 20)
    return f"What is {a} + {b}?", a + b


def _add_2digit(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"What is {a} + {b}?", a + b


def _subtract_1digit(rng: random.Random) -> tuple[str, int]:
    a = rng.randint(2, 18)
    b = rng.randint(1, min(9, a - 1))
    return f"What is {a} - {b}?", a - b


def _subtract_2digit(rng: random.Random) -> tuple[str, int]:
    a = rng.randint(11, 99)
    b = rng.randint(10, a - 1)
    return f"What is {a} - {b}?", a - b


def _multiply_1digit(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return f"What is {a} * {b}?", a * b


def _two_step(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    c = rng.randint(1, a + b - 1)
    return f"What is {a} + {b} - {c}?", a + b - c


SHORT_OPERATIONS: dict[str, Callable[[random.Random], tuple[str, int]]] = {
    "add_1digit": _add_1digit,
    "add_upto20": _add_upto20,
    "add_2digit": _add_2digit,
    "subtract_1digit": _subtract_1digit,
    "subtract_2digit": _subtract_2digit,
    "multiply_1digit": _multiply_1digit,
    "two_step": _two_step,
    "multiply_word": _multiply,
}
SHORT_DEFAULT = ("multiply_word",)


def short_arithmetic_problems(
    n: int, seed: int = 0, operations: tuple[str, ...] = SHORT_DEFAULT
) -> list[Record]:
    """``n`` text records of benchmark ``arithmetic_short`` with solutions ``<answer>k</answer>``; each
    record's operation is drawn uniformly from ``operations`` (names in ``SHORT_OPERATIONS``), so a
    seed is one draw of problems (with replacement: a draw may repeat a problem)."""
    unknown = [name for name in operations if name not in SHORT_OPERATIONS]
    if unknown or not operations:
        raise ValueError(f"unknown operations {unknown}; known: {', '.join(SHORT_OPERATIONS)}")
    rng = random.Random(seed)
    made = [SHORT_OPERATIONS[rng.choice(operations)](rng) for _ in range(n)]
    return _records(made, SHORT_BENCHMARK)
