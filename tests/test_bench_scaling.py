"""The scaling benchmark (bench/scaling.py) at toy size: two grid points of the tiny model, a few tokens. The
report holds every requested point with positive, finite ratios, says which points did not run, and the
plots are written. No timing thresholds: targets are judged in the report, never asserted here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.memory import probe_command, run_probes
from bench.scaling import (
    GridPoint,
    ScalingTarget,
    fill_batch_scaling,
    grid,
    load_scaling_config,
    run_scaling,
)
from bench.scaling_report import evaluate_scaling_targets

CONFIGS = Path(__file__).resolve().parents[1] / "bench" / "configs" / "scaling"
TINY = CONFIGS / "tiny.yaml"
VARIANTS = ["generate", "loop_off", "full_k4", "lite_k4"]
ROW_KEYS = {
    "label",
    "call_ms_per_token",
    "call_ratio_vs_generate",
    "call_paired_ratios",
    "step_ms",
    "step_ratio_vs_generate",
    "step_paired_ratios",
    "call_cpu_ratio_vs_generate",
    "step_cpu_ratio_vs_generate",
    "call_s",
    "prefill_s",
    "tokens_per_s",
    "tokens_per_s_vs_batch_1",
    "optimisation_steps",
    "faults",
    "kv_cache_mib",
    "other_load",
    "memory",
}


@pytest.fixture(scope="module")
def scaling_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling")
    report = run_scaling(TINY, [], out, "pytest", memory=False, log=lambda line: None)
    return out, report


def positive_finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_report_has_the_schema_in_json_and_markdown(scaling_run):
    out, report = scaling_run
    assert json.loads((out / "tiny-scaling.json").read_text()) == json.loads(json.dumps(report))
    assert set(report) == {
        "benchmark",
        "date",
        "command",
        "machine",
        "config",
        "grid",
        "points",
        "targets",
        "seconds",
        "foreign_load",
        "plots",
    }
    assert {"torch", "transformers", "python", "cores", "torch_threads"} <= set(report["machine"])
    for point in report["points"]:
        assert list(point["variants"]) == VARIANTS
        for row in point["variants"].values():
            assert set(row) == ROW_KEYS
    md = (out / "tiny-scaling.md").read_text()
    assert "## Grid" in md and "## Every point and variant" in md and "## Targets" in md
    assert md.count("| 16 | 2 | 5 | ") == len(VARIANTS) + 2  # a row per variant, two at a glance (wall, CPU)


def test_every_requested_point_is_present_and_the_rest_are_listed_as_not_run(scaling_run):
    _, report = scaling_run
    requested = [p.label for p in load_scaling_config(TINY).points]
    assert [p["label"] for p in report["points"]] == requested == ["v8-b1-n5", "v16-b2-n5"]
    everything = [p.label for p in grid(load_scaling_config(TINY))]
    assert len(everything) == 8
    assert report["grid"]["not_run"] == [label for label in everything if label not in requested]
    for point in report["points"]:
        assert point["video_tokens_measured"] == point["video_tokens"]


def test_ratios_are_positive_and_finite_and_generate_is_the_unit(scaling_run):
    _, report = scaling_run
    for point in report["points"]:
        for name, row in point["variants"].items():
            for key in (
                "call_ms_per_token",
                "call_ratio_vs_generate",
                "step_ms",
                "step_ratio_vs_generate",
                "call_cpu_ratio_vs_generate",
                "step_cpu_ratio_vs_generate",
            ):
                assert positive_finite(row[key]), (point["label"], name, key)
            assert all(positive_finite(x) for x in row["call_paired_ratios"] + row["step_paired_ratios"])
            assert positive_finite(row["tokens_per_s"]) and positive_finite(row["kv_cache_mib"])
            assert row["faults"] == 0
        generate = point["variants"]["generate"]
        assert generate["call_ratio_vs_generate"] == generate["step_ratio_vs_generate"] == 1.0
        # 4 decode steps: k=4 optimises once, with or without Lite
        assert {n: r["optimisation_steps"] for n, r in point["variants"].items()} == {
            "generate": 0,
            "loop_off": 0,
            "full_k4": 1,
            "lite_k4": 1,
        }
        assert point["loop_off_tokens_match_generate"] is True


def test_plots_are_written(scaling_run):
    out, report = scaling_run
    assert report["plots"] == ["ratio_vs_video_tokens.png", "ratio_vs_batch.png"]
    for name in report["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{name}]({name})" in (out / "tiny-scaling.md").read_text()


def test_targets_are_judged_at_the_points_they_name():
    def point(video_tokens, batch, loop_off_call, tokens_per_s):
        rows = {
            "generate": {"call_ratio_vs_generate": 1.0, "tokens_per_s": 10.0},
            "loop_off": {"call_ratio_vs_generate": loop_off_call, "tokens_per_s": tokens_per_s},
        }
        for row in rows.values():
            row["tokens_per_s_vs_batch_1"] = None
        label = GridPoint(video_tokens, batch, 32).label
        return dict(label=label, video_tokens=video_tokens, batch=batch, new_tokens=32, variants=rows)

    points = [point(512, 1, 1.02, 10.0), point(2048, 1, 1.04, 5.0), point(2048, 8, 1.01, 30.0)]
    fill_batch_scaling(points)
    assert points[2]["variants"]["loop_off"]["tokens_per_s_vs_batch_1"] == pytest.approx(6.0)
    assert points[1]["variants"]["loop_off"]["tokens_per_s_vs_batch_1"] == pytest.approx(1.0)
    targets = [
        ScalingTarget("loop_off", "call_ratio", 1.03, video_tokens=2048),
        ScalingTarget("loop_off", "call_ratio", 1.05),
        ScalingTarget("loop_off", "batch_scaling", 4.0, at_least=True),
    ]
    got = [(t["metric"], t["point"], t["met"]) for t in evaluate_scaling_targets(targets, points)]
    assert got == [
        ("call_ratio", "v2048-b1-n32", False),
        ("call_ratio", "v2048-b8-n32", True),
        ("call_ratio", "v512-b1-n32", True),
        ("call_ratio", "v2048-b1-n32", True),
        ("call_ratio", "v2048-b8-n32", True),
        ("batch_scaling", "v2048-b8-n32", True),
    ]


def test_every_scaling_config_validates_and_its_points_lie_on_the_grid():
    paths = sorted(CONFIGS.glob("*.yaml"))
    assert [p.name for p in paths] == ["proxy.yaml", "tiny.yaml"]
    for path in paths:
        cfg = load_scaling_config(path)
        labels = {p.label for p in grid(cfg)}
        assert cfg.points and {p.label for p in cfg.points} <= labels, path
    proxy = load_scaling_config(CONFIGS / "proxy.yaml")
    assert [v.video_tokens for v in proxy.videos] == [512, 1024, 2048, 4096]
    assert proxy.batch_sizes == [1, 2, 4, 8] and proxy.new_tokens == [32, 256]
    with pytest.raises(SystemExit, match="not on the grid"):
        load_scaling_config(TINY, ["points=[{video_tokens: 8, batch: 3, new_tokens: 5}]"])


def test_a_video_that_misses_its_token_count_fails_before_timing(tmp_path):
    wrong = "videos=[{name: 4f-56px, video_tokens: 9, frames: 4, height: 56, width: 56, max_pixels: 3136}]"
    with pytest.raises(SystemExit, match="makes 8 video tokens, not its video_tokens 9"):
        run_scaling(TINY, [wrong, "points=[]"], tmp_path, "pytest", memory=False, log=lambda line: None)


def test_scaling_memory_probe_runs_the_points_call_in_a_fresh_process():
    command = probe_command("bench.scaling", TINY, [], "--memory-probe", "lite_k4", "--point", "v16-b2-n5")
    probe = run_probes({"v16-b2-n5/lite_k4": command})["v16-b2-n5/lite_k4"]
    assert probe["new_tokens"] == 5
    assert positive_finite(probe["peak_total_mib"]) and positive_finite(probe["kv_cache_mib"])
    assert probe["peak_delta_mib"] >= 0


def test_phase_timings_run_on_the_tiny_model(capsys):
    """``python -m bench.phases``: every phase is timed (positive, finite) for each video setting."""
    import json
    import math
    from pathlib import Path

    from bench.phases import main

    main(["--config", str(Path(__file__).resolve().parents[1] / "bench/configs/tiny.yaml"), "--repeats", "2"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    phases, machine = rows[:-1], rows[-1]
    assert phases and "transformers" in machine["machine"]
    for row in phases:
        assert row["video_tokens"] > 0
        timed = [k for k in row if k.endswith("_ms")]
        assert len(timed) == 8 and all(math.isfinite(row[k]) and row[k] > 0 for k in timed)
