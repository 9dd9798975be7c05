"""Specification of ``vreason.analysis.loading``: runs logged to a fresh MLflow store load back by id,
by name and as an experiment's latest, and what is missing is named."""

from __future__ import annotations

import json

import mlflow
import pytest
from test_analysis import prediction

from vreason import analysis


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """A fresh SQLite tracking store with an experiment whose artifacts live under tmp_path."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.create_experiment(
        "analysis-test", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    yield uri, experiment_id
    mlflow.set_tracking_uri(None)


def log_run(tmp_path, experiment_id: str, name: str, params: dict, predictions: list[dict]) -> str:
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in predictions))
    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
        mlflow.log_params(params)
        mlflow.log_artifact(str(path))  # at the artifact root, as tracking.log_results does
    return run.info.run_id


def test_load_run_round_trips_params_and_predictions(tracking, tmp_path):
    uri, experiment_id = tracking
    first = [prediction("s0", 1.0), prediction("s1", failed=True)]
    second = [prediction("s0", 0.0)]
    first_id = log_run(tmp_path, experiment_id, "smoke", {"seed": 0, "method.lr": "1e-3"}, first)
    second_id = log_run(tmp_path, experiment_id, "smoke", {"seed": 1, "method.lr": "1e-3"}, second)

    by_id = analysis.load_run(first_id, tracking_uri=uri)
    assert (by_id.run_id, by_id.name, by_id.params) == (first_id, "smoke", {"seed": "0", "method.lr": "1e-3"})
    assert by_id.predictions == first

    with pytest.raises(analysis.AmbiguousRunName, match=second_id):  # two runs share the name
        analysis.load_run("smoke", tracking_uri=uri, experiment="analysis-test")
    third_id = log_run(tmp_path, experiment_id, "smoke-lr1e-2", {"seed": 0}, second)
    by_name = analysis.load_run("smoke-lr1e-2", tracking_uri=uri, experiment="analysis-test")
    assert by_name.run_id == third_id and by_name.predictions == second

    latest = analysis.load_runs(tracking_uri=uri, experiment="analysis-test", latest=2)
    assert [r.run_id for r in latest] == [third_id, second_id]
    assert [r.run_id for r in analysis.load_runs([first_id, "smoke-lr1e-2"], tracking_uri=uri)] == [
        first_id,
        third_id,
    ]


def test_load_run_names_what_it_could_not_find(tracking):
    uri, _ = tracking
    with pytest.raises(LookupError, match="'nope'"):
        analysis.load_run("nope", tracking_uri=uri, experiment="analysis-test")
    with pytest.raises(LookupError, match="no MLflow experiment"):
        analysis.load_run("nope", tracking_uri=uri, experiment="missing")
