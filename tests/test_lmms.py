"""V-Reason inside lmms-eval: a local video task (a JSON file of records, MP4s written here, a tiny random
Qwen2.5-VL saved with ``save_pretrained``) run through lmms-eval's own entry point, offline.

lmms-eval is part of the locked stack (``requirements.lock``), so nothing here is skipped: a broken plugin
fails ``make test``.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from vreason.data.synthetic import ClipSpec, write_clips
from vreason.errors import ConfigError
from vreason.models import tiny_qwen2_5_vl
from vreason.sampling import SamplingConfig

TASK = "tiny_video"
MAX_NEW_TOKENS = 12
CHOICE_TASK = "tiny_video_choice"  # a loglikelihood (multiple_choice) task: refused
TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {records}
test_split: test
output_type: {output_type}
doc_to_visual: video
doc_to_text: question
doc_to_target: answer
{extra}
metric_list:
  - metric: {metric}
    aggregation: mean
    higher_is_better: true
"""
GENERATE = f"generation_kwargs:\n  max_new_tokens: {MAX_NEW_TOKENS}\n  do_sample: false\n"
CHOICES = 'doc_to_choice: ["left", "right"]'
CONFIG_YAML = """name: lmms-test
output_dir: {out}
video: {{fps: 2.0, min_frames: 4, max_frames: 8, min_pixels: 3136, max_pixels: 12544}}
method:
  name: vreason
  controller: {{name: value_cache, layer: -1, norm_dims: block}}
  schedule: {{name: fixed, step_size: 4, ema_beta: 0.98}}
tracking:
  uri: sqlite:///{store}
  experiment: lmms-test
"""
DISTRIBUTED_SCRIPT = """import json, sys
from lmms_eval import evaluator
from lmms_eval.tasks import TaskManager
root = sys.argv[1]
results = evaluator.simple_evaluate(
    model="vreason", model_args=sys.argv[2], tasks=["{task}"], device="cpu", batch_size=1, log_samples=True,
    task_manager=TaskManager(include_path=root + "/task", include_defaults=False),
)
if results is not None:  # the main process
    answers = {{s["doc_id"]: s["resps"][0][0] for s in results["samples"]["{task}"]}}
    open(root + "/distributed.json", "w").write(json.dumps(answers))
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The checkpoint, the videos (three clips and one file that is not a video), the two tasks and the
    vreason config, with the Hub switched off and every cache inside the workspace."""
    root = tmp_path_factory.mktemp("lmms")
    patch = pytest.MonkeyPatch()
    for name, value in {
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(root / "hf"),
        "LMMS_EVAL_DATASETS_CACHE": str(root / "datasets"),
    }.items():
        patch.setenv(name, value)
    model, processor = tiny_qwen2_5_vl(seed=0)
    model.save_pretrained(root / "tiny")
    processor.save_pretrained(root / "tiny")
    clips = write_clips(
        root / "videos",
        {f"clip{i}": ClipSpec(d, "red", 96, 64, 2) for i, d in enumerate(["left", "right", "up"])},
    )
    broken = root / "videos" / "broken.mp4"
    broken.write_bytes(b"not a video")
    videos = [*clips.values(), broken]
    records = [
        {"id": i, "video": str(p), "question": f"Which way does the square move? ({i})", "answer": "left"}
        for i, p in enumerate(videos)
    ]
    (root / "task").mkdir()
    (root / "task" / "records.json").write_text(json.dumps(records))
    for task, output_type, extra, metric in (
        (TASK, "generate_until", GENERATE, "exact_match"),
        (CHOICE_TASK, "multiple_choice", CHOICES, "acc"),
    ):
        (root / "task" / f"{task}.yaml").write_text(
            TASK_YAML.format(
                task=task,
                records=root / "task" / "records.json",
                output_type=output_type,
                extra=extra,
                metric=metric,
            )
        )
    (root / "vreason.yaml").write_text(CONFIG_YAML.format(out=root / "out", store=root / "mlflow.db"))
    yield root
    patch.undo()


def model_args(root: Path, experiment: str, *extra: str) -> str:
    return ",".join(
        [
            f"pretrained={root / 'tiny'}",
            f"config={root / 'vreason.yaml'}",
            f"tracking.experiment={experiment}",
            *extra,
        ]
    )


def evaluate(
    root: Path, experiment: str, task: str = TASK, batch_size: int = 2, force_simple: bool = False
) -> dict:
    """lmms-eval's ``simple_evaluate`` on the local task (only the workspace's tasks are indexed)."""
    from lmms_eval import evaluator
    from lmms_eval.tasks import TaskManager

    return evaluator.simple_evaluate(
        model="vreason",
        model_args=model_args(root, experiment),
        tasks=[task],
        task_manager=TaskManager(include_path=str(root / "task"), include_defaults=False),
        device="cpu",
        batch_size=batch_size,
        log_samples=True,
        force_simple=force_simple,
    )


def answers(results: dict) -> dict[int, str]:
    return {s["doc_id"]: s["resps"][0][0] for s in results["samples"][TASK]}


def only_run(root: Path, experiment: str):
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


@pytest.fixture(scope="module")
def chat_run(workspace):
    """The default request format (chat messages), two requests per batch."""
    return evaluate(workspace, "chat")


def test_lmms_eval_finds_vreason_through_its_entry_point_group():
    from lmms_eval.models import get_model

    from vreason.lmms.model import VReasonChat, VReasonSimple

    assert "vreason" in {ep.name for ep in entry_points(group="lmms_eval.models")}
    assert get_model("vreason") is VReasonChat
    assert get_model("vreason", force_simple=True) is VReasonSimple


def test_a_local_video_task_is_answered_with_the_controller_stepping(workspace, chat_run):
    assert "exact_match,none" in chat_run["results"][TASK]
    given = answers(chat_run)
    assert sorted(given) == [0, 1, 2, 3] and given[3] == ""  # the file that is not a video: no answer

    from vreason.analysis import load_run, mean_curve

    client, run = only_run(workspace, "chat")
    predictions = {
        p["problem_id"]: p for p in load_run(run.info.run_id, tracking_uri=client.tracking_uri).predictions
    }
    assert sorted(predictions) == [0, 1, 2, 3]
    assert predictions[3]["failed"] and "broken.mp4" in predictions[3]["error"]
    for doc in (0, 1, 2):
        p = predictions[doc]
        assert p["answer"] == given[doc] and p["benchmark"] == TASK
        assert 4 <= p["num_tokens"] <= MAX_NEW_TOKENS  # the task's max_new_tokens, not the config's 1024
        assert sum(p["trace"]["optimized"]) > 0 and p["trace"]["controller_norm"][-1] > 0
        assert math.isnan(p["score"])  # lmms-eval scores it, not vreason
    assert len(mean_curve([p["trace"]["entropy"] for p in predictions.values() if not p["failed"]]).x) > 0


def test_the_mlflow_run_is_one_per_invocation_tagged_with_the_tasks(workspace, chat_run):
    client, run = only_run(workspace, "chat")
    assert run.info.status == "FINISHED" and run.info.run_name == f"lmms-eval/{TASK}/vreason-k4-lr3e-4"
    assert run.data.tags["tasks"] == TASK and run.data.tags["benchmarks"] == TASK
    assert (
        run.data.tags["mlflow.source.name"] == "lmms-eval" and run.data.tags["lmms_eval_version"] == "0.7.3"
    )
    metrics, params = run.data.metrics, run.data.params
    assert metrics["optimization_steps_per_sample"] > 0 and metrics["failed"] == 1 and metrics["samples"] == 4
    assert "score" not in metrics and f"{TASK}/acc" not in metrics  # no accuracy lmms-eval did not compute
    assert (
        params["sampling.max_new_tokens"] == str(MAX_NEW_TOKENS) and params["sampling.do_sample"] == "False"
    )
    assert json.loads(params[f"lmms_eval.generation_kwargs.{TASK}"])["max_new_tokens"] == MAX_NEW_TOKENS
    assert params["method.controller.name"] == "value_cache" and not any(
        k.startswith("trainer.") for k in params
    )
    history = client.get_metric_history(run.info.run_id, "per_token/entropy_mean")
    assert [m.step for m in history] == list(range(1, MAX_NEW_TOKENS + 1))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"predictions.jsonl", "traces.csv", "trace_view.html"} <= artifacts


def test_simple_requests_one_at_a_time_get_the_chat_answers(workspace, chat_run):
    simple = evaluate(workspace, "simple", batch_size=1, force_simple=True)
    assert answers(simple) == answers(chat_run)  # same prompt, same per-sample generator, batch-invariant


def test_two_processes_shard_the_requests_and_gather_every_trace(workspace, chat_run):
    script = workspace / "distributed.py"
    script.write_text(DISTRIBUTED_SCRIPT.format(task=TASK))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={port}", str(script), str(workspace), model_args(workspace, "distributed")],
        env={**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    given = json.loads((workspace / "distributed.json").read_text())
    assert {int(k): v for k, v in given.items()} == answers(chat_run)
    client, run = only_run(workspace, "distributed")  # one run, written by the main process
    predictions = client.download_artifacts(run.info.run_id, "predictions.jsonl", str(workspace))
    ids = [json.loads(line)["sample_id"] for line in Path(predictions).read_text().splitlines()]
    assert sorted(ids) == [f"{TASK}/{i}" for i in range(4)]  # each rank's share, none twice, no padding


def test_a_loglikelihood_task_is_refused_with_the_reason(workspace):
    # lmms-eval sends chat models no loglikelihood requests (it refuses the task itself); simple ones get them
    with pytest.raises(NotImplementedError, match="loglikelihood requests: V-Reason steers generated"):
        evaluate(workspace, "choice", task=CHOICE_TASK, force_simple=True)


def test_a_bad_config_key_stops_before_the_model_loads():
    from vreason.lmms.model import invocation_config

    with pytest.raises(ConfigError, match="max_frame"):
        invocation_config("/nowhere", None, {"video.max_frame": 8})
    with pytest.raises(ConfigError, match="lr"):
        invocation_config("/nowhere", None, {"method.optimizer.lr": -1.0})
    assert invocation_config(None, None, {}).method.controller.name == "value_cache"  # V-Reason by default
    assert invocation_config(None, None, {"method": "baseline"}).method == "baseline"


def test_generation_kwargs_override_the_config_sampling_key_by_key():
    from vreason.lmms.requests import cut_at_stop, sampling_for

    paper = SamplingConfig()  # temperature 0.1, top-p 0.001, 1024 tokens
    greedy = sampling_for(paper, {"max_new_tokens": 16, "do_sample": False, "until": ["\n\n", "</answer>"]})
    assert (greedy.greedy, greedy.max_new_tokens, greedy.stop_strings) == (True, 16, ["</answer>"])
    assert sampling_for(paper, {"temperature": 0}).greedy
    warm = sampling_for(paper, {"temperature": 0.7, "top_p": 0.9, "top_k": 0})
    assert (warm.greedy, warm.temperature, warm.top_p, warm.top_k) == (False, 0.7, 0.9, None)
    assert sampling_for(paper, {}) == paper
    with pytest.raises(ValueError, match="num_beams"):
        sampling_for(paper, {"num_beams": 4}, task="t")
    with pytest.raises(ValueError, match="top_p"):
        sampling_for(paper, {"top_p": 2.0}, task="t")
    assert cut_at_stop("<answer>A</answer> more", ["</answer>"]) == "<answer>A"


def test_images_and_audio_are_refused_not_dropped():
    from vreason.lmms.requests import chat_messages, simple_messages

    image = [{"role": "user", "content": [{"type": "image", "url": "x.png"}, {"type": "text", "text": "?"}]}]
    with pytest.raises(NotImplementedError, match="image"):
        chat_messages(image, {}, "task t, doc 0")
    with pytest.raises(NotImplementedError, match="audio"):
        simple_messages("?", ["speech.wav"], {}, "task t, doc 0")
    clip = {"path": "/v.mp4", "video_start": 1.0, "video_end": 3.0}
    (video, text) = simple_messages("?", [clip], {"fps": 2.0}, "w")[0]["content"]
    assert video == {"type": "video", "video": "/v.mp4", "video_start": 1.0, "video_end": 3.0, "fps": 2.0}
    assert text == {"type": "text", "text": "?"}
