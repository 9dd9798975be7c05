"""The overhead benchmark's report: its targets judged against the measured rows (never asserted) and the
Markdown rendering of the JSON report (``<name>.md`` beside ``<name>.json``)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Any

from omegaconf import OmegaConf

from bench.config import BenchConfig, Target

DATE_FORMAT = "%Y-%m-%d %H:%M:%S %Z"


def report_head(cfg: Any, command: str, machine: dict[str, Any]) -> dict[str, Any]:
    """A report's first keys: the benchmark's name, the date, the command, the machine, the whole config
    (``cfg``: a config dataclass with a ``name``)."""
    return {
        "benchmark": cfg.name,
        "date": time.strftime(DATE_FORMAT),
        "command": command,
        "machine": machine,
        "config": OmegaConf.to_container(OmegaConf.structured(cfg)),
    }


def evaluate_targets(cfg: BenchConfig, result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = result["variants"]
    reference = rows["generate"]
    out = []
    for target in cfg.targets:
        row = rows.get(target.variant)
        if row is None:
            continue
        robust = cpu = None
        if target.metric == "per_token_ratio":
            value, robust, cpu = (
                row["ratio_vs_generate"],
                row["robust_ratio_vs_generate"],
                row["cpu_ratio_vs_generate"],
            )
        elif target.metric == "kv_cache_ratio":
            value = row["kv_cache_mib"] / reference["kv_cache_mib"]
        elif target.metric == "batch_scaling":
            rates = {int(b): v for b, v in row["tokens_per_s"].items()}
            if 1 not in rates or len(rates) < 2:
                continue
            value = rates[max(rates)] / rates[1]
        else:  # peak_memory_ratio, peak_total_ratio (names are checked by load_config)
            key = "peak_delta_mib" if target.metric == "peak_memory_ratio" else "peak_total_mib"
            if row["memory"] is None or not reference["memory"] or not reference["memory"][key]:
                continue
            value = row["memory"][key] / reference["memory"][key]
        out.append(judge(target, value, robust_value=robust, cpu_value=cpu))
    return out


def judge(target: Target, value: float, **measured: float | None) -> dict[str, Any]:
    """``target`` with ``value`` (and any other ``measured`` numbers) and whether it is met: below the
    limit, or above it for a floor (``at_least``); strictly so if ``strict``. Margin: value - limit."""
    if target.at_least:
        met = value > target.limit if target.strict else value >= target.limit
    else:
        met = value < target.limit if target.strict else value <= target.limit
    return {**asdict(target), "value": value, **measured, "met": met, "margin": value - target.limit}


def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def limit_text(judged: dict[str, Any]) -> str:
    """A judged target's limit as it reads in a table: ``<= 1.05``, ``>= 4``, ``< 1``."""
    return (">" if judged["at_least"] else "<") + ("" if judged["strict"] else "=") + f" {judged['limit']:g}"


def met_text(judged: dict[str, Any]) -> str:
    return "yes" if judged["met"] else "no, by " + format(judged["margin"], "+.3f")


def preamble(title: str, report: dict[str, Any]) -> list[str]:
    """The report's opening lines: title, command, machine and library versions, other processes' load."""
    lines = [
        f"# {title} `{report['benchmark']}` ({report['date']})",
        "",
        f"Command: `{report['command']}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in report["machine"].items()),
        "",
    ]
    load = report.get("foreign_load")
    if load:
        lines += [
            f"Other processes used {load['other_processes_core_s']:.1f} core-s "
            f"({100 * load['other_processes_share']:.1f}% of the machine) during the {load['wall_s']:.0f} s run; "
            f"hypervisor steal {load['steal_s']:.1f} s.",
            "",
        ]
    return lines


def markdown(report: dict[str, Any]) -> str:
    lines = preamble("Overhead benchmark", report)
    for result in report["settings"]:
        setting = result["setting"]
        name = setting if isinstance(setting, str) else setting["name"]
        batches = sorted({int(b) for row in result["variants"].values() for b in row["tokens_per_s"]})
        lines += [
            f"## Setting `{name}`: {result['prompt_tokens']} prompt tokens ({result['video_tokens']} video), "
            f"{result['max_new_tokens']} new tokens, {result['repeats']} repeats",
            "",
            "ms/token: decode time per token (prefill excluded), median over repeats; x gen: ratio of medians "
            "to generate's; paired: range of the per-repeat ratios. robust: per-token time rebuilt from the "
            "median plain and median optimisation step of each run (insensitive to bursts of load from other "
            "processes). cpu: process CPU time per token (with one intra-op thread, immune to other processes "
            "taking the core). x own plain: robust per-token time over the same run's median plain step (the "
            "price of optimising, measured within each run). loop gap: median time from the end of a plain "
            "decode forward to the start of the next (the loop's own work per token: sampling, bookkeeping). "
            "load: share of the machine other processes used during the runs (median).",
            "",
            "| variant | ms/token | x gen | paired | robust ms/token | robust x gen | cpu ms/token | cpu x gen "
            "| plain / opt step ms | x own plain | loop gap ms | opt steps | prefill s | setup ms | load |",
            "|---" * 15 + "|",
        ]
        for name_, row in result["variants"].items():
            paired = row["paired_ratios"]
            lines.append(
                f"| {name_} ({row['label']}) | {fmt(row['per_token_ms'])} | {fmt(row['ratio_vs_generate'], 3)} | "
                f"{min(paired):.3f}–{max(paired):.3f} | {fmt(row['robust_per_token_ms'])} | "
                f"{fmt(row['robust_ratio_vs_generate'], 3)} | {fmt(row['cpu_per_token_ms'])} | "
                f"{fmt(row['cpu_ratio_vs_generate'], 3)} | {fmt(row['plain_step_ms'])} / {fmt(row['opt_step_ms'])} | "
                f"{fmt(row['ratio_vs_own_plain_step'], 3)} | {fmt(row['loop_gap_ms'])} | "
                f"{row['optimisation_steps']} | {fmt(row['prefill_s'])} | {fmt(row['setup_ms'], 1)} | "
                f"{fmt(row['other_load'])} |"
            )
        lines += [
            "",
            "tok/s: decode tokens per second (all samples) at each batch size. Memory: the whole peak "
            "(weights included), then the peak's growth over the call / over decoding alone (CPU: RSS in a "
            "fresh process per variant; CUDA: allocated); KV: the cache's size at the end of the run.",
            "",
            "| variant | "
            + " | ".join(f"tok/s b={b}" for b in batches)
            + " | peak total MiB | peak growth MiB | decode peak growth MiB | KV MiB |",
            "|---" * (5 + len(batches)) + "|",
        ]
        for name_, row in result["variants"].items():
            memory = row["memory"] or {}
            lines.append(
                f"| {name_} | "
                + " | ".join(fmt(row["tokens_per_s"].get(str(b)), 1) for b in batches)
                + f" | {fmt(memory.get('peak_total_mib'), 1)} | {fmt(memory.get('peak_delta_mib'), 1)} | "
                f"{fmt(memory.get('decode_peak_delta_mib'), 1)} | "
                f"{fmt(row['kv_cache_mib'], 2)} |"
            )
        if "loop_off_tokens_match_generate" in result:
            lines += [
                "",
                f"Controller-off tokens identical to generate: {result['loop_off_tokens_match_generate']}.",
            ]
        if result.get("targets"):
            lines += [
                "",
                "| target | value | robust value | cpu value | limit | met (value) |",
                "|---|---|---|---|---|---|",
            ]
            for t in result["targets"]:
                lines.append(
                    f"| {t['variant']} {t['metric']} | {t['value']:.3f} | {fmt(t.get('robust_value'), 3)} | "
                    f"{fmt(t.get('cpu_value'), 3)} | "
                    f"{limit_text(t)} | {met_text(t)} |"
                )
        for variant, prof in (result.get("profile") or {}).items():
            lines += [
                "",
                f"Profile of `{variant}` (torch.profiler, decode only, {prof['decode_ms_per_token']:.2f} ms/token "
                "under the profiler):",
                "",
                "| part | ms/token | share |",
                "|---|---|---|",
            ]
            for part, ms in prof["parts_ms_per_token"].items():
                lines.append(f"| {part} | {ms:.2f} | {100 * prof['parts_share'][part]:.1f}% |")
            lines += ["", "| aten op (self time) | ms/token |", "|---|---|"]
            lines += [f"| {op} | {ms:.2f} |" for op, ms in prof["top_aten_self_ms_per_token"].items()]
            if prof["optimize_ms_per_step"]:
                total = sum(prof["optimize_ms_per_step"].values())
                lines += [
                    "",
                    "| inside one optimisation step (self time) | ms/step | share |",
                    "|---|---|---|",
                ]
                lines += [
                    f"| {op} | {ms:.2f} | {100 * ms / total:.1f}% |"
                    for op, ms in prof["optimize_ms_per_step"].items()
                ]
        lines.append("")
    return "\n".join(lines)
