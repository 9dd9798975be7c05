"""Result tables in the shape of the paper's Table 1 (percentages, one row per run)."""

from __future__ import annotations

from vreason.data.benchmarks import BENCHMARKS

AVERAGES = [("avg", "Avg"), ("avg_wo_mra", "Avg (wo mra)")]


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def table_rows(
    runs: list[tuple[str, dict[str, float]]], only_present: bool = False
) -> tuple[list[str], list[list[str]]]:
    """Header and rows for (name, metrics) pairs. Metrics use the keys ``tracking.summary_metrics`` logs.

    The columns are Table 1's (every paper benchmark and both averages) unless ``only_present``: then
    only the benchmarks and averages some run has a number for."""
    specs = list(BENCHMARKS.values())
    benchmarks = [b.name for b in specs]
    extra = sorted(
        {
            key.split("/")[0]
            for _, metrics in runs
            for key in metrics
            if "/" in key and not key.startswith(("curve", "per_token"))
        }
        - set(benchmarks)
    )
    if only_present:
        specs = [s for s in specs if any(k.startswith(f"{s.name}/") for _, m in runs for k in m)]
    averages = [(k, label) for k, label in AVERAGES if not only_present or any(k in m for _, m in runs)]
    header = ["run"]
    for spec in specs:
        header.append(f"{spec.display_name} (Acc/MRA)" if spec.name == "vsibench" else spec.display_name)
    header += [name for name in extra] + [label for _, label in averages] + ["tokens", "failed"]
    rows = []
    for name, m in runs:
        row = [name]
        for spec in specs:
            if spec.name == "vsibench":
                acc, mra = m.get("vsibench/acc"), m.get("vsibench/mra")
                both = None if acc is None or mra is None else (acc + mra) / 2
                row.append("–" if acc is None and mra is None else f"{_pct(both)} ({_pct(acc)}/{_pct(mra)})")
            else:
                row.append(_pct(m.get(f"{spec.name}/acc")))
        row += [_pct(m.get(f"{b}/acc", m.get(f"{b}/mra"))) for b in extra]
        row += [_pct(m.get(key)) for key, _ in averages]
        tokens = m.get("mean_output_tokens")
        row += ["–" if tokens is None else f"{tokens:.0f}", f"{int(m.get('failed', 0))}"]
        rows.append(row)
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
