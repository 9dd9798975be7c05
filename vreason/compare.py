"""``vreason compare``: paired statistics between runs over the same samples, printed with the baseline
labelled and a legend of the columns, then where each run's outputs leave the baseline's (a second
table: samples changed, first differing token, entropy difference over the shared prefix;
``analysis.divergence``), written, and logged to MLflow as one comparison run (tagged, differences,
interval bounds, p-values and divergence as metrics, the tables and the paper's plots for all runs
together as artifacts). Comparing the same runs again updates that comparison run instead of adding
another. Runs are given by id or by a name only one run has (``analysis.find_run``)."""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from vreason import analysis
from vreason.tracking import experiment_id, normalized_uri, run_url, set_runs_view, ui_command

COMPARE_EXPERIMENT = "vreason-compare"
CONFIDENCE = 0.95
N_BOOT = 2000
STATISTICS = ("diff", "ci_low", "ci_high", "mcnemar_p", "token_diff", "wilcoxon_p")
DIVERGENCE = analysis.DIVERGENCE_COLUMNS  # logged as metrics too


def legend(confidence: float = CONFIDENCE, n_boot: int = N_BOOT) -> str:
    """What the table's columns mean."""
    level = f"{100 * confidence:g}%"
    return (
        "Columns: accuracy = mean score (failed samples count 0); pairs = samples both runs answered; "
        "diff = paired mean score difference, run − baseline (positive: more accurate than the baseline); "
        f"ci_low/ci_high = {level} paired-bootstrap interval of diff ({n_boot} resamples); "
        "mcnemar_p = exact McNemar test on correctness; token_diff = mean paired difference in output "
        "tokens (negative: shorter); wilcoxon_p = Wilcoxon signed-rank test of the token differences. "
        f"Confidence level {level}."
    )


def labelled_table(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with a ``role`` column after ``run``: "baseline" for the first row, "vs baseline" after."""
    table = table.copy()
    table.insert(1, "role", ["baseline"] + ["vs baseline"] * (len(table) - 1))
    return table


def compare_runs(
    refs: list[str],
    tracking_uri: str,
    experiment: str | None = None,
    out: str | None = None,
    log: bool = True,
    confidence: float = CONFIDENCE,
    n_boot: int = N_BOOT,
) -> str:
    """Compare runs (ids or names; the first is the baseline). Prints and returns the Markdown report."""
    if len(refs) < 2:
        raise analysis.RunLookupError(f"compare needs a baseline and at least one other run, got {refs}")
    ids = [analysis.resolve_run_id(ref, tracking_uri=tracking_uri, experiment=experiment) for ref in refs]
    runs = [analysis.load_run(run_id, tracking_uri=tracking_uri) for run_id in ids]
    table = labelled_table(analysis.comparison_table(runs, baseline=0, n_boot=n_boot, confidence=confidence))
    labels = analysis.run_labels(runs)
    report = f"Baseline: {labels[0]} (run {runs[0].run_id}). Every difference is run − baseline.\n\n"
    report += analysis.markdown_table(table)
    report += "\n" + legend(confidence, n_boot) + "\n"
    divergence = analysis.divergence_table(runs, baseline=0)
    report += f"\nDivergence from the baseline ({labels[0]}):\n\n" + analysis.markdown_table(divergence)
    report += "\n" + analysis.divergence_legend() + "\n"
    groups = analysis.group_by_config(runs)
    if any(len(members) > 1 for members in groups.values()):
        report += "\nAcross seeds (mean and standard deviation per configuration):\n\n"
        report += analysis.markdown_table(analysis.seed_summary(groups))
    print(report)
    if out:
        base = Path(out).with_suffix("")
        base.parent.mkdir(parents=True, exist_ok=True)
        written = [
            base.with_name(base.name + tail) for tail in (".md", ".csv", "_divergence.md", "_divergence.csv")
        ]
        for path in written:
            analysis.write_table(divergence if "_divergence" in path.name else table, path)
        print("wrote " + ", ".join(map(str, written)))
    if log:
        run_id, experiment_key, name, updated = _log(
            runs, table, divergence, tracking_uri, report, confidence, n_boot
        )
        print(
            f"{'updated' if updated else 'logged'} this comparison as MLflow run {name!r} (id {run_id}) in "
            f"experiment {COMPARE_EXPERIMENT!r}: its metrics are the differences, interval bounds, "
            f"p-values and divergence; tables and plots are its artifacts.\n  see it: {run_url(experiment_key, run_id)}"
            f"  (UI: {ui_command(tracking_uri)})"
        )
    return report


def metric_key(label: str, statistic: str, several: bool) -> str:
    """``diff`` when one run is compared with the baseline; ``<run label>/diff`` when several are."""
    if not several:
        return statistic
    return re.sub(r"[^\w\-. /:]", "_", label) + "/" + statistic


def _log(
    runs,
    table: pd.DataFrame,
    divergence: pd.DataFrame,
    tracking_uri: str,
    report: str,
    confidence: float,
    n_boot: int,
):
    """Record the comparison; returns (run id, experiment id, run name, whether it already existed)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    labels = analysis.run_labels(runs)
    compared = ",".join(r.run_id or "" for r in runs)
    experiment = experiment_id(client, COMPARE_EXPERIMENT, _artifacts(tracking_uri))
    columns = [f"metrics.`{s}`" for s in (*STATISTICS, "changed_fraction", "first_div_mean")]
    set_runs_view(client, experiment, [*columns, "tags.`baseline`"])
    name = "compare: " + " vs ".join(labels)
    tags = {
        "vreason.kind": "comparison",
        "method": "comparison",
        "compared_run_ids": compared,
        "baseline": labels[0],
        "baseline_run_id": runs[0].run_id or "",
        "mlflow.note.content": report,
    }
    found = client.search_runs(
        [experiment], filter_string=f"tags.compared_run_ids = '{compared}'", max_results=1
    )
    updated = bool(found)
    if found:  # the same comparison again: update it, do not add a twin
        run_id, stamp = found[0].info.run_id, found[0].info.start_time
        client.update_run(run_id, status="RUNNING", name=name)
    else:
        run = client.create_run(experiment, run_name=name)
        run_id, stamp = run.info.run_id, run.info.start_time
    several = len(runs) > 2
    metrics = [
        Metric(metric_key(row["run"], statistic, several), float(row[statistic]), stamp, 0)
        for _, row in table.iloc[1:].iterrows()
        for statistic in STATISTICS
        if row[statistic] is not None and math.isfinite(float(row[statistic]))
    ]
    metrics += [
        Metric(metric_key(row["run"], column, several), float(row[column]), stamp, 0)
        for _, row in divergence.iterrows()
        for column in DIVERGENCE
        if row[column] is not None and math.isfinite(float(row[column]))
    ]
    params = [
        Param("confidence", str(confidence)),
        Param("n_boot", str(n_boot)),
        Param("baseline", labels[0]),
    ]
    logged = client.get_run(run_id).data.params
    client.log_batch(
        run_id,
        metrics=metrics,
        params=[p for p in params if p.key not in logged],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    per_sample = pd.concat(
        [
            analysis.divergence_by_sample(runs[0], run).assign(run=label)
            for run, label in zip(runs[1:], labels[1:], strict=True)
        ]
    )
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in (".md", ".csv"):
            client.log_artifact(run_id, str(analysis.write_table(table, Path(tmp) / f"comparison{suffix}")))
            client.log_artifact(
                run_id, str(analysis.write_table(divergence, Path(tmp) / f"divergence{suffix}"))
            )
        client.log_artifact(
            run_id, str(analysis.write_table(per_sample, Path(tmp) / "divergence_by_sample.csv"))
        )
    figures = {
        "plots/entropy_curves.png": analysis.plot_entropy_curves(runs),
        "plots/entropy_curves_normalized.png": analysis.plot_entropy_curves(runs, align="normalized"),
        "plots/alpha_before_peak.png": analysis.plot_alpha_histogram(
            runs, only_optimized=False, source="ema"
        ),
        "plots/output_tokens.png": analysis.plot_token_counts(runs),
        "plots/divergence.png": analysis.plot_divergence(runs[0], runs[1:]),
    }
    for figure_name, figure in figures.items():
        client.log_figure(run_id, figure, figure_name)
        analysis.close(figure)
    client.set_terminated(run_id)
    return run_id, experiment, name, updated


def _artifacts(tracking_uri: str) -> str | None:
    """Artifacts beside a SQLite store, as ``vreason run`` keeps them."""
    from vreason.tracking import ARTIFACTS, sqlite_path

    path = sqlite_path(normalized_uri(tracking_uri))
    return str(path.parent / ARTIFACTS / COMPARE_EXPERIMENT) if path else None
