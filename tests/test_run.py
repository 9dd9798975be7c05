"""End to end: the CLI runs a config through Lightning, writes predictions, records MLflow, resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from vreason.cli import main
from vreason.predictions import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.yaml"


def paths(tmp: Path) -> list[str]:
    """Overrides that keep a run's files inside ``tmp``."""
    return [
        f"output_dir={tmp}/out",
        f"data.root={tmp}/data",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db",
    ]


def cli(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, "-m", "vreason", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def only_run(tmp: Path, experiment: str):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def tokens_by_sample(path: Path) -> dict[str, list[int]]:
    return {p["sample_id"]: p["trace"]["token_ids"] for p in read_jsonl(path)}


def test_smoke_config_runs_end_to_end_and_is_recorded_in_mlflow(tmp_path):
    proc = cli(["run", str(SMOKE), *paths(tmp_path)], cwd=tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out

    client, run = only_run(tmp_path, "vreason-smoke")
    run_id, experiment = run.info.run_id, run.info.experiment_id
    # The end of the output: the table with only the benchmark that ran, the run's id and page, the UI.
    assert "| run | synthetic | tokens | failed |" in out and "| smoke/vreason-k4-lr1 |" in out
    assert f"id {run_id}" in out and f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{run_id}" in out
    assert f"ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db --host 127.0.0.1 --port 5000" in out
    assert "method=baseline" in out  # how to get a baseline to compare with
    assert_quiet(out)

    assert run.info.status == "FINISHED" and run.info.run_name == "smoke/vreason-k4-lr1"
    assert run.data.tags["method"] == "vreason-k4-lr1" and run.data.tags["benchmarks"] == "synthetic"
    assert run.data.tags["model"] == "tiny_qwen2_5_vl" and run.data.tags["seed"] == "0"
    assert run.data.tags["vreason_version"] and len(run.data.tags["mlflow.source.git.commit"]) == 40
    assert "| smoke/vreason-k4-lr1 |" in run.data.tags["mlflow.note.content"]  # the description
    assert run.data.params["method.controller.name"] == "value_cache"
    assert run.data.params["method.schedule.step_size"] == "4"
    assert client.get_experiment(experiment).tags["mlflow.experimentKind"] == "custom_model_development"
    metrics = run.data.metrics
    assert metrics["samples"] == 8 and metrics["failed"] == 0
    assert 0.0 <= metrics["synthetic/acc"] <= 1.0
    assert metrics["mean_output_tokens"] > 0 and metrics["seconds_per_sample"] > 0
    assert metrics["optimization_steps_per_sample"] > 0
    predictions = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    every_entropy = [h for p in predictions for h in p["trace"]["entropy"]]
    assert metrics["entropy_mean"] == pytest.approx(sum(every_entropy) / len(every_entropy))
    assert {"ema_final_mean", "ema_peak_step_mean", "delta_v_norm_final_mean"} <= set(metrics)
    longest = max(p["num_tokens"] for p in predictions)
    for key in HISTORIES:
        history = client.get_metric_history(run_id, key)
        assert [m.step for m in history] == list(range(1, longest + 1)), key  # token index, from 1
    share = [m.value for m in client.get_metric_history(run_id, "per_token/optimizing_share")]
    assert share[3] == 1.0 and share[0] == share[1] == share[2] == 0.0  # tokens k, 2k, ... with k = 4
    entropy = client.get_metric_history(run_id, "per_token/entropy_mean")
    assert entropy[0].value == pytest.approx(sum(p["trace"]["entropy"][0] for p in predictions) / 8)
    assert run.info.artifact_uri.startswith(str(tmp_path / "mlartifacts"))  # beside the store
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"predictions.jsonl", "traces.csv", "trace_view.html", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"plots/entropy_curve.png", "plots/alpha_before_peak.png", "plots/output_tokens.png"} <= plots
    page = Path(client.download_artifacts(run_id, "trace_view.html", str(tmp_path))).read_text()
    steps = [i + 1 for i, o in enumerate(predictions[0]["trace"]["optimized"]) if o]
    assert f"optimisation steps: {', '.join(map(str, steps))}" in page and "EMA peak at token" in page
    table = Path(client.download_artifacts(run_id, "traces.csv", str(tmp_path))).read_text().splitlines()
    assert table[0].split(",")[:4] == ["sample_id", "step", "token_id", "text"]

    predictions = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    assert len(predictions) == 8
    for p in predictions:
        n = p["num_tokens"]
        assert all(
            len(p["trace"][k]) == n for k in ("entropy", "ema", "alpha", "optimized", "controller_norm")
        )

    # Determinism: the same config and seed give the same tokens and scores.
    again = tmp_path / "again"
    proc = cli(["run", str(SMOKE), *paths(again)], cwd=tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert tokens_by_sample(again / "out" / "predictions.jsonl") == tokens_by_sample(
        tmp_path / "out" / "predictions.jsonl"
    )


HISTORIES = (
    "per_token/entropy_mean",
    "per_token/ema_mean",
    "per_token/alpha_mean",
    "per_token/optimizing_share",
    "per_token/delta_v_norm_mean",
    "per_token/samples_generating",
)
NOISE = (
    "GPU available",
    "TPU available",
    "litlogger",
    "Tip:",
    "deprecated",
    "Warning",
    "INFO",
    "transfer_batch",
)


def assert_quiet(out: str) -> None:
    """Our messages, the bar and the results; no third-party lines, advertisements or warnings."""
    assert [word for word in NOISE if word in out] == [], out


SMALL = ["data.synthetic_size=4", "sampling.max_new_tokens=10"]


def test_rerun_resumes_the_same_mlflow_run_without_duplicates(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(SMOKE), *paths(tmp_path), *SMALL, "data.limit=2"]) == 0
    _, first = only_run(tmp_path, "vreason-smoke")
    assert first.data.metrics["samples"] == 2
    assert main(["run", str(SMOKE), *paths(tmp_path), *SMALL]) == 0
    _, second = only_run(tmp_path, "vreason-smoke")
    assert second.info.run_id == first.info.run_id
    assert second.data.metrics["samples"] == 4
    ids = [p["sample_id"] for p in read_jsonl(tmp_path / "out" / "predictions.jsonl")]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 4
    capsys.readouterr()
    assert main(["score", str(tmp_path / "out" / "predictions.jsonl")]) == 0
    assert "synthetic" in capsys.readouterr().out
    report = tmp_path / "table1.md"
    args = [
        "report",
        first.info.run_id,
        "--tracking-uri",
        f"sqlite:///{tmp_path}/mlflow.db",
        "--out",
        str(report),
    ]
    assert main(args) == 0
    header, _, row = report.read_text().splitlines()[:3]
    assert "VSI-Bench (Acc/MRA)" in header and "Avg (wo mra)" in header and "synthetic" in header
    assert row.startswith("| smoke/vreason-k4-lr1 |")
    assert main([*args[:1], "smoke/vreason-k4-lr1", *args[2:]]) == 0  # a name only one run has


def test_a_baseline_beside_it_gets_its_own_name_folder_and_the_same_param_keys(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    common = [f"data.root={tmp_path}/data", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", *TINY]
    assert main(["run", str(SMOKE), *common]) == 0  # default output_dir: outputs/smoke/vreason
    assert main(["run", str(SMOKE), *common, "method=baseline"]) == 0  # outputs/smoke/baseline
    out = capsys.readouterr().out
    assert "compare:        vreason compare smoke/baseline smoke/vreason-k4-lr1" in out
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("vreason-smoke").experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert sorted(by_name) == ["smoke/baseline", "smoke/vreason-k4-lr1"]
    baseline, vreason = by_name["smoke/baseline"], by_name["smoke/vreason-k4-lr1"]
    assert set(baseline.data.params) == set(vreason.data.params)  # one schema: they line up in the UI
    assert (
        baseline.data.params["method.controller.name"] == "none"
        and baseline.data.tags["method"] == "baseline"
    )
    assert (tmp_path / "outputs/smoke/baseline/predictions.jsonl").exists()
    assert (tmp_path / "outputs/smoke/vreason/predictions.jsonl").exists()
    for run in (baseline, vreason):
        history = client.get_metric_history(run.info.run_id, "per_token/alpha_mean")
        assert history[0].step == 1
    assert all(
        m.value == 0 for m in client.get_metric_history(baseline.info.run_id, "per_token/optimizing_share")
    )

    # another method in a folder that holds a run stops before the model loads, naming both
    monkeypatch.setattr("vreason.run.build_model", lambda **_: pytest.fail("model loaded"))
    capsys.readouterr()
    other = ["output_dir=outputs/smoke/vreason", "method.schedule.step_size=2"]
    assert main(["run", str(SMOKE), *common, *other]) == 2
    err = capsys.readouterr().err
    assert "'smoke/vreason-k4-lr1'" in err and "'smoke/vreason-k2-lr1'" in err and "output_dir" in err


def test_verbose_brings_back_what_the_quiet_terminal_holds_back(tmp_path):
    proc = cli(["run", str(SMOKE), *paths(tmp_path), *TINY, "--verbose"], cwd=tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "GPU available" in out and out.count("GPU available") == 1  # Lightning's lines, once each


def test_two_process_ddp_writes_every_sample_exactly_once(tmp_path):
    args = ["run", str(SMOKE), *paths(tmp_path), *SMALL, "data.synthetic_size=6"]
    args += ["trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu", "data.batch_size=1"]
    proc = cli(args, cwd=tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    shards = [read_jsonl(tmp_path / "out" / f"predictions.rank{r}.jsonl") for r in (0, 1)]
    assert all(shards), "each rank writes its own shard"
    written = [p["sample_id"] for shard in shards for p in shard]
    assert sorted(written) == sorted(set(written)) and len(written) == 6
    assert len(read_jsonl(tmp_path / "out" / "predictions.jsonl")) == 6
    _, run = only_run(tmp_path, "vreason-smoke")
    assert run.data.metrics["samples"] == 6


def test_killed_run_resumes_with_nothing_lost_or_duplicated(tmp_path):
    args = [
        "run",
        str(SMOKE),
        *SMALL,
        "data.synthetic_size=6",
        "data.batch_size=1",
        "sampling.max_new_tokens=16",
    ]
    reference = tmp_path / "reference"
    proc = cli([*args, *paths(reference)], cwd=tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out

    killed = tmp_path / "killed"
    shard = killed / "out" / "predictions.rank0.jsonl"
    proc = cli([*args, *paths(killed)], cwd=tmp_path, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(read_jsonl(shard)) < 2 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(read_jsonl(shard))
    assert 2 <= done_before < 6, "the kill must land mid-run"

    proc = cli([*args, *paths(killed)], cwd=tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert f"{done_before} already done" in out
    resumed = read_jsonl(killed / "out" / "predictions.jsonl")
    assert len(resumed) == 6 and len({p["sample_id"] for p in resumed}) == 6
    expected = {
        p["sample_id"]: (p["trace"]["token_ids"], p["score"])
        for p in read_jsonl(reference / "out" / "predictions.jsonl")
    }
    assert {p["sample_id"]: (p["trace"]["token_ids"], p["score"]) for p in resumed} == expected
    record = json.loads((killed / "out" / "mlflow_run.json").read_text())
    client, run = only_run(killed, "vreason-smoke")
    assert run.info.run_id == record["run_id"] and run.info.status == "FINISHED"
    assert each_metric_logged_once(client, run)


def each_metric_logged_once(client: MlflowClient, run) -> bool:
    """Every metric has one value per step (histories: tokens 1, 2, 3, ... each once)."""
    for key in run.data.metrics:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        expected = list(range(1, len(steps) + 1)) if key.startswith("per_token/") else [0]
        assert steps == expected, (key, steps)
    return True


TINY = [*SMALL, "data.synthetic_size=2", "sampling.max_new_tokens=4"]

HOLD_LOCK = (
    "import sys, time\nfrom vreason.predictions import exclusive_output_dir\n"
    "with exclusive_output_dir(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n"
)


def test_a_busy_output_dir_stops_a_second_run_at_once_and_a_killed_holder_leaves_no_lock(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path / "out")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with monkeypatch.context() as m:
            m.setattr("vreason.run.build_model", lambda **_: pytest.fail("model loaded"))
            assert main(["run", str(SMOKE), *paths(tmp_path), *TINY]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"in use by another run (pid {holder.pid})" in err, err
        assert not (tmp_path / "out" / "predictions.rank0.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # the lock died with its process: the same command now runs
    assert main(["run", str(SMOKE), *paths(tmp_path), *TINY]) == 0
    assert len(read_jsonl(tmp_path / "out" / "predictions.jsonl")) == 2


KILL_AFTER_FIRST_CURVE = """
import os, signal, sys
import vreason.tracking as tracking
log_curve = tracking.Tracker.log_curve
def log_curve_then_die(self, *args, **kwargs):
    log_curve(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
tracking.Tracker.log_curve = log_curve_then_die
from vreason.cli import main
main(sys.argv[1:])
"""


def test_a_rerun_after_a_kill_in_the_logging_phase_logs_each_metric_once(tmp_path, monkeypatch):
    args = ["run", str(SMOKE), *paths(tmp_path), *TINY]
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_FIRST_CURVE, *args], cwd=tmp_path, capture_output=True
    )
    assert proc.returncode == -9, proc.stdout
    client, run = only_run(tmp_path, "vreason-smoke")
    assert run.info.status == "RUNNING" and "samples" in run.data.metrics  # killed mid-logging
    assert "per_token/ema_mean" not in run.data.metrics

    monkeypatch.chdir(tmp_path)
    assert main(args) == 0
    client, run = only_run(tmp_path, "vreason-smoke")
    assert run.info.status == "FINISHED" and "per_token/ema_mean" in run.data.metrics
    assert each_metric_logged_once(client, run)
    assert main(args) == 0  # and once more: still once
    assert each_metric_logged_once(client, client.get_run(run.info.run_id))


def test_an_exception_after_the_start_marks_the_mlflow_run_failed_and_a_rerun_finishes_it(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("the disk went away")

    with monkeypatch.context() as m:
        m.setattr("vreason.run.log_results", broken)
        with pytest.raises(RuntimeError, match="disk went away"):
            main(["run", str(SMOKE), *paths(tmp_path), *TINY])
    _, run = only_run(tmp_path, "vreason-smoke")
    assert run.info.status == "FAILED"
    assert main(["run", str(SMOKE), *paths(tmp_path), *TINY]) == 0
    _, again = only_run(tmp_path, "vreason-smoke")
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"


def test_resuming_with_another_tracking_uri_says_which_store_holds_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(SMOKE), *paths(tmp_path), *TINY]) == 0
    capsys.readouterr()
    monkeypatch.setattr("vreason.run.build_model", lambda **_: pytest.fail("model loaded"))
    other = tmp_path / "other.db"
    assert main(["run", str(SMOKE), *paths(tmp_path), *TINY, f"tracking.uri=sqlite:///{other}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mlflow_run.json" in err
    assert f"tracking.uri=sqlite:///{tmp_path}/mlflow.db" in err  # how to continue
    assert not other.exists()  # nothing was created at the other address
