"""What a run says about itself, without running a model: names from config and method, one param
schema for every method, tags, metric histories stepped from 1, the result table with only what ran,
finding runs by a name only one run has, and the HTML trace view."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from test_analysis import prediction

from vreason import analysis
from vreason.config import load_config
from vreason.report import table_rows
from vreason.tracking import (
    CORE_METHOD_PARAMS,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    experiment_id,
    experiment_params,
    experiment_url,
    method_label,
    run_label,
    run_tags,
    run_url,
    set_runs_view,
    token_curves,
    trace_metrics,
)

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.yaml"


def smoke(*overrides: str):
    return load_config(SMOKE, list(overrides))


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ([], "smoke/vreason-k4-lr1"),
        (["method=baseline"], "smoke/baseline"),
        (["method.pruner={name: l2_norm}"], "smoke/vreason-lite-k4-lr1"),
        (["method.schedule.step_size=2", "method.optimizer.lr=0.001"], "smoke/vreason-k2-lr1e-3"),
        (["method.objective={name: min_entropy}"], "smoke/vreason-min_entropy-k4-lr1"),
        (["tracking.run_name=mine"], "mine"),
    ],
)
def test_run_names_say_config_and_method(overrides, name):
    assert run_label(smoke(*overrides)) == name


def test_a_baseline_and_vreason_get_different_names_and_output_folders():
    vreason, baseline = smoke(), smoke("method=baseline")
    assert run_label(vreason) != run_label(baseline)
    assert vreason.output_dir == "outputs/smoke/vreason" and baseline.output_dir == "outputs/smoke/baseline"


def test_every_method_logs_the_core_method_params_and_a_baseline_says_none():
    vreason = experiment_params(smoke())
    baseline = experiment_params(smoke("method=baseline"))
    core = {f"method.{key}" for key in CORE_METHOD_PARAMS}
    assert core <= set(vreason) and core <= set(baseline)
    assert set(baseline) == set(vreason)  # the very same keys: runs group, filter and line up in the UI
    assert {v for k, v in baseline.items() if k.startswith("method.") and k != "method.name"} == {"none"}
    assert baseline["method.name"] == "baseline" and baseline["method.controller.name"] == "none"
    assert vreason["method.name"] == "vreason" and vreason["method.controller.name"] == "value_cache"
    assert vreason["method.schedule.step_size"] == "4" and vreason["method.optimizer.lr"] == "1.0"
    assert vreason["method.schedule.ema_init"] == "first"  # a default the YAML does not spell out
    assert "method" not in baseline  # not the old one-key shape ``method=baseline``


def test_tags_name_method_model_benchmarks_seed_version_and_commit():
    tags = run_tags(smoke("seed=3"))
    assert tags["method"] == "vreason-k4-lr1" and tags["model"] == "tiny_qwen2_5_vl"
    assert tags["benchmarks"] == "synthetic" and tags["seed"] == "3" and tags["config"] == "smoke"
    assert tags["vreason_version"] not in ("", "unknown")
    assert len(tags["mlflow.source.git.commit"]) == 40  # the suite runs from a git checkout
    assert tags["git_commit"].startswith(tags["mlflow.source.git.commit"])
    assert run_tags(smoke("method=baseline"))["method"] == "baseline"


def test_method_label_of_a_block_without_a_name_is_vreason():
    assert method_label({"controller": {"name": "value_cache"}}) == "vreason-k4-lr3e-4"


def test_experiments_are_created_as_classic_ml_experiments(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    new = experiment_id(client, "fresh")
    set_runs_view(client, new)
    assert (
        client.get_experiment(new).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    )
    old = client.create_experiment("older")  # made before the tag existed: tagged when used
    assert experiment_id(client, "older") == old
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # MLflow 3.17's UI shows an experiment as GenAI unless the URL asks for the "Model training" view
    assert (
        run_url("1", "abc") == "http://127.0.0.1:5000/#/experiments/1/runs/abc?workflowType=machine_learning"
    )
    assert experiment_url("1").endswith("/runs?workflowType=machine_learning&viewStateShareKey=vreason")
    assert experiment_url("1", charts=True).endswith("&compareRunsMode=CHART")
    view = json.loads(client.get_experiment(new).tags["mlflow.sharedViewState.vreason"])
    assert (
        "metrics.`entropy_mean`" in view["selectedColumns"] and view["orderByKey"] == "attributes.start_time"
    )


def traced(sample_id: str, entropy: list[float], optimized: list[bool], norm: list[float]) -> dict:
    p = prediction(sample_id, num_tokens=len(entropy))
    p["trace"].update(
        entropy=entropy,
        ema=entropy,
        alpha=[1, 1, -1, -1][: len(entropy)],
        optimized=optimized,
        controller_norm=norm,
        token_ids=list(range(len(entropy))),
    )
    return p


def test_token_curves_are_means_over_samples_still_generating():
    a = traced("a", [1.0, 2.0, 3.0, 4.0], [False, False, False, True], [0.0, 0.0, 0.0, 0.5])
    b = traced("b", [3.0, 4.0], [False, True], [0.0, 1.0])
    curves = token_curves([a, b])
    assert curves["per_token/entropy_mean"] == [2.0, 3.0, 3.0, 4.0]
    assert curves["per_token/optimizing_share"] == [0.0, 0.5, 0.0, 1.0]
    assert curves["per_token/delta_v_norm_mean"] == [0.0, 0.5, 0.0, 0.5]
    assert curves["per_token/alpha_mean"] == [1.0, 1.0, -1.0, -1.0]
    assert curves["per_token/samples_generating"] == [2.0, 2.0, 1.0, 1.0]
    assert list(curves)[0] == "per_token/entropy_mean"
    metrics = trace_metrics([a, b])
    assert metrics["entropy_mean"] == pytest.approx(17 / 6)  # every token, not the last step's mean
    assert metrics["ema_final_mean"] == pytest.approx(4.0)
    assert metrics["ema_peak_step_mean"] == pytest.approx(3.0)  # steps 4 and 2, 1-based


def test_the_result_table_shows_only_the_benchmarks_that_ran():
    header, rows = table_rows([("r", {"synthetic/acc": 0.5, "mean_output_tokens": 10, "failed": 0})], True)
    assert header == ["run", "synthetic", "tokens", "failed"] and rows == [["r", "50.0", "10", "0"]]
    full, _ = table_rows([("r", {"synthetic/acc": 0.5})])
    assert "VSI-Bench (Acc/MRA)" in full and "Avg (wo mra)" in full  # Table 1's shape for `vreason report`


@pytest.fixture
def two_runs_named_alike(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = experiment_id(client, "lookup")
    ids = []
    for method in ("vreason-k4-lr3e-4", "baseline"):
        run = client.create_run(experiment, run_name="smoke", tags={"method": method})
        client.set_terminated(run.info.run_id)
        ids.append(run.info.run_id)
    unique = client.create_run(experiment, run_name="smoke/baseline", tags={"method": "baseline"})
    return uri, ids, unique.info.run_id


def test_a_name_two_runs_share_is_refused_listing_both(two_runs_named_alike):
    uri, ids, _ = two_runs_named_alike
    with pytest.raises(analysis.AmbiguousRunName) as refused:
        analysis.find_run("smoke", tracking_uri=uri, experiment="lookup")
    message = str(refused.value)
    assert "2 runs are named 'smoke'" in message and all(run_id in message for run_id in ids)
    assert "method vreason-k4-lr3e-4" in message and "method baseline" in message and "started 20" in message
    assert analysis.resolve_run_id(ids[0], tracking_uri=uri) == ids[0]  # an id is always accepted


def test_a_unique_name_resolves_and_a_missing_one_lists_what_exists(two_runs_named_alike, tmp_path):
    uri, ids, unique = two_runs_named_alike
    assert analysis.resolve_run_id("smoke/baseline", tracking_uri=uri, experiment="lookup") == unique
    with pytest.raises(analysis.RunLookupError) as missing:
        analysis.find_run("nope", tracking_uri=uri, experiment="lookup")
    assert f"store sqlite:///{tmp_path}/mlflow.db" in str(missing.value) and ids[0] in str(missing.value)
    with pytest.raises(analysis.RunLookupError, match="experiments there: .*'lookup'"):
        analysis.find_run("nope", tracking_uri=uri, experiment="elsewhere")


def test_a_store_that_does_not_exist_is_named_and_not_created(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(analysis.RunLookupError, match=f"no MLflow store at {tmp_path}/mlflow.db"):
        analysis.find_run("smoke", tracking_uri="sqlite:///mlflow.db")
    assert not (tmp_path / "mlflow.db").exists()


def test_the_trace_view_colours_tokens_and_names_optimisation_steps_and_the_ema_peak():
    p = traced("s0", [0.5, 2.0, 1.0, 0.2], [False, True, False, True], [0.0, 0.1, 0.1, 0.2])
    run = analysis.Run("id", "smoke/vreason-k4-lr3e-4", predictions=[p, prediction("bad", failed=True)])
    page = analysis.trace_view_html(run, token_text=lambda t: f"<w{t}>")
    assert page.startswith("<!doctype html>") and "smoke/vreason-k4-lr3e-4" in page
    assert "optimisation steps: 2, 4" in page and "EMA peak at token 2" in page
    assert page.count('class="t opt') == 2 and page.count(" peak") >= 1
    assert "&lt;w1&gt;" in page and "<w1>" not in page  # token text is escaped
    assert 'data-step="1"' in page and 'data-step="4"' in page  # steps from 1
    assert "failed" in page  # the failed sample is listed with its reason
    baseline = analysis.Run(
        "id", "smoke/baseline", params={"method.controller.name": "none"}, predictions=[p]
    )
    assert "This is a baseline run" in analysis.trace_view_html(baseline)
