"""``vreason compare``: paired statistics between runs over the same samples, printed, written, and
logged to MLflow as a comparison run (table plus the paper's plots for all runs together)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from vreason import analysis
from vreason.tracking import experiment_id

COMPARE_EXPERIMENT = "vreason-compare"


def compare_runs(
    refs: list[str],
    tracking_uri: str,
    experiment: str | None = None,
    out: str | None = None,
    log: bool = True,
) -> str:
    """Compare runs (ids or names; the first is the baseline). Returns the Markdown report."""
    runs = [analysis.load_run(ref, tracking_uri=tracking_uri, experiment=experiment) for ref in refs]
    table = analysis.comparison_table(runs, baseline=0)
    report = analysis.markdown_table(table)
    groups = analysis.group_by_config(runs)
    if any(len(members) > 1 for members in groups.values()):
        report += "\n\nAcross seeds (mean and standard deviation per configuration):\n\n"
        report += analysis.markdown_table(analysis.seed_summary(groups))
    print(report)
    if out:
        base = Path(out).with_suffix("")
        base.parent.mkdir(parents=True, exist_ok=True)
        analysis.write_table(table, base.with_suffix(".md"))
        analysis.write_table(table, base.with_suffix(".csv"))
    if log:
        _log(runs, table, tracking_uri)
    return report


def _log(runs: list[analysis.Run], table, tracking_uri: str) -> str:
    client = MlflowClient(tracking_uri=tracking_uri)
    labels = analysis.run_labels(runs)
    run = client.create_run(
        experiment_id(client, COMPARE_EXPERIMENT),
        run_name=" vs ".join(labels),
        tags={"compared_run_ids": ",".join(r.run_id or "" for r in runs), "baseline": labels[0]},
    )
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in (".md", ".csv"):
            client.log_artifact(run_id, str(analysis.write_table(table, Path(tmp) / f"comparison{suffix}")))
    figures = {
        "plots/entropy_curves.png": analysis.plot_entropy_curves(runs),
        "plots/entropy_curves_normalized.png": analysis.plot_entropy_curves(runs, align="normalized"),
        "plots/alpha_before_peak.png": analysis.plot_alpha_histogram(
            runs, only_optimized=False, source="ema"
        ),
        "plots/output_tokens.png": analysis.plot_token_counts(runs),
    }
    for name, figure in figures.items():
        client.log_figure(run_id, figure, name)
        analysis.close(figure)
    client.set_terminated(run_id)
    return run_id
