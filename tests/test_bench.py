"""The overhead benchmark (bench/overhead.py) runs end to end on the tiny model: every variant gets a row
with positive, finite numbers in both the JSON and the Markdown. No timing thresholds: this is a smoke
test of the script, not of the machine."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from bench.overhead import (
    Target,
    VideoSetting,
    evaluate_targets,
    load_config,
    main,
    make_inputs,
    measure_memory,
    parse_variant,
    random_qwen2_5_vl,
    run_benchmark,
    run_variant,
)

CONFIGS = Path(__file__).resolve().parents[1] / "bench" / "configs"
TINY = CONFIGS / "tiny.yaml"
VARIANTS = ["generate", "loop_off", "full_k1", "full_k2", "full_k4", "full_k8", "lite_k4"]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    run_benchmark(TINY, [], out, "pytest", memory=False, profile=True, log=lambda line: None)
    return out, json.loads((out / "tiny.json").read_text()), (out / "tiny.md").read_text()


def positive_finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_every_variant_has_a_row_in_json_and_markdown(bench_run):
    _, report, md = bench_run
    (setting,) = report["settings"]
    assert list(setting["variants"]) == VARIANTS
    for name in VARIANTS:
        assert f"| {name} (" in md
    assert report["command"] == "pytest"
    assert report["machine"]["torch"] == torch.__version__


def test_numbers_are_positive_and_finite(bench_run):
    _, report, _ = bench_run
    (setting,) = report["settings"]
    for name, row in setting["variants"].items():
        for key in ("per_token_ms", "ratio_vs_generate", "robust_per_token_ms", "prefill_s", "setup_ms"):
            assert positive_finite(row[key]), (name, key, row[key])
        assert all(positive_finite(x) for x in row["paired_ratios"] + row["per_token_ms_runs"]), name
        assert positive_finite(row["kv_cache_mib"]), name
        assert set(row["tokens_per_s"]) == {"1", "2"}, name
        assert all(positive_finite(x) for x in row["tokens_per_s"].values()), name
        decode_steps = setting["max_new_tokens"] - 1
        if row["optimisation_steps"]:
            assert positive_finite(row["opt_step_ms"]), name
        if row["optimisation_steps"] < decode_steps:
            assert positive_finite(row["plain_step_ms"]), name
            assert positive_finite(row["loop_gap_ms"]), name


def test_each_k_optimises_its_share_of_the_decode_steps(bench_run):
    _, report, _ = bench_run
    rows = report["settings"][0]["variants"]
    decode_steps = report["settings"][0]["max_new_tokens"] - 1  # 4
    expected = {
        "generate": 0,
        "loop_off": 0,
        "full_k1": 4,
        "full_k2": 2,
        "full_k4": 1,
        "full_k8": 0,
        "lite_k4": 1,
    }
    assert {name: row["optimisation_steps"] for name, row in rows.items()} == expected
    assert all(row["faults"] == 0 for row in rows.values())
    assert decode_steps == 4


def test_controller_off_decodes_what_generate_decodes(bench_run):
    _, report, _ = bench_run
    assert report["settings"][0]["loop_off_tokens_match_generate"] is True


def test_lite_keeps_a_smaller_kv_cache(bench_run):
    _, report, _ = bench_run
    rows = report["settings"][0]["variants"]
    assert rows["lite_k4"]["kv_cache_mib"] < rows["generate"]["kv_cache_mib"]


def test_profile_splits_decode_time_into_forward_optimisation_and_loop(bench_run):
    out, report, md = bench_run
    profile = report["settings"][0]["profile"]
    assert set(profile) == {"loop_off", "full_k4"}
    assert "loop.optimize (backward + clip + AdamW)" in profile["full_k4"]["parts_ms_per_token"]
    assert profile["full_k4"]["optimize_ms_per_step"]
    assert not profile["loop_off"]["optimize_ms_per_step"]
    assert all(math.isfinite(v) and v >= 0 for v in profile["full_k4"]["parts_ms_per_token"].values())
    assert (out / "profile_tiny_full_k4.txt").is_file()
    assert "Profile of `full_k4`" in md


def test_memory_probe_runs_in_a_fresh_process():
    # Frames big enough that the prefill's buffers pass glibc's mmap threshold (64 KiB in the probe):
    # the tiny config's own frames are so small that the measured run reuses the warm-up's freed heap
    # and its growth is sometimes exactly 0 (seen: 0.0 to 0.3 MiB over repeated probes).
    bigger = (
        "videos=[{name: 8f-224px, frames: 8, height: 224, width: 224, min_pixels: 3136, max_pixels: 50176}]"
    )
    probes = measure_memory(TINY, [bigger], ["lite_k4"], "8f-224px")
    probe = probes["lite_k4"]
    assert positive_finite(probe["peak_delta_mib"])
    assert probe["decode_peak_delta_mib"] >= 0
    assert positive_finite(probe["kv_cache_mib"])


def test_random_builder_makes_the_configured_architecture():
    """The builder behind proxy.yaml and qwen2.5-vl-7b-arch.yaml, at toy size but with the real vocabulary."""
    text = dict(
        vocab_size=151936,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        mrope_section=[4, 2, 2],  # head_dim 16
    )
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64)
    model, tokenizer = random_qwen2_5_vl(text, vision, seed=0, dtype=torch.float32, device="cpu")
    assert model.config.text_config.vocab_size == 151936
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()  # untied
    cfg = load_config(TINY)
    inputs = make_inputs(cfg, tokenizer, VideoSetting(frames=4, height=56, width=56), batch=1)
    assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == 2 * 2 * 2  # t x h x w
    run = run_variant(model, parse_variant("full_k1", 0.5), inputs, 3, "video")
    assert run.optimisation_steps == 2 and run.kv_cache_bytes > 0


def test_every_config_validates_without_building():
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = load_config(path)
        assert "generate" in cfg.variants, path


@pytest.mark.skipif(torch.cuda.is_available(), reason="the failure path is for machines without CUDA")
def test_gpu_config_fails_fast_without_cuda(tmp_path):
    with pytest.raises(SystemExit, match="CUDA is not available"):
        main(["--config", str(CONFIGS / "qwen2.5-vl-7b-arch.yaml"), "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_targets_read_time_memory_and_batch_scaling():
    """Each target metric reads the right numbers, and floors (at_least) are judged as floors."""
    cfg = load_config(TINY)
    cfg.targets = [
        Target("full_k4", "per_token_ratio", 1.05),
        Target("full_k4", "peak_total_ratio", 1.05),
        Target("full_k4", "peak_memory_ratio", 1.05),
        Target("full_k4", "batch_scaling", 4.0, at_least=True),
        Target("lite_k4", "kv_cache_ratio", 1.0, strict=True),
    ]

    def row(ratio, kv, rates, total, growth):
        return {
            "ratio_vs_generate": ratio,
            "robust_ratio_vs_generate": ratio,
            "cpu_ratio_vs_generate": ratio,
            "kv_cache_mib": kv,
            "tokens_per_s": {str(b): r for b, r in rates.items()},
            "memory": {"peak_total_mib": total, "peak_delta_mib": growth},
        }

    result = {
        "variants": {
            "generate": row(1.0, 10.0, {1: 10.0, 8: 60.0}, 1000.0, 100.0),
            "full_k4": row(1.03, 10.0, {1: 9.0, 8: 45.0}, 1040.0, 140.0),
            "lite_k4": row(1.01, 6.0, {1: 9.5}, 990.0, 90.0),
        }
    }
    got = {t["metric"]: (round(t["value"], 6), t["met"]) for t in evaluate_targets(cfg, result)}
    assert got == {
        "per_token_ratio": (1.03, True),
        "peak_total_ratio": (1.04, True),
        "peak_memory_ratio": (1.4, False),
        "batch_scaling": (5.0, True),
        "kv_cache_ratio": (0.6, True),
    }
    cfg.targets = [Target("full_k4", "batch_scaling", 6.0, at_least=True)]
    (scaling,) = evaluate_targets(cfg, result)
    assert not scaling["met"] and scaling["margin"] == pytest.approx(-1.0)


def test_gpu_config_runs_end_to_end_at_toy_size_on_cpu(tmp_path):
    """The 7B config's own pipeline (bfloat16, two video settings, every target) with its sizes shrunk
    and the device moved to CPU: what a GPU session runs, short of CUDA itself."""
    shrink = [
        "model.device=cpu",
        "model.text.vocab_size=512",
        "model.text.hidden_size=64",
        "model.text.intermediate_size=128",
        "model.text.num_hidden_layers=2",
        "model.text.num_attention_heads=4",
        "model.text.num_key_value_heads=2",
        "model.text.mrope_section=[4,2,2]",
        "model.vision.depth=2",
        "model.vision.hidden_size=32",
        "model.vision.intermediate_size=64",
        "model.vision.num_heads=2",
        "model.vision.out_hidden_size=64",
        "model.vision.fullatt_block_indexes=[1]",
        "variants=[generate,loop_off,full_k4,lite_k4]",
        "max_new_tokens=5",
        "repeats=1",
        "warmup_tokens=2",
        "throughput.batch_sizes=[1,2]",
        "throughput.max_new_tokens=5",
        "threads=1",
    ]
    config = CONFIGS / "qwen2.5-vl-7b-arch.yaml"
    videos = [{**asdict(v), "frames": 4} for v in load_config(config).videos]  # the paper's frame sizes
    shrink.append("videos=" + json.dumps(videos))
    assert load_config(config, shrink).model.dtype == "bfloat16"
    report = run_benchmark(config, shrink, tmp_path, "pytest", memory=False, log=lambda line: None)
    assert [s["setting"]["name"] for s in report["settings"]] == ["16f-256x28x28", "32f-128x28x28"]
    for setting in report["settings"]:
        assert setting["loop_off_tokens_match_generate"] is True
        metrics = {(t["variant"], t["metric"]) for t in setting["targets"]}
        assert {("full_k4", "per_token_ratio"), ("full_k4", "batch_scaling")} <= metrics
    assert (tmp_path / "qwen2.5-vl-7b-arch.md").is_file()


def test_hybrid_config_runs_end_to_end_at_toy_size(tmp_path):
    """proxy_hybrid.yaml's pipeline (the random Qwen3.5 builder, Qwen3-VL's processor with timestamps, the
    real vocabulary) with its sizes shrunk: the loop with the controller off decodes what generate decodes,
    the KV cache exists on the full-attention layers only, and Lite shrinks it."""
    shrink = [
        "model.text.hidden_size=64",
        "model.text.intermediate_size=128",
        "model.text.num_hidden_layers=8",
        "model.text.num_attention_heads=4",
        "model.text.num_key_value_heads=2",
        "model.text.head_dim=16",
        "model.text.mrope_section=[1,1,0]",  # 0.25 of head_dim 16 rotate: 4 dims, 2 frequencies
        "model.text.linear_num_key_heads=2",
        "model.text.linear_num_value_heads=4",
        "model.text.linear_key_head_dim=16",
        "model.text.linear_value_head_dim=16",
        "model.vision.hidden_size=32",
        "model.vision.intermediate_size=64",
        "model.vision.out_hidden_size=64",
        "model.vision.num_position_embeddings=16",
        "videos=[{name: 4f-64px, frames: 4, height: 64, width: 64, min_pixels: 1024, max_pixels: 4096}]",
        "max_new_tokens=5",
        "repeats=1",
        "warmup_tokens=2",
    ]
    config = CONFIGS / "proxy_hybrid.yaml"
    cfg = load_config(config, shrink)
    from bench.builders import build_model

    model, tokenizer = build_model(cfg.model)
    assert model.config.text_config.layer_types.count("full_attention") == 2
    inputs = make_inputs(cfg, tokenizer, cfg.videos[0], batch=1)
    assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == 2 * 2 * 2  # t x h x w
    assert "seconds>" in tokenizer.decode(inputs["input_ids"][0])  # Qwen3-VL's timestamps
    generate = run_variant(model, parse_variant("generate", 0.5), inputs, 4, "video")
    lite = run_variant(model, parse_variant("lite_k4", 0.5), inputs, 4, "video")
    # keys and values [batch, kv heads, positions, head_dim] of the two full-attention layers, float32
    prompt = inputs["input_ids"].shape[1]
    assert generate.kv_cache_bytes == 2 * 2 * (1 * 2 * (prompt + 3) * 16) * 4
    assert lite.kv_cache_bytes == generate.kv_cache_bytes - 2 * 2 * (2 * 4 * 16) * 4  # half the video evicted
    assert lite.optimisation_steps == 1
    with_throughput = [*shrink, "throughput.batch_sizes=[1]", "variants=[generate,loop_off,full_k4,lite_k4]"]
    report = run_benchmark(config, with_throughput, tmp_path, "pytest", memory=False, log=lambda line: None)
    (setting,) = report["settings"]
    assert setting["loop_off_tokens_match_generate"] is True
