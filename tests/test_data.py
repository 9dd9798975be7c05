"""Records, benchmark files, prompts and the synthetic data sets (PROTOCOL.md, "Records" and "Prompt")."""

from __future__ import annotations

import json
import re
from pathlib import Path

import av
import numpy as np
import pytest

from vreason.data import (
    BENCHMARKS,
    Record,
    arithmetic_problems,
    build_messages,
    build_prompt,
    build_question,
    build_text_messages,
    extract_answer,
    load_records,
    resolve_benchmark_file,
    score,
)
from vreason.data.records import option_letters
from vreason.data.synthetic import COLOURS, SIZES, write_synthetic_benchmark

# PROTOCOL.md's question template, written out again here so that a change to the code shows up.
TEMPLATE_TAIL = (
    "\nPlease think about this question as if you were a human pondering deeply. Engage in an internal "
    "dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', 'let's break it down', "
    "etc, or other natural language thought expressions It's encouraged to include self-reflection or "
    "verification in the reasoning process. Provide your detailed reasoning between the <think> and </think> "
    "tags, and then give your final answer between the <answer> and </answer> tags."
)


def _item(**overrides) -> dict:
    item = {
        "problem_id": 7,
        "problem": "What happens first?",
        "problem_type": "multiple choice",
        "options": ["A. a door opens", "B. a dog barks"],
        "data_type": "video",
        "path": "./MVBench/clip.mp4",
        "solution": "<answer>B</answer>",
        "data_source": "mvbench",
    }
    return item | overrides


def _write(tmp_path: Path, items, name: str = "eval.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(items), encoding="utf-8")
    return path


def test_load_records_reads_the_schema(tmp_path: Path) -> None:
    regression = _item(problem_id=8, problem_type="regression", options=[], solution="<answer>3.5</answer>")
    records = load_records(_write(tmp_path, [_item(), regression]), "mvbench")
    assert [r.sample_id for r in records] == ["mvbench/7", "mvbench/8"]
    assert records[0] == Record(
        problem_id=7,
        problem="What happens first?",
        problem_type="multiple choice",
        options=["A. a door opens", "B. a dog barks"],
        data_type="video",
        path="./MVBench/clip.mp4",
        solution="<answer>B</answer>",
        data_source="mvbench",
        benchmark="mvbench",
        error=None,
    )
    assert records[1].error is None
    assert records[0].video_path(tmp_path) == tmp_path / "MVBench" / "clip.mp4"


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        load_records(tmp_path / "nowhere.json", "mmvu")


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"problem_id": 1},\n  {"problem_id": 2,,}\n]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.json: invalid JSON at line 3"):
        load_records(path, "mmvu")


@pytest.mark.parametrize(
    ("content", "message"), [({"a": 1}, "expected a JSON list"), ([1, 2], "item 0 is a int")]
)
def test_structural_errors_fail_the_file(tmp_path: Path, content, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_records(_write(tmp_path, content), "mmvu")


def test_duplicate_problem_ids_fail_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="problem_id 7 occurs at items 0 and 1"):
        load_records(_write(tmp_path, [_item(), _item()]), "mmvu")


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({k: v for k, v in _item().items() if k != "solution"}, "missing field 'solution'"),
        (_item(problem_type="essay"), "unknown problem_type 'essay'"),
        (_item(solution="<answer>C</answer>"), "solution 'C' is not among the option letters ['A', 'B']"),
        (_item(options=None), "needs 'options'"),
        (_item(problem=None), "field 'problem' has type NoneType"),
        (_item(data_type="image"), "unsupported data_type 'image'"),
        (_item(path=""), "missing field 'path'"),
    ],
)
def test_bad_record_is_kept_with_its_error(tmp_path: Path, item: dict, message: str) -> None:
    good = _item(problem_id=1)
    records = load_records(_write(tmp_path, [good, item]), "tempcompass")
    assert records[0].error is None
    assert records[1].error is not None and message in records[1].error
    assert records[1].sample_id == "tempcompass/7"


def test_option_letters_accept_common_forms() -> None:
    assert option_letters(["A. left", "B) right", "(C) up", "D: down", "E without a mark"]) == [
        "A",
        "B",
        "C",
        "D",
    ]


def test_record_without_problem_id_stays_addressable(tmp_path: Path) -> None:
    item = {k: v for k, v in _item().items() if k != "problem_id"}
    records = load_records(_write(tmp_path, [_item(problem_id=0), item]), "mmvu")
    assert records[1].sample_id == "mmvu/item1"
    assert "problem_id" in records[1].error


def test_six_benchmarks_use_video_r1_file_names(tmp_path: Path) -> None:
    assert {name: spec.file for name, spec in BENCHMARKS.items()} == {
        "vsibench": "eval_vsibench.json",
        "videommmu": "eval_videommmu.json",
        "mmvu": "eval_mmvu.json",
        "mvbench": "eval_mvbench.json",
        "tempcompass": "eval_tempcompass.json",
        "videomme": "eval_videomme.json",
    }
    (tmp_path / "eval_mmvu.json").write_text("[]", encoding="utf-8")
    assert resolve_benchmark_file(tmp_path, "mmvu") == tmp_path / "eval_mmvu.json"


@pytest.mark.parametrize("sub", ["missing_root", "."])
def test_absent_benchmark_file_says_what_to_download_in_one_line(tmp_path: Path, sub: str) -> None:
    root = tmp_path / sub
    with pytest.raises(FileNotFoundError) as info:
        resolve_benchmark_file(root, "vsibench")
    message = str(info.value)
    assert "\n" not in message
    assert "Video-R1/Video-R1-eval" in message and str(root / "eval_vsibench.json") in message
    assert "videos" in message


def test_unknown_benchmark_lists_known_ones() -> None:
    with pytest.raises(KeyError, match="vsibench"):
        resolve_benchmark_file("/tmp", "nope")


def _record(**overrides) -> Record:
    fields = dict(
        problem_id=1,
        problem="Which object is closest to the camera?\n",
        problem_type="multiple choice",
        options=["A. chair", "B. table", "C. lamp"],
        data_type="video",
        path="./VSI/scene.mp4",
        solution="<answer>A</answer>",
        data_source="vsibench",
        benchmark="vsibench",
    )
    return Record(**(fields | overrides))


def test_multiple_choice_prompt_is_exactly_the_protocol_text() -> None:
    expected = (
        "Which object is closest to the camera?\nOptions:\nA. chair\nB. table\nC. lamp\n"
        + TEMPLATE_TAIL
        + " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> tags."
    )
    assert build_prompt(_record()) == expected


def test_options_follow_the_problem_without_a_newline() -> None:
    assert build_question(_record(problem="Pick one.")) == "Pick one.Options:\nA. chair\nB. table\nC. lamp\n"


def test_regression_prompt_is_exactly_the_protocol_text() -> None:
    record = _record(problem="How many chairs are in the room?", problem_type="regression", options=None)
    expected = (
        "How many chairs are in the room?"
        + TEMPLATE_TAIL
        + " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags."
    )
    assert build_prompt(record) == expected


def test_messages_put_the_video_first_with_its_options(tmp_path: Path) -> None:
    record = _record()
    messages = build_messages(record, Path("relative/scene.mp4"), {"fps": 2.0, "max_pixels": 200704})
    assert len(messages) == 1 and messages[0]["role"] == "user"
    video, text = messages[0]["content"]
    assert video["type"] == "video" and Path(video["video"]).is_absolute()
    assert video["video"].endswith("relative/scene.mp4")
    assert video["fps"] == 2.0 and video["max_pixels"] == 200704
    assert text == {"type": "text", "text": build_prompt(record)}
    assert build_text_messages("2+2?") == [{"role": "user", "content": "2+2?"}]


def _solve(problem: str) -> int:
    """Answer the arithmetic templates independently of the generator."""
    numbers = [int(n) for n in re.findall(r"\d+", problem)]
    if "given" in problem:
        return numbers[0] + numbers[1]
    if "gave away" in problem:
        return numbers[0] - numbers[1]
    if "boxes" in problem:
        return numbers[0] * numbers[1]
    return numbers[0] // numbers[1]


def test_arithmetic_problems_have_correct_integer_answers() -> None:
    records = arithmetic_problems(40, seed=3)
    assert records == arithmetic_problems(40, seed=3) and records != arithmetic_problems(40, seed=4)
    for record in records:
        assert (record.problem_type, record.data_type, record.path, record.error) == (
            "numerical",
            "text",
            None,
            None,
        )
        assert int(extract_answer(record.solution)) == _solve(record.problem)
        assert score("numerical", record.solution, record.solution) == 1.0
    assert len({r.sample_id for r in records}) == 40


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_benchmark(root, n=8, seed=0)
    return root


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert float(stream.average_rate) == 8
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])


def _square_centre(frame: np.ndarray) -> np.ndarray:
    mask = np.abs(frame.astype(int) - 235).sum(axis=-1) > 60
    return np.argwhere(mask).mean(axis=0)  # (row, col)


def test_synthetic_benchmark_is_valid_and_deterministic(synthetic_root: Path, tmp_path: Path) -> None:
    records = load_records(synthetic_root / "synthetic.json", "synthetic")
    assert len(records) == 8 and all(r.error is None for r in records)
    assert all(r.path.startswith("./videos/") for r in records)
    assert {r.data_source for r in records} == {"synthetic/direction", "synthetic/colour"}
    again = write_synthetic_benchmark(tmp_path, n=8, seed=0)
    assert again.read_text() == (synthetic_root / "synthetic.json").read_text()
    other = write_synthetic_benchmark(tmp_path / "other", n=8, seed=1)
    assert other.read_text() != again.read_text()


def test_synthetic_videos_decode_and_show_the_answer(synthetic_root: Path) -> None:
    for record in load_records(synthetic_root / "synthetic.json", "synthetic"):
        frames = _decode(record.video_path(synthetic_root))
        assert len(frames) in (8, 16, 24)  # 1-3 s at 8 fps
        assert frames.shape[2:0:-1] in SIZES
        letter = extract_answer(record.solution)
        answer = next(o.split(". ", 1)[1] for o in record.options if o.startswith(letter + "."))
        if record.data_source == "synthetic/direction":
            drow, dcol = _square_centre(frames[-1]) - _square_centre(frames[0])
            moved = (
                ("down" if drow > 0 else "up") if abs(drow) > abs(dcol) else ("right" if dcol > 0 else "left")
            )
            assert moved == answer
        else:
            row, col = _square_centre(frames[len(frames) // 2]).round().astype(int)
            pixel = frames[len(frames) // 2, row, col].astype(int)
            nearest = min(COLOURS, key=lambda name: np.abs(pixel - np.array(COLOURS[name])).sum())
            assert nearest == answer
