"""The prompt text and chat messages, exactly as Video-R1 builds them (PROTOCOL.md, "Prompt")."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vreason.data.records import Record
from vreason.data.scoring import SHORT_ANSWER_BENCHMARKS

# Verbatim, including the missing period before "It's".
QUESTION_TEMPLATE = (
    "{Question}\n"
    "Please think about this question as if you were a human pondering deeply. "
    "Engage in an internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', "
    "'let's break it down', etc, or other natural language thought expressions "
    "It's encouraged to include self-reflection or verification in the reasoning process. "
    "Provide your detailed reasoning between the <think> and </think> tags, and then give your final answer "
    "between the <answer> and </answer> tags."
)

TYPE_TEMPLATE = {
    "multiple choice": " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> tags.",
    "numerical": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
    "regression": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
    "OCR": " Please transcribe text from the image/video clearly and provide your text answer within the <answer> </answer> tags.",
    "free-form": " Please provide your text answer within the <answer> </answer> tags.",
}


# The prompt of the short-answer benchmarks (``scoring.SHORT_ANSWER_BENCHMARKS``), for small instruct
# models that never follow the template above (SmolLM2-135M writes no tags and its accuracy is then 0);
# chosen by measurement in docs/studies/smollm2.md.
SHORT_ANSWER_TEMPLATE = "{Question} Answer with the number only."


def build_question(record: Record) -> str:
    """The ``{Question}``: the problem, plus ``Options:`` and one option per line for multiple choice.

    No newline is inserted between the problem and ``Options:`` (Video-R1 concatenates them).
    """
    if record.problem_type == "multiple choice":
        return record.problem + "Options:\n" + "".join(option + "\n" for option in record.options or [])
    return record.problem


def build_prompt(record: Record) -> str:
    """The full user text: the question template filled in, then the problem type's instruction (for a
    short-answer benchmark: the question, then "Answer with the number only.")."""
    if record.benchmark in SHORT_ANSWER_BENCHMARKS:
        return SHORT_ANSWER_TEMPLATE.format(Question=build_question(record))
    if record.problem_type not in TYPE_TEMPLATE:
        raise ValueError(f"{record.sample_id}: no prompt for problem_type {record.problem_type!r}")
    return QUESTION_TEMPLATE.format(Question=build_question(record)) + TYPE_TEMPLATE[record.problem_type]


def build_messages(record: Record, video_path: str | Path, video_options: dict[str, Any]) -> list[dict]:
    """One user turn: the video element (absolute path plus qwen-vl-utils' per-video keys), then the text.

    The chat template adds the default system turn ("You are a helpful assistant.").
    """
    video = {"type": "video", "video": os.path.abspath(video_path), **video_options}
    return [{"role": "user", "content": [video, {"type": "text", "text": build_prompt(record)}]}]


def build_text_messages(question: str) -> list[dict]:
    """One text-only user turn, for causal LMs (pass ``build_prompt(record)`` to use the template)."""
    return [{"role": "user", "content": question}]
