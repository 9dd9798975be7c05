"""Benchmark records: the JSON schema of Video-R1's evaluation files (PROTOCOL.md, "Records").

A file that cannot be read as a JSON list of objects is an error for the whole file. A record that is
malformed on its own (a missing field, an unknown problem type, a solution letter that is not among the
options) is still returned, with ``error`` set, so that the run records it as a failed prediction for
that one sample and the benchmark's denominator stays whole.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vreason.data.scoring import PROBLEM_TYPES, extract_answer

DATA_TYPES = ("video", "text")
# "A. text" in Video-R1's files; "A) text", "(A) text" and "A: text" are accepted too.
_OPTION_LETTER = re.compile(r"^\s*\(?([A-Z])[.):]")


@dataclass
class Record:
    """One benchmark question. ``path`` is relative to the benchmark root (``./...``); None for text."""

    problem_id: int | str
    problem: str
    problem_type: str
    options: list[str] | None
    data_type: str
    path: str | None
    solution: str
    data_source: str | None
    benchmark: str
    error: str | None = None

    @property
    def sample_id(self) -> str:
        """Unique across a run: ``"<benchmark>/<problem_id>"``."""
        return f"{self.benchmark}/{self.problem_id}"

    def video_path(self, root: str | Path) -> Path:
        """Absolute path of the record's video: ``path`` joined to ``root`` (Video-R1 drops the ``.``)."""
        if self.path is None:
            raise ValueError(f"{self.sample_id}: record has no path (data_type {self.data_type!r})")
        return Path(os.path.abspath(Path(root) / self.path))


def option_letters(options: list[str]) -> list[str]:
    """The leading letters of options written ``"A. ..."`` (or ``"A) ..."``, ``"(A) ..."``, ``"A: ..."``)."""
    return [m.group(1) for option in options if (m := _OPTION_LETTER.match(option))]


def _record_error(item: dict[str, Any]) -> str | None:
    """What is wrong with one record on its own, or None."""
    required = {
        "problem_id": (int, str),
        "problem": str,
        "problem_type": str,
        "data_type": str,
        "solution": str,
    }
    for field, kind in required.items():
        if field not in item:
            return f"missing field {field!r}"
        if not isinstance(item[field], kind) or isinstance(item[field], bool):
            return f"field {field!r} has type {type(item[field]).__name__}"
    if item["problem_type"] not in PROBLEM_TYPES:
        return f"unknown problem_type {item['problem_type']!r} (known: {', '.join(PROBLEM_TYPES)})"
    if item["data_type"] not in DATA_TYPES:
        return f"unsupported data_type {item['data_type']!r} (known: {', '.join(DATA_TYPES)})"
    if item["data_type"] == "video" and not (isinstance(item.get("path"), str) and item["path"]):
        return "missing field 'path' for a video record"
    if item["problem_type"] == "multiple choice":
        options = item.get("options")
        if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
            return "multiple-choice record needs 'options', a non-empty list of strings"
        letter = extract_answer(item["solution"])
        if letter not in option_letters(options):
            return f"solution {letter!r} is not among the option letters {option_letters(options)}"
    return None


def _text(item: dict[str, Any], field: str) -> str:
    """The field if it is a string, else "" (the record's ``error`` already says what is wrong)."""
    value = item.get(field)
    return value if isinstance(value, str) else ""


def _record(item: dict[str, Any], index: int, benchmark: str) -> Record:
    error = _record_error(item)
    problem_id = item.get("problem_id")
    if not isinstance(problem_id, int | str) or isinstance(problem_id, bool):
        problem_id = f"item{index}"  # keeps the failed sample addressable
    options = item.get("options")
    return Record(
        problem_id=problem_id,
        problem=_text(item, "problem"),
        problem_type=_text(item, "problem_type"),
        options=list(options) if isinstance(options, list) else None,
        data_type=_text(item, "data_type"),
        path=_text(item, "path") or None,
        solution=_text(item, "solution"),
        data_source=_text(item, "data_source") or None,
        benchmark=benchmark,
        error=error,
    )


def records_from_items(items: Any, benchmark: str, source: str = "<records>") -> list[Record]:
    """Records from an already-parsed JSON value (a list of objects); ``source`` names it in errors."""
    if not isinstance(items, list):
        raise ValueError(f"{source}: expected a JSON list of records, got {type(items).__name__}")
    records, first_index = [], {}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{source}: item {index} is a {type(item).__name__}, not a JSON object")
        record = _record(item, index, benchmark)
        # sample_id keys predictions, resumption and paired comparisons, so it must be unique.
        if record.sample_id in first_index:
            raise ValueError(
                f"{source}: problem_id {record.problem_id!r} occurs at items {first_index[record.sample_id]}"
                f" and {index}"
            )
        first_index[record.sample_id] = index
        records.append(record)
    return records


def load_records(path: str | Path, benchmark: str) -> list[Record]:
    """Read one benchmark file (a JSON list of records)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {path} does not exist")
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    return records_from_items(items, benchmark, source=str(path))
