"""Analysis of V-Reason runs: the paper's entropy figures and the statistics to compare runs.

What the paper reads off a run, and where it lives here:

- mean entropy and EMA over generation (Fig. 1a/b, Fig. 2b): ``mean_curve`` (``curves``),
  ``plot_entropy_curves`` (``plots``);
- the EMA peak ("lower and delayed"), the final entropy ("lower final entropy") and micro-cycles
  (Fig. 2c): ``ema_peak``, ``final_entropy``, ``micro_cycles``, per sample in ``trace_summary``
  (``per_sample``);
- the alpha values at optimisation steps before the EMA peak (Fig. 5, Appendix E):
  ``alpha_before_peak`` (``alpha``), ``plot_alpha_histogram``;
- output tokens per run (Fig. 1d): ``token_count_distribution`` (``per_sample``), ``plot_token_counts``;
- finding a run by id or by a name only one run has (``find_run``, ``resolve_run_id``, ``lookup``)
  and a per-sample HTML trace view, text coloured by entropy (``trace_view_html``, ``trace_view``);
- where a run's outputs leave the baseline's (first differing token, share of samples changed) and the
  entropy difference along the shared prefix: ``divergence_summary``, ``divergence_by_sample``,
  ``divergence_table``, ``entropy_difference_by_step`` (``divergence``), ``plot_divergence``;
- a sweep's runs paired with the baseline of their seed, mean ± std over seeds per point, and one
  plot per swept key: ``sweep_runs_table``, ``sweep_summary``, ``plot_sweep`` (``sweeps``);
- paired comparison of two runs on the same samples, seed spread, and a result table:
  ``paired_comparison`` (``paired``), ``seed_summary`` (``seeds``), ``comparison_table``,
  ``markdown_table`` (``tables``).

Three layers, in this order: pure functions on lists/arrays (``runs``, ``curves``, ``per_sample``,
``alpha``, ``paired``, ``divergence``, ``tables``, ``seeds``); plots, which return matplotlib Figures drawn on an Agg
canvas (``plots``); MLflow loaders, which return ``Run`` objects (``loading``). Every public name is
importable from ``vreason.analysis``.

A prediction is one line of ``predictions.jsonl``: ``sample_id``, ``benchmark``, ``score`` in [0, 1],
``failed``, ``num_tokens``, ``seconds`` and ``trace`` (per generated token: ``entropy``, ``ema``,
``alpha``, ``optimized``, ``controller_norm``). Conventions used throughout:

- a failed prediction scores 0 and stays in every accuracy denominator (as ``data.scoring`` does);
  it has no trace and no token count, so curves, token and time statistics use finished ones only;
- "accuracy" of a run is its mean score, the number the paper reports (MRA for regression items);
- trace indices are 0-based; "generation step" on a plot axis is 1-based (index + 1).
"""

from vreason.analysis.alpha import AlphaCounts, AlphaSource, alpha_before_peak, alpha_from_ema
from vreason.analysis.curves import Align, MeanCurve, mean_curve
from vreason.analysis.divergence import (
    DIVERGENCE_COLUMNS,
    DivergenceSummary,
    SampleDivergence,
    divergence_by_sample,
    divergence_legend,
    divergence_summary,
    divergence_table,
    entropy_difference_by_step,
    first_divergence,
    sample_divergence,
)
from vreason.analysis.loading import PREDICTIONS_ARTIFACT, load_run, load_runs, read_predictions
from vreason.analysis.lookup import AmbiguousRunName, RunLookupError, check_store, find_run, resolve_run_id
from vreason.analysis.paired import (
    PairedComparison,
    mcnemar_exact,
    pair_predictions,
    paired_bootstrap_ci,
    paired_comparison,
    wilcoxon_signed_rank,
)
from vreason.analysis.per_sample import (
    MicroCycles,
    ema_peak,
    final_entropy,
    micro_cycles,
    token_count_distribution,
    trace_summary,
)
from vreason.analysis.plots import (
    close,
    plot_alpha_histogram,
    plot_divergence,
    plot_entropy_curves,
    plot_token_counts,
)
from vreason.analysis.runs import Predictions, Run, finished, run_labels, traces
from vreason.analysis.seeds import SEED_INDEPENDENT, group_by_config, seed_summary
from vreason.analysis.sweeps import (
    FAULT_COLUMNS,
    PAIRED_COLUMNS,
    SWEEP_SEED_COLUMNS,
    SweepEntry,
    plot_sweep,
    run_faults,
    sweep_legend,
    sweep_markdown,
    sweep_runs_table,
    sweep_summary,
)
from vreason.analysis.tables import comparison_table, markdown_table, run_summary, write_table
from vreason.analysis.trace_view import trace_view_html

__all__ = [
    "DIVERGENCE_COLUMNS",
    "PAIRED_COLUMNS",
    "PREDICTIONS_ARTIFACT",
    "AmbiguousRunName",
    "SEED_INDEPENDENT",
    "Align",
    "AlphaCounts",
    "AlphaSource",
    "DivergenceSummary",
    "FAULT_COLUMNS",
    "MeanCurve",
    "MicroCycles",
    "PairedComparison",
    "Predictions",
    "Run",
    "RunLookupError",
    "SWEEP_SEED_COLUMNS",
    "SampleDivergence",
    "SweepEntry",
    "alpha_before_peak",
    "alpha_from_ema",
    "check_store",
    "close",
    "comparison_table",
    "divergence_by_sample",
    "divergence_legend",
    "divergence_summary",
    "divergence_table",
    "ema_peak",
    "entropy_difference_by_step",
    "final_entropy",
    "find_run",
    "finished",
    "first_divergence",
    "group_by_config",
    "load_run",
    "load_runs",
    "markdown_table",
    "mcnemar_exact",
    "mean_curve",
    "micro_cycles",
    "pair_predictions",
    "paired_bootstrap_ci",
    "paired_comparison",
    "plot_alpha_histogram",
    "plot_divergence",
    "plot_entropy_curves",
    "plot_sweep",
    "plot_token_counts",
    "read_predictions",
    "resolve_run_id",
    "run_faults",
    "run_labels",
    "run_summary",
    "sample_divergence",
    "seed_summary",
    "sweep_legend",
    "sweep_markdown",
    "sweep_runs_table",
    "sweep_summary",
    "token_count_distribution",
    "trace_summary",
    "trace_view_html",
    "traces",
    "wilcoxon_signed_rank",
    "write_table",
]
