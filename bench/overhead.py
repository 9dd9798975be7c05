"""What V-Reason's decode loop costs on top of transformers' ``generate`` (ARCHITECTURE.md, "The loop").

One process, one model, one prompt, one seed. The variants run interleaved over the repeats (the
order rotates each repeat), so drift of the machine hits them all alike:

- ``generate``: ``model.generate`` greedy, the reference;
- ``loop_off``: our loop with no controller (``Method()``): the price of owning the loop;
- ``full_k<k>``: V-Reason Full, one AdamW step every k decode steps ("k" in the paper);
- ``lite_k<k>``: V-Reason Lite (keep ``lite_keep_ratio`` of the video tokens) at step size k.

Every run makes exactly ``max_new_tokens`` tokens: ``generate`` gets ``min_new_tokens`` equal to it and
our ``Decoder`` gets an empty EOS list, so no sample stops early. Forward hooks on the model split each
run into prefill (call start to the end of the first forward), setup (first token, Lite eviction,
controller attach) and decode (start of the second forward to the end of the call). Per-token time is
decode time over the ``max_new_tokens - 1`` decode forwards; choose ``max_new_tokens - 1`` divisible by
every k, so each k optimises exactly 1/k of the steps.

Besides the median wall time per token, each variant gets estimates that a shared machine disturbs
less: per-token time rebuilt from the median plain and median optimisation step of each run; that time
over the run's own plain step (the price of optimising, measured within a run); the loop gap (from the
end of a plain decode forward to the start of the next: the loop's own work, without the model); and
process CPU time (with one intra-op thread, time the core was taken away does not count). On CPU,
``quiet`` waits before each run until other processes leave the cores, and every run records how much
of the machine they used.

Memory: on CPU the peak RSS growth of a run, measured in a fresh subprocess per variant (a peak already
reached by one variant would hide the next one's) after one warm-up run, with glibc returning freed
blocks; on CUDA ``torch.cuda.max_memory_allocated`` around each run. The KV cache's size at the end of
the run is read from the cache object itself.

``--profile`` runs ``profile_variants`` once more under torch.profiler (decode only) and splits the time
into the model's forwards, the optimisation step (with the ops inside it), the controller and the loop.

Where the parts live: ``bench.config`` (the YAML schema), ``bench.variants``, ``bench.builders`` (model and
prompt), ``bench.measure`` (clock, runs, machine load), ``bench.memory`` (probes), ``bench.profiling``,
``bench.report`` (targets, Markdown); this module times one setting and is the command line.

    python -m bench.overhead --config bench/configs/proxy.yaml [--repeats N] [--out DIR] [--profile]
        [--no-memory] [key=value ...]
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.builders import (
    build_model,
    count_video_tokens,
    make_inputs,
    random_qwen2_5_vl,
    setting_name,
    settings,
)
from bench.config import (
    REPO,
    BenchConfig,
    Target,
    VideoSetting,
    benchmark_parser,
    load_config,
    parse_command_line,
    require_device,
)
from bench.measure import (
    Run,
    begin,
    interleaved,
    intra_op_threads,
    median,
    median_load,
    run_variant,
    timed_run,
    warm_up,
)
from bench.memory import cuda_memory, measure_memory, memory_probe
from bench.profiling import profile_decode
from bench.report import evaluate_targets, markdown, report_head
from bench.variants import Variant, parse_variant

__all__ = [  # what tests and other code import from here
    "Target",
    "VideoSetting",
    "bench_setting",
    "evaluate_targets",
    "load_config",
    "main",
    "make_inputs",
    "measure_memory",
    "parse_variant",
    "random_qwen2_5_vl",
    "run_benchmark",
    "run_variant",
]


MemoryProbes = Callable[[list[str], str], dict[str, dict[str, Any]]]  # (variants, setting) -> per variant


def bench_setting(
    model,
    tokenizer,
    cfg: BenchConfig,
    setting: VideoSetting | None,
    memory: MemoryProbes | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Timed runs (interleaved), throughput at each batch size, memory and the targets' inputs for one
    prompt setting."""
    variants = [parse_variant(n, cfg.lite_keep_ratio) for n in cfg.variants]
    label = setting_name(setting)
    inputs = make_inputs(cfg, tokenizer, setting, 1)
    result: dict[str, Any] = {
        "setting": label if setting is None else asdict(setting),
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "video_tokens": count_video_tokens(model, inputs) if setting is not None else 0,
        "max_new_tokens": cfg.max_new_tokens,
        "repeats": cfg.repeats,
    }
    log(f"[{label}] prompt {result['prompt_tokens']} tokens ({result['video_tokens']} video); warming up")
    warm_up(model, inputs, cfg.warmup_tokens, cfg.positions)

    def timed(variant: Variant, batch_inputs=inputs, tokens=cfg.max_new_tokens) -> Run:
        return timed_run(
            model, variant, batch_inputs, tokens, cfg.positions, cfg.model.seed, cfg.quiet, label, log
        )

    runs = interleaved(variants, cfg.repeats, timed)
    throughput: dict[int, dict[str, list[Run]]] = {1: runs}
    subset = [parse_variant(n, cfg.lite_keep_ratio) for n in (cfg.throughput.variants or cfg.variants)]
    for batch in cfg.throughput.batch_sizes:
        if batch == 1:
            continue
        batch_inputs = make_inputs(cfg, tokenizer, setting, batch)
        throughput[batch] = interleaved(
            subset,
            cfg.throughput.repeats,
            lambda v, b=batch_inputs: timed(v, b, cfg.throughput.max_new_tokens),
        )

    base = median([r.per_token_s for r in runs["generate"]])
    robust_base = median([r.robust_per_token_s for r in runs["generate"]])
    cpu_base = median([r.cpu_per_token_s for r in runs["generate"]])
    rows: dict[str, Any] = {}
    for variant in variants:
        own = runs[variant.name]
        per_token = median([r.per_token_s for r in own])
        robust = median([r.robust_per_token_s for r in own])
        cpu = median([r.cpu_per_token_s for r in own])
        opt_steps = [r.opt_step_s for r in own if r.opt_step_s is not None]
        plain_steps = [r.plain_step_s for r in own if r.plain_step_s is not None]
        plain_gaps = [r.plain_gap_s for r in own if r.plain_gap_s is not None]
        own_plain = [r.robust_per_token_s / r.plain_step_s for r in own if r.plain_step_s is not None]
        row = {
            "label": variant.label,
            "per_token_ms": per_token * 1e3,
            "per_token_ms_runs": [r.per_token_s * 1e3 for r in own],
            "ratio_vs_generate": per_token / base,
            "paired_ratios": [
                r.per_token_s / g.per_token_s for r, g in zip(own, runs["generate"], strict=True)
            ],
            "robust_per_token_ms": robust * 1e3,
            "robust_ratio_vs_generate": robust / robust_base,
            # per-token time over this run's own plain steps: the price of optimising, measured within
            # each run (both sampled under the same load), median over repeats
            "ratio_vs_own_plain_step": median(own_plain) if own_plain else None,
            "cpu_per_token_ms": cpu * 1e3,
            "cpu_ratio_vs_generate": cpu / cpu_base,
            "other_load": median_load(own),
            "prefill_s": median([r.prefill_s for r in own]),
            "setup_ms": median([r.setup_s for r in own]) * 1e3,
            "plain_step_ms": median(plain_steps) * 1e3 if plain_steps else None,
            "loop_gap_ms": median(plain_gaps) * 1e3 if plain_gaps else None,
            "opt_step_ms": median(opt_steps) * 1e3 if opt_steps else None,
            "optimisation_steps": own[0].optimisation_steps,
            "faults": sum(r.faults for r in own),
            "kv_cache_mib": own[0].kv_cache_bytes / 2**20,
            "tokens_per_s": {
                str(b): median([r.decode_tokens_per_s for r in by_variant[variant.name]])
                for b, by_variant in throughput.items()
                if variant.name in by_variant
            },
            "memory": cuda_memory(own),  # CPU: filled in by the memory probes below
        }
        rows[variant.name] = row
    if "loop_off" in runs:
        result["loop_off_tokens_match_generate"] = (
            runs["loop_off"][0].token_ids == runs["generate"][0].token_ids
        )
    result["variants"] = rows
    if memory and model.get_output_embeddings().weight.device.type != "cuda":
        log(f"[{label}] memory probes, one fresh process per variant, {cfg.memory.parallel} at a time")
        for name, probe in memory([v.name for v in variants], label).items():
            rows[name]["memory"] = probe
    return result


def run_benchmark(
    config_path: Path,
    overrides: list[str],
    out_dir: Path,
    command: str,
    memory: bool = True,
    profile: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The whole benchmark of one config; writes ``<name>.json`` and ``<name>.md`` into ``out_dir``."""
    cfg = load_config(config_path, overrides)
    require_device(cfg.model.device)
    with intra_op_threads(cfg.threads):
        return _run_benchmark(cfg, config_path, overrides, out_dir, command, memory, profile, log)


def _run_benchmark(cfg, config_path, overrides, out_dir, command, memory, profile, log) -> dict[str, Any]:
    machine, load, started = begin(cfg.model.device, command, out_dir, log)
    model, tokenizer = build_model(cfg.model)
    log(f"model built in {time.perf_counter() - started:.1f} s")
    memory_probe_fn = None
    if memory and cfg.memory.enabled:

        def memory_probe_fn(variants: list[str], label: str) -> dict[str, dict[str, float]]:
            return measure_memory(config_path, overrides, variants, label, cfg.memory.parallel)

    report: dict[str, Any] = {
        **report_head(cfg, command, machine),
        "settings": [],
    }
    for setting in settings(cfg):
        result = bench_setting(model, tokenizer, cfg, setting, memory_probe_fn, log)
        result["targets"] = evaluate_targets(cfg, result)
        if profile:
            log(f"[{setting_name(setting)}] profiling {', '.join(cfg.profile_variants)}")
            result["profile"] = profile_decode(model, cfg, make_inputs(cfg, tokenizer, setting, 1), out_dir)
        report["settings"].append(result)
    report["seconds"] = time.perf_counter() - started
    report["foreign_load"] = load.summary() if load is not None else None
    (out_dir / f"{cfg.name}.json").write_text(json.dumps(report, indent=2))
    (out_dir / f"{cfg.name}.md").write_text(markdown(report))
    log(markdown(report))
    log(
        f"wrote {out_dir / (cfg.name + '.json')} and {out_dir / (cfg.name + '.md')} in {report['seconds']:.0f} s"
    )
    return report


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(
        "bench.overhead", __doc__.split("\n")[0], "setting", out_default=REPO / "bench" / "results"
    )
    parser.add_argument(
        "--profile", action="store_true", help="torch.profiler over profile_variants' decoding"
    )
    args, overrides, command = parse_command_line(parser, argv)
    if args.memory_probe:
        cfg = load_config(args.config, overrides)
        print(json.dumps(memory_probe(cfg, args.memory_probe, args.setting)))
        return
    run_benchmark(args.config, overrides, args.out, command, memory=not args.no_memory, profile=args.profile)


if __name__ == "__main__":
    main()
