"""``vreason sweep`` end to end on the smoke model at toy size: every point and a baseline per seed, each
a child of one MLflow parent run with the tags the UI groups by, a summary whose numbers are those of
the child runs, a kill mid-point that the rerun resumes while finished points are skipped, a failing
point recorded while the sweep goes on, and bad grid keys or values refused before anything runs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from vreason import analysis
from vreason.cli import main
from vreason.predictions import read_jsonl
from vreason.sweep import plan_sweep

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "experiments" / "smoke.yaml")


def common(tmp: Path, tokens: int = 10) -> list[str]:
    """Toy size (two one-sample batches, ``tokens`` new tokens), every file inside ``tmp``."""
    return [
        f"data.root={tmp}/data",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db",
        "data.synthetic_size=2",
        "data.batch_size=1",
        f"sampling.max_new_tokens={tokens}",
    ]


# The sweep in a fresh process that dies (SIGKILL: no cleanup at all) right after the first sample of
# the point folder named by argv[1] is on disk.
KILL_MID_POINT = """
import os, signal, sys
from vreason.predictions import PredictionStore
append = PredictionStore.append
def append_then_die(self, predictions, rank=0):
    append(self, predictions, rank)
    if self.directory.as_posix().endswith(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
PredictionStore.append = append_then_die
from vreason import analysis
from vreason.cli import main
main(sys.argv[2:])
"""


def rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def tokens(folder: Path) -> dict[str, list[int]]:
    return {p["sample_id"]: p["trace"]["token_ids"] for p in read_jsonl(folder / "predictions.jsonl")}


def test_sweep_nests_points_and_baselines_under_one_parent_resumes_a_killed_point_and_skips_finished_ones(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "lr_sweep"
    # 16 tokens: at lr 1 the second clip's output leaves the baseline's at token 15
    args = ["sweep", SMOKE, *common(tmp_path, 16), "--grid", "method.optimizer.lr=0,1.0", "--seeds", "0,1"]
    args += ["--output-dir", str(sweep)]

    # Killed in the fifth of six runs (baselines first, then lr=0 over both seeds, then lr=1).
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-c", KILL_MID_POINT, "lr=1/seed0", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -9, proc.stdout + proc.stderr
    killed = sweep / "lr=1" / "seed0"
    assert (
        len(read_jsonl(killed / "predictions.rank0.jsonl")) == 1 and not (sweep / "lr=1" / "seed1").exists()
    )
    killed_run = json.loads((killed / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(killed_run).info.status == "RUNNING"  # nothing cleaned up after the kill

    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("(finished earlier)") == 4  # both baselines and lr=0 over both seeds
    assert "[5/6] lr=1 seed 0: accuracy" in out and "[6/6] lr=1 seed 1: accuracy" in out
    resumed = read_jsonl(killed / "predictions.jsonl")
    assert len(resumed) == 2 and len({p["sample_id"] for p in resumed}) == 2
    assert json.loads((killed / "mlflow_run.json").read_text())["run_id"] == killed_run  # the same run

    experiment = client.get_experiment_by_name("vreason-smoke").experiment_id
    every = client.search_runs([experiment])
    [parent] = [r for r in every if r.data.tags.get("vreason.kind") == "sweep"]
    children = [r for r in every if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(every) == 7 and len(children) == 6
    assert parent.info.run_name == "lr_sweep/sweep" and parent.info.status == "FINISHED"
    assert (
        parent.data.tags["sweep.keys"] == "method.optimizer.lr" and parent.data.tags["sweep.seeds"] == "0,1"
    )
    assert all(c.info.status == "FINISHED" for c in children)
    by_point = {(c.data.tags["sweep.point"], c.data.tags["seed"]): c for c in children}
    assert sorted(by_point) == [(p, s) for p in ("baseline", "lr=0", "lr=1") for s in ("0", "1")]
    for (point, seed), child in by_point.items():
        assert child.info.run_name == f"lr_sweep/sweep/{point}/seed{seed}"
        assert child.data.tags["sweep.role"] == ("baseline" if point == "baseline" else "point")
        assert child.data.tags.get("sweep.method.optimizer.lr") == {"lr=0": "0", "lr=1": "1"}.get(point)
        assert child.data.params["seed"] == seed
    assert by_point[("lr=1", "0")].info.run_id == killed_run
    assert by_point[("baseline", "0")].data.params["method.controller.name"] == "none"
    assert by_point[("lr=1", "1")].data.params["method.optimizer.lr"] == "1.0"

    # The summary's numbers are the child runs' numbers, mean and std over the two seeds.
    summary = {r["point"]: r for r in rows(sweep / "summary.csv")}
    assert list(summary) == ["baseline", "lr=0", "lr=1"]
    for point, row in summary.items():
        scores = [by_point[(point, s)].data.metrics["score"] for s in ("0", "1")]
        lengths = [by_point[(point, s)].data.metrics["mean_output_tokens"] for s in ("0", "1")]
        assert float(row["accuracy_mean"]) == pytest.approx(sum(scores) / 2)
        assert float(row["mean_tokens_mean"]) == pytest.approx(sum(lengths) / 2)
        assert int(row["seeds"]) == 2 and int(row["failed_runs"]) == 0 and int(row["faults"]) == 0
    # lr 0 never moves ΔV: the baseline's tokens exactly, so nothing changed and ΔH is zero
    assert float(summary["lr=0"]["changed_fraction_mean"]) == 0.0
    assert float(summary["lr=0"]["abs_dH_mean_mean"]) == pytest.approx(0.0, abs=1e-6)
    changed = []
    for seed in ("0", "1"):
        base = tokens(sweep / "baseline" / f"seed{seed}")
        steered = tokens(sweep / "lr=1" / f"seed{seed}")
        changed.append(sum(base[k] != steered[k] for k in base) / len(base))
    assert sum(changed) > 0
    assert float(summary["lr=1"]["changed_fraction_mean"]) == pytest.approx(sum(changed) / 2)
    per_run = {(r["point"], r["seed"]): r for r in rows(sweep / "runs.csv")}
    assert per_run[("lr=1", "0")]["run_id"] == killed_run and per_run[("lr=1", "0")]["pairs"] == "2.0"
    markdown = (sweep / "summary.md").read_text()
    assert "| lr=1 |" in markdown and "mean ± standard deviation over seeds" in markdown
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.md", "summary.csv", "runs.csv", "sweep.json", "plots"} <= artifacts
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "plots")] == [
        "plots/method.optimizer.lr.png"
    ]

    # The notebooks' "latest runs of the experiment" are the points, not the parent (it has no predictions).
    latest = analysis.load_runs(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="vreason-smoke", latest=10
    )
    assert sorted(r.run_id for r in latest) == sorted(c.info.run_id for c in children)

    # A rerun with everything finished runs nothing and adds no run.
    monkeypatch.setattr("vreason.run.run_experiment", lambda cfg: pytest.fail(f"ran {cfg.output_dir}"))
    assert main(args) == 0
    assert capsys.readouterr().out.count("(finished earlier)") == 6
    assert len(client.search_runs([experiment])) == 7


def test_a_failing_point_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "layers"
    # Layer 99 passes validation (an int) and fails once the model is there: a point that raises.
    args = ["sweep", SMOKE, *common(tmp_path), "--grid", "method.controller.layer=99,-1", "--no-baseline"]
    args += ["--output-dir", str(sweep)]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "[1/2] layer=99 seed 0: FAILED (ConfigError: method.controller.layer 99" in out
    assert "[2/2] layer=-1 seed 0: accuracy" in out
    assert "Failed runs (rerun the same command to retry them)" in out
    manifest = json.loads((sweep / "sweep.json").read_text())
    assert manifest["points"]["layer=99/seed0"]["status"] == "failed"
    assert "controller.layer 99" in manifest["points"]["layer=99/seed0"]["error"]
    assert manifest["points"]["layer=-1/seed0"]["status"] == "finished"
    assert "Traceback" in (sweep / "layer=99" / "seed0" / "sweep_error.txt").read_text()
    summary = {r["point"]: r for r in rows(sweep / "summary.csv")}
    assert summary["layer=99"]["failed_runs"] == "1" and summary["layer=99"]["seeds"] == "0"
    assert summary["layer=-1"]["failed_runs"] == "0" and summary["layer=-1"]["seeds"] == "1"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    [parent] = client.search_runs(
        [client.get_experiment_by_name("vreason-smoke").experiment_id], "tags.`vreason.kind` = 'sweep'"
    )
    assert parent.data.metrics["points_failed"] == 1 and parent.data.metrics["points_finished"] == 1
    assert "layer=99 seed 0: ConfigError" in parent.data.tags["mlflow.note.content"]

    # The rerun retries the failed point only; other overrides on the same folder are refused.
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "layer=99 seed 0: FAILED" in out and "[2/2] layer=-1 seed 0: accuracy" in out
    assert "(finished earlier)" in out
    assert main([*args, "sampling.max_new_tokens=6"]) == 2
    err = capsys.readouterr().err
    assert "holds a run of another config (sampling.max_new_tokens: 10 -> 6)" in err


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("method.optimizer.lrr=0.1", "method.optimizer: unknown key(s) ['lrr']"),
        ("sampling.temprature=0.5", "Key 'temprature' not in 'SamplingConfig'"),
        ("method.optimizer.lr=0.1,-1", "method.optimizer.lr: must be a number >= 0, got -1"),
        ("method.schedule.step_size=0,4", "method.schedule.step_size: must be an integer >= 1, got 0"),
        ("seed=1,2", "sweep grid key 'seed': seed is set by the sweep itself"),
        ("method.optimizer.lr=0.1,0.1", "a value is given twice"),
        ("method.optimizer.lr=", "--grid method.optimizer.lr: empty value"),
    ],
)
def test_a_bad_grid_key_or_value_stops_before_anything_runs(grid, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("vreason.run.build_model", lambda **_: pytest.fail("model loaded"))
    sweep = tmp_path / "bad"
    assert main(["sweep", SMOKE, *common(tmp_path), "--grid", grid, "--output-dir", str(sweep)]) == 2
    err = capsys.readouterr().err
    assert message in err and grid.split("=")[0] in err, err
    assert not sweep.exists() and not (tmp_path / "mlflow.db").exists()


def test_the_sweep_block_of_a_config_is_the_grid_and_the_command_line_replaces_it(tmp_path):
    config = tmp_path / "swept.yaml"
    config.write_text(
        f"base: {SMOKE}\n"
        "sweep:\n"
        "  grid: {method.optimizer.lr: [1.0e-3, 0.1], sampling.temperature: [0.1, 0.5]}\n"
        "  seeds: [3]\n"
        f"  output_dir: {tmp_path}/from_yaml\n"
    )
    plan = plan_sweep(str(config))
    labels = [(p.label, p.seed, p.reference) for p, _ in plan.points]
    # A baseline per seed and per value of each key outside method: every point has a reference
    # with its own temperature.
    assert labels == [
        ("baseline,temperature=0.1", 3, None),
        ("baseline,temperature=0.5", 3, None),
        ("lr=0.001,temperature=0.1", 3, "baseline,temperature=0.1"),
        ("lr=0.001,temperature=0.5", 3, "baseline,temperature=0.5"),
        ("lr=0.1,temperature=0.1", 3, "baseline,temperature=0.1"),
        ("lr=0.1,temperature=0.5", 3, "baseline,temperature=0.5"),
    ]
    _, cfg = plan.points[3]
    assert cfg.method.optimizer.lr == 1e-3 and cfg.sampling.temperature == 0.5 and cfg.seed == 3
    assert cfg.output_dir == f"{tmp_path}/from_yaml/lr=0.001,temperature=0.5/seed3"
    assert plan.points[0][1].method == "baseline" and plan.points[0][1].sampling.temperature == 0.1

    plan = plan_sweep(str(config), grid=["method.schedule.step_size=1,4"], seeds="0,1", baseline=False)
    assert [(p.label, p.seed) for p, _ in plan.points] == [
        ("step_size=1", 0),
        ("step_size=1", 1),
        ("step_size=4", 0),
        ("step_size=4", 1),
    ]
    assert plan.output_dir == tmp_path / "from_yaml"
