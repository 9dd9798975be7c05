"""Bad inputs: per-sample data errors become recorded failed predictions; config and file errors stop
the run before any model loads, naming the field or file."""

from __future__ import annotations

import json
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
