"""The scaling benchmark's report: its targets judged at each grid point they name (never asserted), and the
Markdown: which points ran, the ratios at a glance, a row per point and variant, the plots."""

from __future__ import annotations

from typing import Any

from bench.config import Target
from bench.report import fmt, judge, limit_text, met_text, preamble

# target metric -> the row's value it reads
SCALING_METRICS = {
    "call_ratio": "call_ratio_vs_generate",
    "step_ratio": "step_ratio_vs_generate",
    "call_cpu_ratio": "call_cpu_ratio_vs_generate",
    "step_cpu_ratio": "step_cpu_ratio_vs_generate",
    "batch_scaling": "tokens_per_s_vs_batch_1",
}


def evaluate_scaling_targets(targets: list[Target], points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target at every point that ran and that it names (``video_tokens``, ``batch``; None: any);
    batch_scaling only where the point's batch is above 1 and the point at batch 1 ran."""
    out = []
    for target in targets:
        for point in points:
            row = point["variants"].get(target.variant)
            if row is None or getattr(target, "video_tokens", None) not in (None, point["video_tokens"]):
                continue
            if getattr(target, "batch", None) not in (None, point["batch"]):
                continue
            value = row[SCALING_METRICS[target.metric]]
            if value is None or (target.metric == "batch_scaling" and point["batch"] == 1):
                continue
            out.append({**judge(target, value), "point": point["label"]})
    return out


def _coverage(report: dict[str, Any]) -> list[str]:
    grid, videos = report["grid"], report["config"]["videos"]
    ran = {(p["video_tokens"], p["batch"], p["new_tokens"]) for p in report["points"]}
    columns = [(b, n) for b in grid["batch"] for n in grid["new_tokens"]]
    lines = [
        "## Grid",
        "",
        f"{len(report['points'])} of {len(report['points']) + len(grid['not_run'])} grid points ran "
        "(b: batch, n: tokens generated per sample; 'ran' or '–'). Each video-token level is a synthetic "
        "video of that many video tokens per sample (checked before timing).",
        "",
        "| video tokens (frames x height x width px, max pixels) | "
        + " | ".join(f"b={b} n={n}" for b, n in columns)
        + " |",
        "|---" * (1 + len(columns)) + "|",
    ]
    for video in videos:
        v = video["video_tokens"]
        lines.append(
            f"| {v} ({video['frames']} x {video['height']} x {video['width']}, {video['max_pixels']}) | "
            + " | ".join("ran" if (v, b, n) in ran else "–" for b, n in columns)
            + " |"
        )
    return lines


def _glance(points: list[dict[str, Any]], others: list[str], suffix: str, key: str) -> list[str]:
    """A row per point: each variant's ``call_<key>`` then its ``step_<key>``."""
    lines = [
        "| video tokens | batch | new tokens | "
        + " | ".join(f"{v} {part}{suffix}" for part in ("call", "step") for v in others)
        + " |",
        "|---" * (3 + 2 * len(others)) + "|",
    ]
    for p in points:
        rows = p["variants"]
        lines.append(
            f"| {p['video_tokens_measured']} | {p['batch']} | {p['new_tokens']} | "
            + " | ".join(fmt(rows[v][f"{part}_{key}"], 3) for part in ("call", "step") for v in others)
            + " |"
        )
    return lines


def ran_in_lockstep(points: list[dict[str, Any]]) -> bool:
    """Whether every point's rounds ran in lockstep (then its ratios are medians of the paired ones)."""
    return bool(points) and all(p.get("lockstep") for p in points)


def scaling_markdown(report: dict[str, Any]) -> str:
    points = report["points"]
    variants = list(points[0]["variants"]) if points else []
    others = [v for v in variants if v != "generate"]
    lines = preamble("Scaling benchmark", report) + _coverage(report)
    lockstep = ran_in_lockstep(points)
    how = (
        "Each round ran the variants in lockstep (one thread each, one forward each in turn, each timed "
        "over its own turns); the ratios are medians of the per-round ratios."
        if lockstep
        else "The variants ran one whole call after another, the order rotated each round; the ratios are "
        "ratios of medians over the repeats."
    )
    lines += [
        "",
        "## Ratios to generate at a glance",
        "",
        "call: the whole call (prefill included) per generated token over generate's; step: the mean "
        f"interval between decode forwards over generate's. All measured in one process. {how}",
        "",
        *_glance(points, others, "", "ratio_vs_generate"),
        "",
        "The same in process CPU time (one intra-op thread: not charged for time other processes held the "
        "core):",
        "",
        *_glance(points, others, " cpu", "cpu_ratio_vs_generate"),
    ]
    lines += [
        "",
        "## Every point and variant",
        "",
        "call ms/token: the whole call over the tokens it made (batch x new tokens), median over repeats; "
        f"x gen: ratio to generate's ({'median of the paired ones' if lockstep else 'of medians'}); paired: "
        "range of the per-repeat ratios. step ms: mean "
        "interval between decode forwards (one step of the whole batch). tok/s: generated tokens per second "
        "of the whole call; x b=1: over the same variant's at batch 1. Memory: the whole peak (weights "
        "included) and its growth over the call (CPU: RSS in a fresh process per point and variant; CUDA: "
        "allocated); KV: the cache at the end. load: share of the machine other processes used (median).",
        "",
        "| video tokens | batch | new tokens | variant | call ms/token | call x gen | call paired | step ms "
        "| step x gen | step paired | prefill s | tok/s | x b=1 | peak total MiB | peak growth MiB | KV MiB "
        "| opt steps | load |",
        "|---" * 18 + "|",
    ]
    for p in points:
        for name, row in p["variants"].items():
            memory = row["memory"] or {}
            call, step = row["call_paired_ratios"], row["step_paired_ratios"]
            lines.append(
                f"| {p['video_tokens_measured']} | {p['batch']} | {p['new_tokens']} | {name} | "
                f"{fmt(row['call_ms_per_token'])} | {fmt(row['call_ratio_vs_generate'], 3)} | "
                f"{min(call):.3f}–{max(call):.3f} | {fmt(row['step_ms'])} | "
                f"{fmt(row['step_ratio_vs_generate'], 3)} | {min(step):.3f}–{max(step):.3f} | "
                f"{fmt(row['prefill_s'])} | {fmt(row['tokens_per_s'])} | "
                f"{fmt(row['tokens_per_s_vs_batch_1'])} | {fmt(memory.get('peak_total_mib'), 1)} | "
                f"{fmt(memory.get('peak_delta_mib'), 1)} | {fmt(row['kv_cache_mib'])} | "
                f"{row['optimisation_steps']} | {fmt(row['other_load'])} |"
            )
    differ = [p["label"] for p in points if p.get("loop_off_tokens_match_generate") is False]
    if "loop_off" in variants:
        same = "yes" if not differ else f"no ({', '.join(differ)})"
        lines += ["", f"Controller-off tokens identical to generate's at every point: {same}."]
    if report["targets"]:
        lines += ["", "## Targets", "", "| target | point | value | limit | met |", "|---|---|---|---|---|"]
        lines += [
            f"| {t['variant']} {t['metric']} | {t['point']} | {t['value']:.3f} | {limit_text(t)} "
            f"| {met_text(t)} |"
            for t in report["targets"]
        ]
    if report.get("plots"):
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({name})" for name in report["plots"]]
    lines.append("")
    return "\n".join(lines)
