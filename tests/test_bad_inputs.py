"""Bad inputs: per-sample data errors become recorded failed predictions; config and file errors stop
the run before any model loads, naming the field or file."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vreason.cli import main
from vreason.data.synthetic import ClipSpec, render_frames, write_mp4
from vreason.data.video import VideoConfig
from vreason.lightning import RecordCollator
from vreason.models import tiny_processor
from vreason.predictions import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.yaml"
OPTIONS = ["A. left", "B. right", "C. up", "D. down"]


def record(problem_id: int, path: str, **changes) -> dict:
    base = {
        "problem_id": problem_id,
        "problem": "Which way does the square move? ",
        "problem_type": "multiple choice",
        "options": OPTIONS,
        "data_type": "video",
        "path": path,
        "solution": "<answer>B</answer>",
    }
    return {**base, **changes}


@pytest.fixture(scope="module")
def broken_benchmark(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    videos = root / "videos"
    videos.mkdir()
    frames = render_frames(ClipSpec("right", "red", 96, 64, 2))
    write_mp4(videos / "good.mp4", frames)
    data = (videos / "good.mp4").read_bytes()
    (videos / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (videos / "empty.mp4").write_bytes(b"")
    write_mp4(videos / "one_frame.mp4", frames[:1])
    items = [
        record(1, "./videos/good.mp4"),
        record(2, "./videos/missing.mp4"),
        record(3, "./videos/truncated.mp4"),
        record(4, "./videos/empty.mp4"),
        record(5, "./videos/one_frame.mp4"),
        {k: v for k, v in record(6, "./videos/good.mp4").items() if k != "problem"},
        record(7, "./videos/good.mp4", problem_type="essay"),
        record(8, "./videos/good.mp4", options=["A. left", "B. right"], solution="<answer>D</answer>"),
    ]
    (root / "eval_mmvu.json").write_text(json.dumps(items))
    return root


def run_args(tmp: Path, root: Path, *extra: str) -> list[str]:
    return [
        "run", str(SMOKE), "data.benchmarks=[mmvu]", f"data.root={root}", f"output_dir={tmp}/out",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db", "sampling.max_new_tokens=6", *extra,
    ]  # fmt: skip


def test_each_bad_sample_is_a_recorded_failure_and_the_run_goes_on(tmp_path, broken_benchmark, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(run_args(tmp_path, broken_benchmark)) == 0
    rows = {p["problem_id"]: p for p in read_jsonl(tmp_path / "out" / "predictions.jsonl")}
    assert sorted(rows) == list(range(1, 9))
    assert not rows[1]["failed"] and rows[1]["num_tokens"] > 0
    expected_reason = {
        2: "missing.mp4",
        3: "truncated.mp4",
        4: "empty.mp4",
        5: "one_frame.mp4",
        6: "problem",
        7: "essay",
        8: "D",
    }
    for problem_id, fragment in expected_reason.items():
        row = rows[problem_id]
        assert row["failed"] and row["score"] == 0.0, row
        assert fragment in row["error"], (problem_id, row["error"])

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("vreason-smoke").experiment_id])[0]
    assert run.data.metrics["failed"] == 7 and run.data.metrics["mmvu/n"] == 8
    assert run.data.metrics["mmvu/acc"] == pytest.approx(
        rows[1]["score"] / 8
    )  # failures stay in the denominator


def test_invalid_benchmark_json_fails_before_the_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "eval_mmvu.json").write_text("[{not json")
    monkeypatch.setattr("vreason.run.build_model", lambda **_: pytest.fail("model loaded"))
    assert main(run_args(tmp_path, tmp_path)) == 2
    assert "eval_mmvu.json" in capsys.readouterr().err


def test_missing_data_root_says_what_to_download(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("vreason.run.build_model", lambda **_: pytest.fail("model loaded"))
    assert main(run_args(tmp_path, tmp_path / "nowhere")) == 2
    err = capsys.readouterr().err.strip()
    assert "nowhere" in err and "Video-R1" in err and len(err.splitlines()) == 1


def test_missing_model_path_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = run_args(tmp_path, tmp_path / "data", "data.benchmarks=[synthetic]", "data.synthetic_size=1")
    assert main([*args, "model.kind=pretrained", f"model.path={tmp_path}/no-such-model"]) == 2
    assert "no-such-model" in capsys.readouterr().err


def test_video_over_the_token_budget_is_downscaled_or_refused(broken_benchmark):
    from vreason.data.records import load_records

    good = [r for r in load_records(broken_benchmark / "eval_mmvu.json", "mmvu") if r.problem_id == 1]

    def tokens(budget):
        cfg = VideoConfig(min_pixels=3136, max_pixels=12544, max_frames=8, max_video_tokens=budget)
        batch = RecordCollator(tiny_processor(), cfg, broken_benchmark, multimodal=True)(good)
        if batch.inputs is None:
            return batch.failures[0][1]
        return int(torch.prod(batch.inputs["video_grid_thw"][0])) // 4

    unbounded = tokens(None)
    assert unbounded > 4
    assert tokens(4) <= 4  # downscaled to fit
    refused = tokens(2)  # below the smallest frame qwen-vl-utils allows
    assert isinstance(refused, str) and "max_video_tokens=2" in refused


def partly_decodable(path: Path, listed: int = 100, keep: float = 0.7) -> None:
    """An MP4 whose index (written first) lists ``listed`` frames, cut so that only some of them decode."""
    import av

    frames = render_frames(ClipSpec("right", "red", 96, 64, 13))[:listed]
    with av.open(str(path), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture(scope="module")
def mixed_benchmark(tmp_path_factory) -> Path:
    """Video-R1-style file mixing video and text records, with one partly decodable video."""
    root = tmp_path_factory.mktemp("mixed")
    (root / "videos").mkdir()
    write_mp4(root / "videos" / "good.mp4", render_frames(ClipSpec("right", "red", 96, 64, 2)))
    partly_decodable(root / "videos" / "cut.mp4")
    text = {
        "problem_type": "free-form",
        "data_type": "text",
        "solution": "<answer>4</answer>",
        "options": None,
    }
    items = [
        record(1, "./videos/good.mp4"),
        {**record(2, None), **text, "problem": "What is 2 + 2?"},
        record(3, "./videos/cut.mp4"),
        record(4, "./videos/good.mp4", problem="Which way does the red square move?"),
    ]
    (root / "eval_mmvu.json").write_text(json.dumps(items))
    return root


def test_text_records_and_partly_decodable_videos_never_stop_a_video_run(
    tmp_path, mixed_benchmark, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    args = run_args(tmp_path, mixed_benchmark, "data.batch_size=2", "sampling.max_new_tokens=8")
    assert main(args) == 0  # positions: video, and record 2 (in the first batch) has no video tokens
    rows = {p["problem_id"]: p for p in read_jsonl(tmp_path / "out" / "predictions.jsonl")}
    assert sorted(rows) == [1, 2, 3, 4] and not any(p["failed"] for p in rows.values())

    # The text record is answered without the controller, and says so.
    text = rows[2]
    assert text["warnings"] == [
        "no 'video' tokens in the prompt (a text record): decoded without the controller"
    ]
    assert not any(text["trace"]["optimized"]) and set(text["trace"]["controller_norm"]) == {0.0}
    # Its batch neighbour is steered as usual.
    assert rows[1]["warnings"] == [] and any(rows[1]["trace"]["optimized"])
    # The cut file is answered from the frames that decode; the prediction carries both counts.
    [warning] = rows[3]["warnings"]
    listed, decoded = map(int, re.search(r"lists (\d+) frames but (\d+) decode", warning).groups())
    assert listed == 100 and 2 <= decoded < 100 and "cut.mp4" in warning

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("vreason-smoke").experiment_id])[0]
    assert run.data.metrics["warned"] == 2 and run.data.metrics["failed"] == 0
    assert main(args) == 0  # a rerun finishes, adding nothing
    assert len(read_jsonl(tmp_path / "out" / "predictions.rank0.jsonl")) == 4


@pytest.fixture(scope="module")
def three_videos(broken_benchmark):
    from vreason.data.records import load_records

    good = [r for r in load_records(broken_benchmark / "eval_mmvu.json", "mmvu") if r.problem_id == 1][0]
    return [
        replace(good, problem_id=i, problem=f"Question {i}: which way does the square move?")
        for i in range(3)
    ]


def module_for(tiny_vl, collator, decoder_cls=None, **kwargs):
    from vreason.controllers.value_cache import ValueCacheController
    from vreason.engine import Decoder, Method
    from vreason.lightning import VReasonModule
    from vreason.sampling import SamplingConfig

    model, processor = tiny_vl
    sampling = SamplingConfig(do_sample=False, max_new_tokens=5)
    method = Method(controller=ValueCacheController())
    cls = decoder_cls or Decoder
    return VReasonModule(
        model,
        decoder_factory=lambda: cls(model, method, sampling, processor.tokenizer),
        tokenizer=processor.tokenizer,
        seed=0,
        collate=collator.collate,
        **kwargs,
    )


def test_an_exception_in_one_samples_decode_fails_only_that_sample(tiny_vl, broken_benchmark, three_videos):
    from vreason.engine import Decoder

    class FailsOnSample1(Decoder):
        def generate(self, inputs, keys=None, seed=0):
            if "mmvu/1" in keys:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return super().generate(inputs, keys=keys, seed=seed)

    cfg = VideoConfig(min_pixels=3136, max_pixels=12544, max_frames=4)
    collator = RecordCollator(tiny_vl[1], cfg, broken_benchmark, multimodal=True)
    with torch.inference_mode(False):
        clean = module_for(tiny_vl, collator).predict_step(collator(three_videos), 0)
        hurt = module_for(tiny_vl, collator, FailsOnSample1).predict_step(collator(three_videos), 0)
    assert [p["sample_id"] for p in hurt] == ["mmvu/0", "mmvu/1", "mmvu/2"]
    assert hurt[1]["failed"] and "illegal memory access" in hurt[1]["error"]
    for row in (0, 2):  # the rest of the batch is answered, exactly as without the fault
        assert not hurt[row]["failed"] and hurt[row]["trace"]["token_ids"] == clean[row]["trace"]["token_ids"]


def test_a_prompt_over_the_models_context_fails_only_that_sample(tiny_vl, broken_benchmark, three_videos):
    from vreason.lightning import context_length

    assert context_length(tiny_vl[0]) == 32768  # the tiny Qwen2.5-VL's max_position_embeddings
    long = replace(three_videos[2], problem="Which way? " * 100)
    collator = RecordCollator(
        tiny_vl[1], VideoConfig(min_pixels=3136, max_pixels=12544, max_frames=4), broken_benchmark, True
    )
    batch = collator([three_videos[0], long])
    lengths = batch.inputs["attention_mask"].sum(dim=1).tolist()
    limit = (lengths[0] + lengths[1]) // 2
    with torch.inference_mode(False):
        predictions = module_for(tiny_vl, collator, max_prompt_tokens=limit).predict_step(batch, 0)
    assert not predictions[0]["failed"] and predictions[0]["num_tokens"] > 0
    assert predictions[1]["failed"] and f"the prompt has {lengths[1]} tokens" in predictions[1]["error"]
    assert f"context of {limit}" in predictions[1]["error"]


def test_video_paths_outside_data_root_are_opened_as_given(tmp_path, broken_benchmark):
    """Documented choice: a benchmark file is trusted like the config naming it; paths may leave the root."""
    from vreason.data.records import records_from_items

    inside = tmp_path / "root"
    inside.mkdir()
    outside = broken_benchmark / "videos" / "good.mp4"
    items = [record(1, str(outside)), record(2, os.path.relpath(outside, inside))]
    assert items[1]["path"].startswith("../")
    cfg = VideoConfig(min_pixels=3136, max_pixels=12544, max_frames=4)
    batch = RecordCollator(tiny_processor(), cfg, inside, multimodal=True)(records_from_items(items, "mmvu"))
    assert batch.failures == [] and [r.problem_id for r in batch.records] == [1, 2]


def test_a_record_the_processor_refuses_fails_alone(tiny_vl, broken_benchmark, three_videos):
    class Picky(RecordCollator):
        def collate(self, messages, videos):
            if any("Question 1" in str(m) for m in messages):
                raise ValueError("the processor cannot take this one")
            return super().collate(messages, videos)

    cfg = VideoConfig(min_pixels=3136, max_pixels=12544, max_frames=4)
    batch = Picky(tiny_vl[1], cfg, broken_benchmark, multimodal=True)(three_videos)
    assert [r.problem_id for r in batch.records] == [0, 2] and batch.inputs["input_ids"].shape[0] == 2
    [(record, reason)] = batch.failures
    assert record.problem_id == 1 and "cannot take this one" in reason
