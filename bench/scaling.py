"""How the overhead grows with the work: whole-call and decode-step time of each variant over ``generate``'s
on a grid of video tokens x batch x generated tokens, with peak memory beside each.

Every grid point times ``generate``, ``loop_off``, ``full_k4`` and ``lite_k4`` (the config's ``variants``)
over ``repeats`` rounds in this one process. On CPU each round runs its variants in lockstep (``lockstep``,
the default): one thread per variant, one forward each in turn, each run timed over its own turns only, so
the machine's slow drifts (on a shared host, ±20% over a minute) fall on every variant alike; the ratios are
then the medians of the per-round ratios. Otherwise (CUDA, or ``lockstep=false``) the variants run one
whole call after another, the order rotated each round, and the ratios are ratios of medians. Per variant:

- whole call per generated token: the whole ``model.generate`` / ``Decoder.generate`` call (prefill included)
  over the tokens it made, ``batch * new_tokens``; median over the rounds, and its ratio to generate's;
- decode step: the mean interval between decode forwards (one step of the whole batch), median over rounds;
- peak memory: on CPU a fresh process per point and variant (``bench.memory``), on CUDA the timed runs' own.

A video-token level is a synthetic video (``videos``) whose exact token count is checked before anything is
timed. ``points`` chooses which grid points run (empty: all of them); the report lists the ones that did not.
The code pages and thread pools are warmed once, on the first point, before the first timed run.

    python -m bench.scaling --config bench/configs/scaling/proxy.yaml [--repeats N] [--out DIR] [--no-memory]
        [key=value ...]
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import measure
from bench.builders import build_model, count_video_tokens, make_inputs
from bench.config import (
    REPO,
    ModelSpec,
    QuietSpec,
    Target,
    VideoSetting,
    benchmark_parser,
    check_model,
    check_variants,
    merge_config,
    parse_command_line,
    require_device,
)
from bench.measure import Run, median
from bench.memory import cuda_memory, probe_command, probe_in_fresh_process, run_probes
from bench.report import report_head
from bench.scaling_plots import write_plots
from bench.scaling_report import SCALING_METRICS, evaluate_scaling_targets, scaling_markdown
from bench.variants import Variant, parse_variant


@dataclass
class ScalingVideo(VideoSetting):
    """One video-token level: the synthetic video that makes exactly ``video_tokens`` tokens per sample."""

    video_tokens: int = 512


@dataclass
class GridPoint:
    video_tokens: int = 512
    batch: int = 1
    new_tokens: int = 32  # tokens each sample generates

    @property
    def label(self) -> str:
        return f"v{self.video_tokens}-b{self.batch}-n{self.new_tokens}"


@dataclass
class ScalingTarget(Target):
    """``metric``: call_ratio (whole call per generated token over generate's), step_ratio (decode step over
    generate's) or batch_scaling (the variant's tokens/s over its own at batch 1, same video and new tokens);
    judged at every point that ran, or only at ``video_tokens`` / ``batch`` where given."""

    metric: str = "call_ratio"
    video_tokens: int | None = None
    batch: int | None = None


@dataclass
class ScalingMemory:
    enabled: bool = True  # CPU: one fresh process per point and variant, running the point's own call
    parallel: int = 1  # probe processes side by side (RSS is per process; only wall time changes)


@dataclass
class ScalingConfig:
    name: str = "scaling"
    model: ModelSpec = field(default_factory=ModelSpec)
    question: str = "Describe what happens in the video, step by step."
    positions: str = "video"
    variants: list[str] = field(default_factory=lambda: ["generate", "loop_off", "full_k4", "lite_k4"])
    lite_keep_ratio: float = 0.5
    videos: list[ScalingVideo] = field(default_factory=list)  # the video-token axis, one per level
    batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    new_tokens: list[int] = field(default_factory=lambda: [32, 256])
    points: list[GridPoint] = field(default_factory=list)  # empty: every point of the grid
    repeats: int = 3
    # CPU: each round's variants in lockstep, one forward each in turn (``measure.Turns``); false: one
    # whole call after another. CUDA always runs them one after another (its memory counters are global).
    lockstep: bool = True
    warmup_tokens: int = 3
    threads: int | None = None  # None: all cores
    quiet: QuietSpec = field(default_factory=QuietSpec)
    memory: ScalingMemory = field(default_factory=ScalingMemory)
    targets: list[ScalingTarget] = field(default_factory=list)


def grid(cfg: ScalingConfig) -> list[GridPoint]:
    """Every point of the grid, video tokens slowest, generated tokens fastest."""
    levels = [v.video_tokens for v in cfg.videos]
    return [GridPoint(*p) for p in itertools.product(levels, cfg.batch_sizes, cfg.new_tokens)]


def load_scaling_config(path: str | Path, overrides: list[str] | None = None) -> ScalingConfig:
    """Schema defaults <- YAML <- overrides; points must lie on the grid, targets name known metrics."""
    cfg = merge_config(ScalingConfig, path, overrides)
    check_variants(path, cfg.variants, cfg.lite_keep_ratio)
    check_model(path, cfg.model)
    levels = [v.video_tokens for v in cfg.videos]
    if not levels or len(set(levels)) != len(levels):
        raise SystemExit(f"bench: {path}: videos must give each video-token level once; got {levels}")
    if min(cfg.new_tokens, default=0) < 2:
        raise SystemExit(
            f"bench: {path}: new_tokens {cfg.new_tokens} must be >= 2 (at least one decode step)"
        )
    labels = {p.label for p in grid(cfg)}
    off_grid = [p.label for p in cfg.points if p.label not in labels]
    if off_grid:
        raise SystemExit(f"bench: {path}: points {off_grid} are not on the grid {sorted(labels)}")
    for target in cfg.targets:
        if target.metric not in SCALING_METRICS:
            raise SystemExit(
                f"bench: {path}: target metric {target.metric!r}; known: {', '.join(SCALING_METRICS)}"
            )
    return cfg


def lockstep(cfg: ScalingConfig) -> bool:
    return cfg.lockstep and not cfg.model.device.startswith("cuda")


def video_of(cfg: ScalingConfig, video_tokens: int) -> ScalingVideo:
    return next(v for v in cfg.videos if v.video_tokens == video_tokens)


def variant_row(
    variant: Variant, own: list[Run], reference: list[Run], paired: bool = False
) -> dict[str, Any]:
    """One variant at one point: medians over the rounds, the ratios to generate's and the per-round
    (paired) ratios. The ratio is the median of the paired ones where the rounds ran in lockstep (each
    round's runs shared the same minutes of the machine), else the ratio of the medians."""

    def pairs(values: list[float], reference_values: list[float]) -> list[float]:
        return [a / b for a, b in zip(values, reference_values, strict=True)]

    def ratio(values: list[float], reference_values: list[float]) -> float:
        if paired:
            return median(pairs(values, reference_values))
        return median(values) / median(reference_values)

    def call_per_token(run: Run) -> float:  # the whole call over every token it made
        return run.call_s / (run.batch * run.new_tokens)

    def step(run: Run) -> float:  # mean interval between decode forwards
        return run.per_token_s

    def cpu_call_per_token(run: Run) -> float:
        return run.call_cpu_s / (run.batch * run.new_tokens)

    call, call_ref = [call_per_token(r) for r in own], [call_per_token(r) for r in reference]
    steps, steps_ref = [step(r) for r in own], [step(r) for r in reference]
    cpu_call, cpu_call_ref = [cpu_call_per_token(r) for r in own], [cpu_call_per_token(r) for r in reference]
    cpu_steps = [r.cpu_per_token_s for r in own]
    cpu_steps_ref = [r.cpu_per_token_s for r in reference]
    return {
        "label": variant.label,
        "call_ms_per_token": median(call) * 1e3,
        "call_ratio_vs_generate": ratio(call, call_ref),
        "call_paired_ratios": pairs(call, call_ref),
        "step_ms": median(steps) * 1e3,
        "step_ratio_vs_generate": ratio(steps, steps_ref),
        "step_paired_ratios": pairs(steps, steps_ref),
        # the same in process CPU time (one intra-op thread: not charged for time the core served others)
        "call_cpu_ratio_vs_generate": ratio(cpu_call, cpu_call_ref),
        "step_cpu_ratio_vs_generate": ratio(cpu_steps, cpu_steps_ref),
        "call_s": median([r.call_s for r in own]),
        "prefill_s": median([r.prefill_s for r in own]),
        "tokens_per_s": median([r.batch * r.new_tokens / r.call_s for r in own]),
        "tokens_per_s_vs_batch_1": None,  # filled in once the point at batch 1 is known
        "optimisation_steps": own[0].optimisation_steps,
        "faults": sum(r.faults for r in own),
        "kv_cache_mib": own[0].kv_cache_bytes / 2**20,
        "other_load": measure.median_load(own),
        "memory": cuda_memory(own),  # CPU: filled in by the memory probes
    }


def bench_point(model, tokenizer, cfg: ScalingConfig, point: GridPoint, log: Callable[[str], None]) -> dict:
    """The interleaved runs of every variant at one grid point."""
    variants = [parse_variant(n, cfg.lite_keep_ratio) for n in cfg.variants]
    video = video_of(cfg, point.video_tokens)
    inputs = make_inputs(cfg, tokenizer, video, point.batch)

    def timed(variant: Variant, clock: measure.OwnClock | None = None) -> Run:
        return measure.timed_run(
            model,
            variant,
            inputs,
            point.new_tokens,
            cfg.positions,
            cfg.model.seed,
            cfg.quiet,
            point.label,
            log,
            clock,
        )

    in_lockstep = lockstep(cfg)
    runs = measure.interleaved(
        variants,
        cfg.repeats,
        timed,
        lockstep=in_lockstep,
        before_round=lambda: measure.wait_for_quiet(cfg.quiet),
    )
    result = {
        **asdict(point),
        "label": point.label,
        "video": asdict(video),
        "video_tokens_measured": count_video_tokens(model, inputs),
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "repeats": cfg.repeats,
        "lockstep": in_lockstep,
        "variants": {
            v.name: variant_row(v, runs[v.name], runs["generate"], paired=in_lockstep) for v in variants
        },
    }
    if "loop_off" in runs:
        result["loop_off_tokens_match_generate"] = (
            runs["loop_off"][0].token_ids == runs["generate"][0].token_ids
        )
    return result


def check_video_tokens(model, tokenizer, cfg: ScalingConfig) -> None:
    """Each level's video makes exactly its ``video_tokens``: checked before anything is timed."""
    for video in cfg.videos:
        got = count_video_tokens(model, make_inputs(cfg, tokenizer, video, 1))
        if got != video.video_tokens:
            raise SystemExit(
                f"bench: video {video.name!r} makes {got} video tokens, "
                f"not its video_tokens {video.video_tokens}"
            )


def fill_batch_scaling(points: list[dict[str, Any]]) -> None:
    """``tokens_per_s_vs_batch_1``: tokens/s over the same variant's at batch 1, same video and new tokens."""
    single = {(p["video_tokens"], p["new_tokens"]): p for p in points if p["batch"] == 1}
    for point in points:
        one = single.get((point["video_tokens"], point["new_tokens"]))
        for name, row in point["variants"].items():
            if one is not None and name in one["variants"]:
                row["tokens_per_s_vs_batch_1"] = row["tokens_per_s"] / one["variants"][name]["tokens_per_s"]


def add_memory_probes(
    config_path: Path,
    overrides: list[str],
    cfg: ScalingConfig,
    results: list[dict[str, Any]],
    log: Callable[[str], None],
) -> None:
    """Each point's and variant's ``memory``: its own call in a fresh process (``python -m bench.scaling
    --memory-probe VARIANT --point LABEL``), ``memory.parallel`` at a time."""
    log(f"memory probes, one fresh process per point and variant, {cfg.memory.parallel} at a time")
    commands = {
        f"{r['label']}/{v}": probe_command(
            "bench.scaling", config_path, overrides, "--memory-probe", v, "--point", r["label"]
        )
        for r in results
        for v in r["variants"]
    }
    by_label = {r["label"]: r for r in results}
    for key, probe in run_probes(commands, cfg.memory.parallel).items():
        label, name = key.split("/")
        by_label[label]["variants"][name]["memory"] = probe


def run_scaling(
    config_path: Path,
    overrides: list[str],
    out_dir: Path | None,
    command: str,
    memory: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The chosen grid points of one config; writes ``<name>.json``, ``<name>.md`` and the plots into
    ``out_dir`` (None: ``bench/results/<name>``)."""
    cfg = load_scaling_config(config_path, overrides)
    require_device(cfg.model.device)
    out_dir = out_dir or REPO / "bench" / "results" / cfg.name
    with measure.intra_op_threads(cfg.threads):
        machine, load, started = measure.begin(cfg.model.device, command, out_dir, log)
        model, tokenizer = build_model(cfg.model)
        check_video_tokens(model, tokenizer, cfg)
        points = cfg.points or grid(cfg)
        first = points[0]
        log(f"{len(points)} of {len(grid(cfg))} grid points; warming up on {first.label}")
        measure.warm_up(
            model,
            make_inputs(cfg, tokenizer, video_of(cfg, first.video_tokens), first.batch),
            cfg.warmup_tokens,
            cfg.positions,
        )
        results = [bench_point(model, tokenizer, cfg, point, log) for point in points]
    fill_batch_scaling(results)
    if memory and cfg.memory.enabled and not cfg.model.device.startswith("cuda"):
        add_memory_probes(config_path, overrides, cfg, results, log)
    ran = {p.label for p in points}
    report: dict[str, Any] = {
        **report_head(cfg, command, machine),
        "grid": {
            "video_tokens": [v.video_tokens for v in cfg.videos],
            "batch": list(cfg.batch_sizes),
            "new_tokens": list(cfg.new_tokens),
            "not_run": [p.label for p in grid(cfg) if p.label not in ran],
        },
        "points": results,
        "targets": evaluate_scaling_targets(cfg.targets, results),
        "seconds": time.perf_counter() - started,
        "foreign_load": load.summary() if load is not None else None,
    }
    report["plots"] = write_plots(report, out_dir)
    (out_dir / f"{cfg.name}.json").write_text(json.dumps(report, indent=2))
    (out_dir / f"{cfg.name}.md").write_text(scaling_markdown(report))
    log(scaling_markdown(report))
    log(f"wrote {cfg.name}.json, {cfg.name}.md and {len(report['plots'])} plots into {out_dir}")
    return report


def memory_probe(cfg: ScalingConfig, variant_name: str, label: str) -> dict[str, Any]:
    """In this fresh process: ``probe_in_fresh_process`` of one variant at one grid point, its own call."""
    point = next(p for p in grid(cfg) if p.label == label)
    return probe_in_fresh_process(
        cfg, video_of(cfg, point.video_tokens), point.batch, variant_name, point.new_tokens
    )


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(
        "bench.scaling",
        " ".join(__doc__.split("\n\n")[0].split()),
        "point",
        out_help="output folder (default: bench/results/<name>)",
    )
    args, overrides, command = parse_command_line(parser, argv)
    if args.memory_probe:
        cfg = load_scaling_config(args.config, overrides)
        print(json.dumps(memory_probe(cfg, args.memory_probe, args.point)))
        return
    run_scaling(args.config, overrides, args.out, command, memory=not args.no_memory)


if __name__ == "__main__":
    main()
