"""``vreason compare`` on a baseline and a V-Reason smoke run: a table with the baseline labelled and its
columns explained, logged to MLflow as one tagged comparison run whose statistics are metrics; a name
several runs share is refused with the candidates, and a missing store is named."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from vreason.cli import main
from vreason.predictions import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "experiments" / "smoke.yaml")


def test_compare_two_smoke_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = [
        f"data.root={tmp_path}/data",
        f"tracking.uri={uri}",
        "data.synthetic_size=4",
        "sampling.max_new_tokens=12",
    ]
    assert main(["run", SMOKE, f"output_dir={tmp_path}/base", "method=baseline", *common]) == 0
    assert main(["run", SMOKE, f"output_dir={tmp_path}/vreason", *common]) == 0
    capsys.readouterr()
    out = tmp_path / "report" / "comparison.md"
    names = ["smoke/baseline", "smoke/vreason-k4-lr1"]
    args = ["compare", *names, "--tracking-uri", uri, "--experiment", "vreason-smoke"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    paired = printed.split("Divergence from the baseline")[0]  # the first table
    rows = [line for line in paired.splitlines() if line.startswith("| smoke")]
    assert [r.split("|")[1].strip() for r in rows] == names
    assert [r.split("|")[2].strip() for r in rows] == ["baseline", "vs baseline"]
    assert "| 4 |" in rows[1]  # four paired samples
    assert "Baseline: smoke/baseline" in printed and "Confidence level 95%" in printed
    assert "ci_low/ci_high = 95% paired-bootstrap interval" in printed and "mcnemar_p" in printed
    assert "logged this comparison as MLflow run" in printed and "vreason-compare" in printed
    assert out.read_text().count("\n| smoke") == 2 and out.with_suffix(".csv").exists()

    # Divergence: a second table, its numbers those of the two prediction files (at lr 1 the fourth
    # clip's output leaves the baseline's at token 6, within the 12 generated here).
    base_tokens, steered_tokens = (
        {p["sample_id"]: p["trace"]["token_ids"] for p in read_jsonl(tmp_path / d / "predictions.jsonl")}
        for d in ("base", "vreason")
    )
    changed = sum(base_tokens[k] != steered_tokens[k] for k in base_tokens)
    assert changed > 0
    assert (
        "Divergence from the baseline (smoke/baseline):" in printed
        and "first_div_mean/first_div_min" in printed
    )
    [divergence] = [line for line in printed.splitlines() if line.startswith("| smoke/vreason-k4-lr1 | 4 |")]
    assert divergence.split("|")[3].strip() == str(changed)
    assert (tmp_path / "report" / "comparison_divergence.md").read_text().count("\n| smoke") == 1

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("vreason-compare").experiment_id
    [comparison] = client.search_runs([experiment])
    assert comparison.info.run_name == "compare: smoke/baseline vs smoke/vreason-k4-lr1"
    assert comparison.data.tags["vreason.kind"] == "comparison"
    assert comparison.data.tags["baseline"] == "smoke/baseline"
    assert set(comparison.data.metrics) == {
        "diff",
        "ci_low",
        "ci_high",
        "mcnemar_p",
        "token_diff",
        "wilcoxon_p",
        "changed",
        "changed_fraction",
        "first_div_mean",
        "first_div_min",
        "abs_dH_mean",
        "dH_mean",
    }
    assert comparison.data.metrics["changed"] == changed
    assert comparison.data.metrics["changed_fraction"] == changed / 4
    assert (
        comparison.data.metrics["ci_low"]
        <= comparison.data.metrics["diff"]
        <= comparison.data.metrics["ci_high"]
    )
    artifacts = {a.path for a in client.list_artifacts(comparison.info.run_id, "plots")}
    assert "plots/entropy_curves.png" in artifacts and "plots/alpha_before_peak.png" in artifacts
    assert "plots/divergence.png" in artifacts
    logged = {a.path for a in client.list_artifacts(comparison.info.run_id)}
    assert {"divergence.md", "divergence.csv", "divergence_by_sample.csv"} <= logged

    assert main(args) == 0  # the same comparison again updates that run
    assert "updated this comparison" in capsys.readouterr().out
    assert len(client.search_runs([experiment])) == 1

    # a name two runs share is refused, listing both with id, start time and method
    assert main(["run", SMOKE, f"output_dir={tmp_path}/again", *common]) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "2 runs are named 'smoke/vreason-k4-lr1'" in err and "give one by its id" in err
    ids = [
        r.info.run_id
        for r in client.search_runs([client.get_experiment_by_name("vreason-smoke").experiment_id])
    ]
    assert sum(run_id in err for run_id in ids) == 2 and "started " in err and "method vreason-k4-lr1" in err


def test_run_with_baseline_runs_both_and_prints_what_v_reason_changed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # default output_dir: outputs/smoke/vreason and outputs/smoke/baseline
    common = [f"data.root={tmp_path}/data", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]
    common += ["data.synthetic_size=4", "sampling.max_new_tokens=8"]
    assert main(["run", SMOKE, *common, "--with-baseline"]) == 0
    printed = capsys.readouterr().out
    table = [line.split("|")[1].strip() for line in printed.splitlines() if line.startswith("| smoke/")]
    assert table[:2] == ["smoke/vreason-k4-lr1", "smoke/baseline"]  # the result table, both runs
    assert (
        "Baseline: smoke/baseline" in printed and "Divergence from the baseline (smoke/baseline):" in printed
    )
    assert "logged this comparison as MLflow run 'compare: smoke/baseline vs smoke/vreason-k4-lr1'" in printed
    assert (tmp_path / "outputs/smoke/baseline/predictions.jsonl").exists()
    assert "compare:        vreason compare smoke/baseline smoke/vreason-k4-lr1" in printed

    # refused before anything runs: a config that is already the baseline, or one output folder for both
    monkeypatch.setattr("vreason.run.build_model", lambda **_: pytest.fail("model loaded"))
    assert main(["run", SMOKE, *common, "method=baseline", "--with-baseline"]) == 2
    assert "method is already the baseline" in capsys.readouterr().err
    assert main(["run", SMOKE, *common, "output_dir=one", "--with-baseline"]) == 2
    assert "with method=baseline, output_dir is still one" in capsys.readouterr().err


def test_compare_from_another_folder_names_the_missing_store(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert (
        main(["compare", "smoke/baseline", "smoke/vreason-k4-lr1", "--tracking-uri", "sqlite:///mlflow.db"])
        == 2
    )
    assert f"no MLflow store at {tmp_path}/mlflow.db" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()  # nothing created
