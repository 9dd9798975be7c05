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
    records = []
    for i in range(n):
        problem, answer = rng.choice(PROBLEM_MAKERS)(rng)
        records.append(
            Record(
                problem_id=i,
                problem=problem,
                problem_type="numerical",
                options=None,
                data_type="text",
                path=None,
                solution=f"<answer>{answer}</answer>",
                data_source="synthetic/arithmetic",
                benchmark=BENCHMARK,
            )
        )
    return records
