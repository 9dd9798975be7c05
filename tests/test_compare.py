"""``vreason compare`` on a baseline and a V-Reason smoke run: a table with both rows, logged to MLflow."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from vreason.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_compare_two_smoke_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = [
        f"data.root={tmp_path}/data",
        f"tracking.uri={uri}",
        "data.synthetic_size=4",
        "sampling.max_new_tokens=12",
    ]
    for config, out in (("smoke_baseline.yaml", "base"), ("smoke.yaml", "vreason")):
        assert main(["run", str(ROOT / "experiments" / config), f"output_dir={tmp_path}/{out}", *common]) == 0
    capsys.readouterr()
    out = tmp_path / "report" / "comparison.md"
    args = ["compare", "smoke_baseline", "smoke", "--tracking-uri", uri, "--experiment", "vreason-smoke"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| smoke")]
    assert [r.split("|")[1].strip() for r in rows] == ["smoke_baseline", "smoke"]
    assert "| 4 |" in rows[1]  # four paired samples
    assert out.read_text().count("\n| smoke") == 2 and out.with_suffix(".csv").exists()

    client = MlflowClient(tracking_uri=uri)
    compare_runs = client.search_runs([client.get_experiment_by_name("vreason-compare").experiment_id])
    assert len(compare_runs) == 1 and compare_runs[0].info.run_name == "smoke_baseline vs smoke"
    artifacts = {a.path for a in client.list_artifacts(compare_runs[0].info.run_id, "plots")}
    assert "plots/entropy_curves.png" in artifacts and "plots/alpha_before_peak.png" in artifacts
