"""MLflow recording through ``MlflowClient``: config as params, scores and costs as metrics, what the
method did per generated token as metric histories, every trace as a table artifact, the paper's plots
and a per-sample trace view.

What a run says about itself: its name is built from the config and the method (``smoke/baseline``,
``smoke/vreason-k4-lr3e-4``; ``run_label``), its tags name the method, model, benchmarks, seed, package
version and git commit (``run_tags``), its description is the result table, and every method logs the
same ``method.*`` keys (``method_params``: a baseline logs controller ``none``), so runs group, filter and
line up in the UI. Metric histories are stepped by generated-token index from 1, as the plots are.
Experiments are created as classic ML experiments (``mlflow.experimentKind``), so the UI opens on runs.

Lightning's ``self.log`` does not work in predict hooks and MLflow autolog only covers ``fit``, so
the run is driven explicitly. A restarted run reuses the run id stored in its output directory.

What never happens to the store (``open_store``): a new SQLite store is created and migrated under a
file lock in a temporary file beside it and moved into place with one atomic rename, so a kill at any
moment of creation leaves either no store (the next run creates it) or a complete one, and two first
runs at once create it once. A store that is already broken stops the run with one line saying what
to do. Artifacts of new experiments go beside the store (``mlartifacts/``), not into the working
directory. Final results are logged with a timestamp fixed per set of predictions, so logging them
again (a rerun after a kill in the logging phase) adds nothing: MLflow drops identical metric rows.

Modules: ``store`` (creating and opening the store), ``tracker`` (one run), ``naming`` (params, names,
tags, UI links), ``results`` (what a finished run logs); every name is importable from here.
"""

from __future__ import annotations

from vreason.tracking.naming import (
    CORE_METHOD_PARAMS,
    ML_VIEW,
    NONE,
    RUNS_VIEW,
    RUNS_VIEW_COLUMNS,
    UI_PORT,
    experiment_params,
    experiment_url,
    git_commit,
    method_label,
    method_params,
    model_label,
    package_version,
    run_label,
    run_tags,
    run_url,
    set_runs_view,
    ui_base,
    ui_command,
)
from vreason.tracking.results import (
    TokenText,
    log_results,
    mean_by_step,
    run_description,
    summary_metrics,
    token_curves,
    trace_metrics,
    write_trace_table,
)
from vreason.tracking.store import (
    ARTIFACTS,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    MAX_METRICS_PER_CALL,
    MAX_PARAMS_PER_CALL,
    RUN_FILE,
    StoreError,
    experiment_id,
    file_lock,
    flatten,
    normalized_uri,
    open_store,
    sqlite_path,
    store_problem,
)
from vreason.tracking.tracker import (
    Tracker,
)

__all__ = [
    "ARTIFACTS",
    "CORE_METHOD_PARAMS",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "MAX_METRICS_PER_CALL",
    "MAX_PARAMS_PER_CALL",
    "ML_VIEW",
    "NONE",
    "RUNS_VIEW",
    "RUNS_VIEW_COLUMNS",
    "RUN_FILE",
    "StoreError",
    "TokenText",
    "Tracker",
    "UI_PORT",
    "experiment_id",
    "experiment_params",
    "experiment_url",
    "file_lock",
    "flatten",
    "git_commit",
    "log_results",
    "mean_by_step",
    "method_label",
    "method_params",
    "model_label",
    "normalized_uri",
    "open_store",
    "package_version",
    "run_description",
    "run_label",
    "run_tags",
    "run_url",
    "set_runs_view",
    "sqlite_path",
    "store_problem",
    "summary_metrics",
    "token_curves",
    "trace_metrics",
    "ui_base",
    "ui_command",
    "write_trace_table",
]
