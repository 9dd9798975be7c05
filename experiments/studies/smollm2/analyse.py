"""The SmolLM2 study's results (docs/studies/smollm2.md) from its two sweeps' prediction files: per point,
accuracy per seed and pooled over the three seeds, the pooled paired test against the baseline of the same
problems (exact McNemar, Holm over the seven comparisons, paired-bootstrap interval), how many outputs
changed and where, the entropy difference on the shared prefix, and a figure.

    python experiments/studies/smollm2/analyse.py [--outputs outputs/studies/smollm2] [--docs docs/studies]

Writes ``smollm2_results.md`` and ``smollm2_results.png`` into ``--docs`` and prints the table.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vreason.analysis import divergence_summary, mean_curve, paired_comparison, read_predictions

SEEDS = (0, 1, 2)
POINTS = {  # label -> folder under the study's outputs
    "switching, lr 0.1, k = 1": "lr_k/lr=0.1,step_size=1",
    "switching, lr 0.1, k = 4": "lr_k/lr=0.1,step_size=4",
    "switching, lr 1, k = 1": "lr_k/lr=1,step_size=1",
    "switching, lr 1, k = 4": "lr_k/lr=1,step_size=4",
    "min_entropy, lr 1, k = 4": "objectives/name=min_entropy",
    "max_entropy, lr 1, k = 4": "objectives/name=max_entropy",
    "thresholded, lr 1, k = 4": "objectives/name=thresholded",
}
BASELINE = "lr_k/baseline"
CURVES = ("baseline", "switching, lr 0.1, k = 1", "switching, lr 1, k = 4", "max_entropy, lr 1, k = 4")


def pooled(outputs: Path, folder: str) -> list[dict] | None:
    """The three seeds' predictions with seed-prefixed sample ids (None if a seed has not finished)."""
    rows = []
    for seed in SEEDS:
        path = outputs / folder / f"seed{seed}" / "predictions.jsonl"
        if not path.is_file():
            return None
        rows += [{**p, "sample_id": f"seed{seed}/{p['sample_id']}"} for p in read_predictions(path)]
    return rows


def per_seed_accuracy(rows: list[dict]) -> list[float]:
    return [
        statistics.fmean(float(p["score"] >= 0.5) for p in rows if p["sample_id"].startswith(f"seed{s}/"))
        for s in SEEDS
    ]


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order."""
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def results(outputs: Path) -> tuple[list[dict], dict[str, list[dict]]]:
    baseline = pooled(outputs, BASELINE)
    if baseline is None:
        raise SystemExit(f"no finished baseline under {outputs / BASELINE}: run the sweeps first")
    runs = {"baseline": baseline}
    rows = []
    for label, folder in POINTS.items():
        other = pooled(outputs, folder)
        if other is None:
            print(f"{label}: not finished ({outputs / folder}), left out")
            continue
        runs[label] = other
        c, d = paired_comparison(baseline, other), divergence_summary(baseline, other)
        acc = per_seed_accuracy(other)
        rows.append(
            {
                "point": label,
                "acc_mean": statistics.fmean(acc),
                "acc_std": statistics.stdev(acc),
                "n": c.n_pairs,
                "diff": c.accuracy_diff,
                "ci": c.accuracy_ci,
                "only_other": c.only_other_correct,
                "only_baseline": c.only_baseline_correct,
                "p": c.mcnemar_p,
                "changed": d.changed_fraction,
                "first_div": d.first_div_mean,
                "abs_dH": d.abs_dH_mean,
                "tokens": c.tokens_other,
            }
        )
    for row, adjusted in zip(rows, holm([r["p"] for r in rows]), strict=True):
        row["p_holm"] = adjusted
    return rows, runs


def markdown(rows: list[dict], runs: dict[str, list[dict]]) -> str:
    base = per_seed_accuracy(runs["baseline"])
    tokens = statistics.fmean(p["num_tokens"] for p in runs["baseline"])
    lines = [
        "| point | accuracy (mean ± std over seeds) | pooled diff vs baseline [95% CI] | V-Reason-only / "
        "baseline-only right | McNemar p (Holm) | changed | first div. | \\|dH\\| shared | tokens |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| baseline | {statistics.fmean(base):.3f} ± {statistics.stdev(base):.3f} | - | - | - | - | - | - "
        f"| {tokens:.1f} |",
    ]
    for r in rows:
        lines.append(
            f"| {r['point']} | {r['acc_mean']:.3f} ± {r['acc_std']:.3f} | {100 * r['diff']:+.1f} "
            f"[{100 * r['ci'][0]:+.1f}, {100 * r['ci'][1]:+.1f}] points (n = {r['n']}) | "
            f"{r['only_other']} / {r['only_baseline']} | {r['p']:.3g} ({r['p_holm']:.3g}) | "
            f"{100 * r['changed']:.0f}% | {r['first_div']:.1f} | {r['abs_dH']:.4f} | {r['tokens']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], runs: dict[str, list[dict]], path: Path) -> None:
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.2])
    base = statistics.fmean(per_seed_accuracy(runs["baseline"]))
    ys = range(len(rows))
    left.axvline(0, color="black", lw=1)
    for y, r in zip(ys, rows, strict=True):
        left.errorbar(
            100 * r["diff"],
            y,
            xerr=[[100 * (r["diff"] - r["ci"][0])], [100 * (r["ci"][1] - r["diff"])]],
            fmt="o",
            color="C3" if r["p_holm"] < 0.05 else "C0",
            capsize=3,
        )
    left.set_yticks(list(ys), [f"{r['point']}\n{100 * r['changed']:.0f}% of outputs changed" for r in rows])
    left.invert_yaxis()
    left.set_xlabel(f"accuracy − baseline's ({100 * base:.1f}%), points, 95% paired-bootstrap CI")
    left.set_title("paired, 3 seeds x 240 problems (red: Holm p < 0.05)", fontsize=10)
    for i, (label, preds) in enumerate(runs.items()):
        if label not in CURVES:
            continue
        curve = mean_curve([p["trace"]["entropy"] for p in preds if p.get("trace")], min_count=20)
        right.plot(curve.x, curve.mean, color="black" if label == "baseline" else f"C{i}", label=label)
    right.set_xlabel("generated token")
    right.set_ylabel("mean raw entropy (nats)")
    right.set_title("entropy per token (mean over the problems still generating)", fontsize=10)
    right.legend(fontsize=8)
    fig.suptitle("SmolLM2-135M-Instruct, arithmetic_short, V-Reason on the prompt's last-layer values")
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outputs", type=Path, default=Path("outputs/studies/smollm2"))
    parser.add_argument("--docs", type=Path, default=Path("docs/studies"))
    args = parser.parse_args()
    rows, runs = results(args.outputs)
    table = markdown(rows, runs)
    (args.docs / "smollm2_results.md").write_text(table, encoding="utf-8")
    figure(rows, runs, args.docs / "smollm2_results.png")
    print(table)


if __name__ == "__main__":
    main()
